"""Label columns into tasks: CheXpert-style 1/0/−1/blank tables under each published policy,
checked row by row against a mapping written out from the raw CSV text; ordinary tables as
before; near-duplicate labels and duplicate ids refused with one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fmprobe.errors import UsageError
from fmprobe.store import import_features, open_store
from fmprobe.sweep.tasks import CHEXPERT_BLANK, CHEXPERT_UNCERTAIN, encode_task, load_tasks

N = 12
IDS = [f"p{i:02d}" for i in range(N)]
# the cells as CheXpert's train.csv writes them: 1.0, 0.0, -1.0 and empty (not mentioned)
EDEMA = ["1.0", "0.0", "-1.0", "", "1.0", "-1.0", "0.0", "", "0.0", "1.0", "-1.0", "0.0"]
EFFUSION = ["0.0", "", "1.0", "1.0", "", "0.0", "-1.0", "1.0", "0.0", "", "0.0", "1.0"]
SEX = ["F", "M", "", "F", "M", "F", "M", "F", "", "M", "F", "M"]
GRADE = ["0", "1", "2", "", "2", "1", "0", "0", "1", "2", "", "1"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tasks")
    np.save(root / "f.npy", np.random.default_rng(0).normal(size=(N, 4)).astype(np.float32))
    pd.DataFrame({"id": IDS}).to_csv(root / "ids.csv", index=False)
    import_features(root / "s.zarr", name="m/last/cls", features=root / "f.npy",
                    labels=root / "ids.csv")  # fmt: skip
    lines = ["id,Edema,Pleural Effusion,Sex,grade"]
    lines += [",".join(row) for row in zip(IDS, EDEMA, EFFUSION, SEX, GRADE, strict=True)]
    (root / "chexpert.csv").write_text("\n".join(lines) + "\n")
    return root / "s.zarr", root / "chexpert.csv"


def expected(cells: list[str], uncertain: str, blank: str) -> list[str | None]:
    """The published policy, cell by cell: None where the row is masked out."""
    out: list[str | None] = []
    for cell in cells:
        if cell == "":
            out.append("0" if blank == "negative" else None)
        elif cell == "-1.0":
            out.append({"ignore": None, "ones": "1", "zeros": "0", "class": "-1"}[uncertain])
        else:
            out.append(str(int(float(cell))))
    return out


def labels_of(task) -> list[str | None]:  # type: ignore[no-untyped-def]
    return [task.classes[c] if c >= 0 else None for c in task.codes]


@pytest.mark.parametrize("blank", ["missing", "negative"])
@pytest.mark.parametrize("uncertain", ["ignore", "ones", "zeros", "class"])
def test_chexpert_policies_row_by_row(store: tuple[Path, Path], uncertain: str, blank: str) -> None:
    fs = open_store(store[0])
    tasks, table = load_tasks(fs, ["Edema", "Pleural Effusion"], labels=str(store[1]),
                              uncertain=uncertain, blank=blank)  # fmt: skip
    assert table["id"].tolist() == IDS
    for task, cells in zip(tasks, (EDEMA, EFFUSION), strict=True):
        assert labels_of(task) == expected(cells, uncertain, blank), (task.name, uncertain, blank)
        assert task.classes == (("-1", "0", "1") if uncertain == "class" else ("0", "1"))
        assert task.n_uncertain == cells.count("-1.0") and task.n_blank == cells.count("")
        assert (task.uncertain, task.blank) == (uncertain, blank)


def test_the_documented_chexpert_settings_are_u_ignore_and_blank_negative(
    store: tuple[Path, Path],
) -> None:
    assert (CHEXPERT_UNCERTAIN, CHEXPERT_BLANK) == ("ignore", "negative")
    fs = open_store(store[0])
    (edema,), _ = load_tasks(fs, ["Edema"], labels=str(store[1]),
                             uncertain=CHEXPERT_UNCERTAIN, blank=CHEXPERT_BLANK)  # fmt: skip
    # 3 uncertain rows masked; the 2 blanks count as negatives
    assert (edema.codes >= 0).sum() == N - 3
    assert labels_of(edema).count("0") == EDEMA.count("0.0") + EDEMA.count("")


def test_without_a_policy_a_chexpert_column_is_refused_in_one_line(
    store: tuple[Path, Path],
) -> None:
    fs = open_store(store[0])
    with pytest.raises(UsageError) as err:
        load_tasks(fs, ["Edema"], labels=str(store[1]))
    message = str(err.value)
    assert "\n" not in message
    assert "'Edema' holds 1, 0 and -1 (3 rows of -1" in message
    assert "--uncertain ignore|ones|zeros" in message and "--uncertain class" in message


def test_ordinary_tables_are_unchanged_by_the_defaults_and_the_policies(
    store: tuple[Path, Path],
) -> None:
    """Strings and a 0/1/2 grade keep blanks missing whatever the policies say; by default a
    ±1 binary column (no 0) is two classes, as before."""
    fs = open_store(store[0])
    for kwargs in ({}, {"uncertain": "ignore", "blank": "negative"}):
        (sex, grade), _ = load_tasks(fs, ["Sex", "grade"], labels=str(store[1]), **kwargs)
        assert labels_of(sex) == [c or None for c in SEX]
        assert labels_of(grade) == [c or None for c in GRADE]
    signs = pd.Series([1, -1, -1, 1, np.nan])
    task = encode_task("signs", signs)
    assert task.classes == ("-1", "1") and task.codes.tolist() == [1, 0, 0, 1, -1]
    # a policy asked for applies to every column of 1/0/-1 values, this one included
    task = encode_task("signs", signs, uncertain="zeros")
    assert task.classes == ("0", "1") and task.codes.tolist() == [1, 0, 0, 1, -1]


def test_labels_that_differ_only_in_case_or_spaces_are_refused() -> None:
    values = pd.Series(["Yes", "Yes ", "no", "No", "yes", "maybe", " No"])
    with pytest.raises(UsageError) as err:
        encode_task("finding", values)
    message = str(err.value)
    assert "\n" not in message
    assert "'Yes' / 'Yes ' / 'yes'" in message and "' No' / 'No' / 'no'" in message
    assert "maybe" not in message
    fine = encode_task("finding", pd.Series(["Yes", "No", "yes-ish"]))
    assert fine.classes == ("No", "Yes", "yes-ish")


def test_duplicate_ids_in_labels_are_refused(store: tuple[Path, Path], tmp_path: Path) -> None:
    rows = pd.DataFrame({"id": [IDS[0], IDS[1], IDS[0], IDS[2], IDS[2]], "y": [1, 0, 1, 0, 0]})
    rows.to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(UsageError) as err:
        load_tasks(open_store(store[0]), ["y"], labels=str(tmp_path / "dup.csv"))
    message = str(err.value)
    assert "\n" not in message
    assert "2 ids occur on more than one row (e.g. 'p00', 'p02')" in message


def test_unknown_policies_suggest_the_valid_ones() -> None:
    with pytest.raises(UsageError, match=r"--uncertain 'one'.*did you mean 'ones'"):
        encode_task("x", pd.Series([0, 1]), uncertain="one")
    with pytest.raises(UsageError, match=r"--blank 'negatives'.*did you mean 'negative'"):
        encode_task("x", pd.Series([0, 1]), blank="negatives")

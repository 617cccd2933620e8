"""The HTML report, built from a real sweep (five probes, two samplers) and forecast on a tiny
store: one self-contained file whose figures, tables and comparisons follow from the results
(checked against fmprobe.stats and the tables themselves), rendered by headless Chromium at a
laptop and a phone width without horizontal overflow and with every figure drawn."""

from __future__ import annotations

import base64
import errno
import json
import os
import re
import select
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from fmprobe.cli import main
from fmprobe.errors import FmprobeError, UsageError
from fmprobe.forecast import forecast
from fmprobe.report import report
from fmprobe.stats import compare, subgroup_metrics
from fmprobe.store import import_features
from fmprobe.sweep import sweep

FEATURES = ("vit/block3/cls", "vit/block11/cls", "vit/block11/mean")
PROBES = ("logreg", "ridge", "knn1", "knn5", "knn20")
WIDTHS = (1280, 390)  # a laptop, a phone


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("report")
    N = 300
    X = rng.normal(size=(N, 12)).astype(np.float32)
    finding = (X[:, 0] + X[:, 1] + rng.normal(size=N) > 0.8).astype(int)
    table = pd.DataFrame({"id": [f"c{i}" for i in range(N)], "finding": finding,
                          "sex": rng.choice(["F", "M"], N)})  # fmt: skip
    table.to_csv(root / "t.csv", index=False)
    store = root / "s.zarr"
    for name, noise in zip(FEATURES, (2.0, 0.5, 1.0), strict=True):
        np.save(root / "f.npy", (X + noise * rng.normal(size=X.shape)).astype(np.float32))
        import_features(store, name=name, features=root / "f.npy", labels=root / "t.csv")
    results = root / "results.parquet"
    sweep(store=str(store), out=str(results), tasks="finding", n="10,20,40,all", seeds=2,
          probe="logreg,ridge,knn", knn_k="1,5,20", sampler="random,fps", C=0.5,
          save_predictions=True, progress=False)  # fmt: skip
    fc = root / "forecast.parquet"
    forecast(curves=str(results), max_labels=40, target=0.8, out=fc)
    out = root / "report"
    r = report(results=results, out=out, forecast=fc, store=store, group_by="sex", replicates=50)
    page = Path(r.index).read_text()
    return {"store": store, "results": results, "forecast": fc, "out": out, "result": r,
            "page": page, "tables": read_tables(page)}  # fmt: skip


class Tables(HTMLParser):
    """The page's tables (header, rows of cell text), each under the h2 it follows."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict[str, Any]] = []
        self.section, self._text, self._cell, self._row = "", "", False, None
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "h2":
            self._in_h2, self._text = True, ""
        elif tag == "table":
            self.tables.append({"section": self.section, "header": [], "rows": []})
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell, self._text = True, ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_h2, self.section = False, self._text.strip()
        elif tag in ("td", "th") and self._row is not None:
            self._row.append(self._text.strip())
            self._cell = False
        elif tag == "tr" and self._row is not None:
            table = self.tables[-1]
            (table["rows"] if table["header"] else table["header"]).extend(
                [self._row] if table["header"] else self._row
            )
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell or self._in_h2:
            self._text += data


def read_tables(page: str) -> list[dict[str, Any]]:
    parser = Tables()
    parser.feed(page)
    return parser.tables


def tables_in(built: dict[str, Any], section: str) -> list[pd.DataFrame]:
    return [pd.DataFrame(t["rows"], columns=t["header"]) for t in built["tables"]
            if t["section"] == section]  # fmt: skip


def test_one_self_contained_file(built: dict[str, Any]) -> None:
    out, page, r = built["out"], built["page"], built["result"]
    assert sorted(p.name for p in out.iterdir()) == ["index.html"]  # no figure files, no temp
    assert "<img" not in page and "<link" not in page and "<script" not in page
    assert not re.findall(r'\s(?:src|href)="(?!#)', page)  # nothing outside the page
    assert "url(" not in page.split("</style>")[0]
    figures = re.findall(r"<figure[^>]*>(.*?)</figure>", page, flags=re.S)
    assert len(figures) == len(r.figures) and all("<svg" in f for f in figures)
    res = pd.read_parquet(built["results"])
    fc = pd.read_parquet(built["forecast"])
    expected = {f"curve-finding-{p}" for p in res["probe"]}
    expected |= {f"samplers-finding-{p}" for p in res["probe"]}
    expected |= {f"forecast-{t} · {p} · {s}" for t, p, s in
                 fc[["task", "probe", "sampler"]].drop_duplicates().itertuples(index=False)}  # fmt: skip
    expected |= {"layers", "pools", "subgroups-sex", "compare"}
    assert set(r.figures) == expected and len(r.figures) == len(expected)
    assert r.sections == ("Learning curves", "Forecasts", "Labels needed", "Layers and pooling",
                          "Samplers: selected vs random", "Subgroups", "Compare", "Provenance")  # fmt: skip
    fingerprint = res["store_fingerprint"].iloc[0]
    assert fingerprint in page and "fmprobe version" in page


def test_one_panel_per_probe_in_a_wrapping_grid(built: dict[str, Any]) -> None:
    page = built["page"]
    curves = re.findall(r'<div class="panels">(.*?)</div>', page, flags=re.S)[0]
    titles = re.findall(r'id="fig-\d+-curve-finding-([a-z0-9]+)"', curves)
    assert sorted(titles) == sorted(PROBES) and titles[0] == "logreg"
    assert "repeat(auto-fill, minmax(min(100%, 520px), 1fr))" in page  # wraps, never shrinks
    for feature in FEATURES:  # the legend is HTML, so it wraps on a narrow screen
        assert f"<span>{feature}</span>" in page


def test_labels_needed_table_is_the_forecasts(built: dict[str, Any]) -> None:
    (table,) = tables_in(built, "Labels needed")
    fc = pd.read_parquet(built["forecast"])
    keys = ["feature", "task", "probe", "sampler"]
    ref = fc.drop_duplicates(subset=keys)
    assert list(table.columns[:4]) == keys and "n_needed" in table.columns
    assert len(table) == len(ref)
    assert sorted(map(tuple, table[keys].to_numpy())) == sorted(
        map(tuple, ref[keys].astype(str).to_numpy())
    )
    assert re.search(r'<div class="scroll[^"]*" tabindex="0"><table[^>]*>\s*<thead>\s*<tr[^>]*>'
                     r"\s*<th>feature</th>", built["page"])  # fmt: skip


def test_subgroup_table_names_probe_and_sampler(built: dict[str, Any]) -> None:
    (table,) = tables_in(built, "Subgroups")
    for col in ("probe", "sampler", "n"):
        assert col in table.columns
    shown = ["feature", "task", "probe", "sampler", "n", "group_by", "group"]
    assert not table.duplicated(subset=shown).any()  # no two rows that look the same
    n_all = int(pd.read_parquet(built["results"])["n"].max())  # every feature has it
    ref = subgroup_metrics(results=built["results"], group_by="sex", store=built["store"],
                           n=n_all, replicates=50).table  # fmt: skip
    assert len(table) == len(ref)
    got = table.set_index(shown)["score"].astype(float)
    want = ref.assign(n=ref["n"].astype(str)).set_index(shown)["score"]
    assert np.allclose(got.loc[want.index].to_numpy(), want.to_numpy(), atol=5e-4)


def test_compare_section_is_fmprobe_compare(built: dict[str, Any]) -> None:
    """The best feature at the largest n (logreg, random) against each other one, and probes
    against logreg, with the numbers a direct call of fmprobe.stats.compare gives."""
    res = pd.read_parquet(built["results"])
    n_all = int(res["n"].max())
    at = res[(res["n"] == n_all) & (res["probe"] == "logreg") & (res["sampler"] == "random")]
    ranking = at.groupby("feature")["auroc"].mean().sort_values(ascending=False)
    best = ranking.index[0]
    table = tables_in(built, "Compare")[0]
    assert built["result"].comparisons == len(table)
    rows = table.set_index(["compared", "A", "B"])
    for other in ranking.index[1:]:
        ref = compare(results=built["results"], a=best, b=other, n=n_all, replicates=50,
                      probe="logreg", sampler="random").table  # fmt: skip
        pooled = ref[ref["task"] == "all"].iloc[0] if (ref["task"] == "all").any() else ref.iloc[0]
        row = rows.loc[("feature", best, other)]
        for col in ("difference", "lower", "upper"):
            assert float(row[col]) == pytest.approx(float(pooled[col]), rel=1e-3, abs=1e-4)
    for probe in set(PROBES) - {"logreg"}:
        assert ("probe", probe, "logreg") in rows.index
    # samplers are compared where their subsets differ: below the whole pool
    sampler_row = rows.loc[("sampler", "fps", "random")]
    assert int(sampler_row["n"]) < n_all


def small_results(built: dict[str, Any], folder: Path) -> Path:
    """The results of logreg with random draws alone, without their predictions."""
    res = pd.read_parquet(built["results"])
    path = folder / "results.parquet"
    res[(res["probe"] == "logreg") & (res["sampler"] == "random")].to_parquet(path)
    return path


def test_compare_without_predictions_says_how(built: dict[str, Any], tmp_path: Path) -> None:
    r = report(results=small_results(built, tmp_path), out=tmp_path / "r")
    assert r.comparisons == 0 and "Compare" in r.sections
    assert "rerun the sweep with <code>--save-predictions</code>" in Path(r.index).read_text()


def test_cli_json_and_bad_input(built: dict[str, Any], tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["report", str(built["results"]), "--out", str(tmp_path / "r"),
                                  "--metric", "auprc", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["index"] == str(tmp_path / "r" / "index.html") and Path(info["index"]).is_file()
    assert "Provenance" in info["sections"] and info["comparisons"] > 0
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    cases = [
        (["--metric", "aucroc"], "--metric 'aucroc' is not a column"),
        (["--forecast", str(built["results"])], "--forecast table has no column"),
        (["--forecast", str(tmp_path / "bad.parquet")], "cannot be read as parquet"),
        (["--group-by", "sex"], "--group-by needs --store"),
        (["--n", "7"], "--n 7 is not in the results"),
        (["--out", str(tmp_path / "file.txt")], "is a file; pass a folder"),
    ]
    for extra, message in cases:
        args = ["report", str(built["results"]), "--out", str(tmp_path / "x"), *extra]
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and message in r.stderr, (extra, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    r = CliRunner().invoke(main, ["report", str(tmp_path / "bad.parquet"), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "RESULTS" in r.stderr and "cannot be read as parquet" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(UsageError, match="does not exist"):
        report(results=tmp_path / "missing.parquet", out=tmp_path / "y")


def test_the_page_is_replaced_atomically(
    built: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, results = tmp_path / "r", small_results(built, tmp_path)
    first = Path(report(results=results, out=out, metric="auprc").index).read_bytes()

    def disk_full(src: Any, dst: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(FmprobeError, match=r"(?i)no space left on (the )?device"):
        report(results=results, out=out, metric="auroc")
    assert (out / "index.html").read_bytes() == first  # the old page, whole
    assert sorted(p.name for p in out.iterdir()) == ["index.html"]  # no temporary left
    r = CliRunner().invoke(main, ["report", str(results), "--out", str(out)])
    assert r.exit_code == 1 and "no space left on the device" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# --- the page in a browser --------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> str:
    """An installed Chromium (``make chromium`` installs Debian's); the tests install nothing."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium installed: `make chromium` installs Debian's package (as root)")


class DevTools:
    """Headless Chromium driven over the DevTools protocol on a pipe (the browser reads
    commands on fd 3 and answers on fd 4), so that the page can be laid out at a phone's
    width (the window of headless Chromium is at least 500 px wide) and measured."""

    def __init__(self, binary: str, profile: Path) -> None:
        cmd_read, self._cmd = os.pipe()
        self._answers, answer_write = os.pipe()

        def to_3_and_4() -> None:
            os.dup2(cmd_read, 3)
            os.dup2(answer_write, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=to_3_and_4,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(cmd_read)
        os.close(answer_write)
        self._id, self._buf = 0, b""
        self._events: list[dict[str, Any]] = []

    def _message(self, timeout: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            if not select.select([self._answers], [], [], timeout)[0]:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._answers, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed its pipe")
            self._buf += chunk
        message, self._buf = self._buf.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._message(120)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self._events.append(reply)

    def _event(self, method: str, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self._events):
            self._events.append(self._message(max(0.1, end - time.monotonic())))

    def open(self, url: str, width: int) -> str:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Page.enable", session)
        self.send("Emulation.setDeviceMetricsOverride", session, width=width, height=900,
                  deviceScaleFactor=1, mobile=width < 600)  # fmt: skip
        self._events.clear()
        self.send("Page.navigate", session, url=url)
        self._event("Page.loadEventFired")
        self.evaluate(session, "document.fonts.ready.then(() => true)")
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        r = self.send("Runtime.evaluate", session, expression=expression, returnByValue=True,
                      awaitPromise=True)  # fmt: skip
        return r["result"].get("value")

    def screenshot(self, session: str, clip: dict[str, float] | None = None) -> bytes:
        if clip is None:
            size = self.send("Page.getLayoutMetrics", session)["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"]}
        shot = self.send("Page.captureScreenshot", session, format="png",
                         captureBeyondViewport=True, clip={**clip, "scale": 1})  # fmt: skip
        return base64.b64decode(shot["data"])

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.proc.wait(timeout=30)
        except (RuntimeError, TimeoutError, OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd)
        os.close(self._answers)


MEASURE = """(() => {
  const box = e => { const r = e.getBoundingClientRect();
    return {x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height}; };
  return {
    inner: innerWidth,
    scroll: Math.max(document.documentElement.scrollWidth, document.body.scrollWidth),
    figures: [...document.querySelectorAll('figure')].map(f =>
      ({id: f.id, ...box(f), svg: box(f.querySelector('svg'))})),
    tables: [...document.querySelectorAll('.scroll')].map(box),
  };
})()"""


def _drawn(png: bytes) -> tuple[float, int]:
    """Share of pixels that are not near-white, and pixels in a feature colour (tab10)."""
    import io

    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    ink = float((rgb.min(2) < 235).mean())
    colours = ((31, 119, 180), (255, 127, 14), (44, 160, 44))
    coloured = sum(int((np.abs(rgb - np.array(c)).max(2) <= 30).sum()) for c in colours)
    return ink, coloured


def test_chromium_lays_out_the_page_at_laptop_and_phone_width(
    built: dict[str, Any], chromium: str, tmp_path: Path
) -> None:
    browser = DevTools(chromium, tmp_path / "profile")
    url = Path(built["result"].index).resolve().as_uri()
    try:
        for width in WIDTHS:
            session = browser.open(url, width)
            m = browser.evaluate(session, MEASURE)
            shot = tmp_path / f"report-{width}px.png"
            shot.write_bytes(browser.screenshot(session))
            print(f"screenshot at {width} px: {shot}")
            assert m["inner"] == width
            assert m["scroll"] <= width, f"the page is {m['scroll']} px wide at {width} px"
            assert len(m["figures"]) == len(built["result"].figures)
            for t in m["tables"]:  # wide tables scroll inside their box
                assert t["x"] >= 0 and t["x"] + t["w"] <= width + 0.5
            for f in m["figures"]:
                svg = f["svg"]
                assert f["x"] >= 0 and f["x"] + f["w"] <= width + 0.5, f
                assert svg["w"] >= min(480, width - 40) and svg["h"] >= 180, f  # readable size
                ink, coloured = _drawn(browser.screenshot(session, {k: svg[k] for k in
                                       ("x", "y")} | {"width": svg["w"], "height": svg["h"]}))  # fmt: skip
                assert ink > 0.02, f"{f['id']} looks empty at {width} px"
                if "-curve-" in f["id"] or "subgroups" in f["id"]:
                    assert coloured > 200, f"{f['id']} shows no feature colour at {width} px"
            curves = [f for f in m["figures"] if "-curve-" in f["id"]]
            columns = len({round(f["x"]) for f in curves})
            # five probes: two columns of full-size panels on a laptop, one on a phone
            assert columns == (2 if width == 1280 else 1), [f["x"] for f in curves]
    finally:
        browser.close()

"""Dataset readers: ``--data`` specs parsed into one ``Dataset`` type.

CONTRACT (implemented in this package; the embed pipeline relies on it):

``parse_data(spec: str | os.PathLike, *, id_col: str = "id", path_col: str = "path") -> Dataset``
    The one boundary normaliser for ``--data``:
    - ``builtin:digits``: scikit-learn's 1,797 digits, 8x8 grey images (0..16 scaled to 0..255),
      ids ``digits-0000`` .. ``digits-1796``, a ``label`` column (int).
    - a folder: every image file below it (PNG/JPEG/TIFF/DICOM by extension, and DICOM files of
      any name by their ``DICM`` magic), sorted by relative path; sub-folder names become the
      ``label`` column (str); id = relative path without its image suffix.
    - ``*.csv`` / ``*.parquet`` manifest: a ``path`` column relative to the manifest's folder, an
      optional ``id`` column (default: path without suffix), other columns = labels/metadata.
    - ``*.h5`` / ``*.hdf5`` / ``*.npz``: an ``images`` array (N,H,W) or (N,H,W,C) (uint8,
      uint16 or float), optional ``ids``; every other 1-D array of length N becomes a column.
      MedMNIST's layout (``train_images``, ``val_images``, ``test_images``, ``<split>_labels``)
      is read as one table with a ``split`` column (:mod:`fmprobe.data.medmnist`).
    Errors (``fmprobe.errors.DataError``, one line naming the fix): path not found, unknown
    format, manifest unreadable or without ``path``, duplicate ids, files listed but missing,
    empty dataset.

``Dataset`` (picklable, so torch DataLoader workers can use it; files opened lazily per process):
    spec: str                # as given by the user
    kind: str                # "builtin" | "folder" | "manifest" | "array"
    table: pandas.DataFrame  # one row per sample, column ``id`` (str) first, then label and
                             # metadata columns (never ``path``); RangeIndex
    __len__() -> int
    ids -> list[str]
    load(i: int) -> PIL.Image.Image   # mode "RGB", 8-bit; raises fmprobe.errors.ImageReadError
    fingerprint() -> str               # sha256 hex; changes when ids, labels/metadata or
                                       # image content identity change
    describe() -> dict                 # JSON-able provenance (spec, kind, n, columns)
"""

from fmprobe.data.dataset import Dataset, parse_data
from fmprobe.data.images import read_image

__all__ = ["Dataset", "parse_data", "read_image"]

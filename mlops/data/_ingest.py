"""Reading a recipe's data source into a DataFrame, and fingerprinting what was read."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pandas as pd

from mlops.data._source import make_source, parquet_frame
from mlops.recipe.schema import DataConfig


def read_frame(data: DataConfig, project: Path, *, nrows: int | None = None, cache_dir: Path | None = None,
               write_cache: bool = False) -> pd.DataFrame:
    """The source as a DataFrame, read by its flavor. `cache_dir` keeps slow sources (read-only unless
    `write_cache`)."""
    return make_source(data).read(project, nrows=nrows, cache_dir=cache_dir, write_cache=write_cache)


def read_snapshot(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A Parquet snapshot (or those of `columns` it has) as a DataFrame, and the memory its Arrow read used handed
    back (release_arrow_memory)."""
    frame = parquet_frame(path, columns)
    release_arrow_memory()
    return frame


# Rows converted to Arrow at a time when a snapshot is written (one row group each).
SNAPSHOT_ROW_GROUP = 1_000_000


def write_snapshot(frame: pd.DataFrame, path: str | Path) -> None:
    """`frame.to_parquet(path, index=False)`, converting one row group at a time: the Arrow copy of the whole frame
    that to_parquet makes first is the frame's size again (1 GB at 10M rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.Schema.from_pandas(frame, preserve_index=False)
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, max(len(frame), 1), SNAPSHOT_ROW_GROUP):
            part = frame.iloc[start:start + SNAPSHOT_ROW_GROUP]
            writer.write_table(pa.Table.from_pandas(part, schema=schema, preserve_index=False))


def release_arrow_memory() -> None:
    """Give the memory Arrow's pool keeps after its buffers are freed back to the OS. Its allocator (mimalloc or
    jemalloc) keeps freed pages for the next allocation; after reading a snapshot that is the size of the table,
    and a step that reads 10M rows kept ~1 GB more resident than it used (bench/README.md, "bench: scale")."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def read_after(data: DataConfig, project: Path, after: Any) -> pd.DataFrame:
    """`data.incremental`: the rows above the watermark `after` (every row when None), filtered by the source
    where it can (a SQL WHERE, an Arrow filter)."""
    assert data.incremental is not None
    return make_source(data).read_after(project, data.incremental.column, after)


def check_columns(data: DataConfig, project: Path, cache_dir: Path | None = None) -> list[tuple[str, str, str]]:
    """Read-only checks run at config load: the data exists and has the named columns.

    Returns (dotted key, message, hint) triples; empty when all is well.
    """
    source = make_source(data)
    return source.check(project, cache_dir) or source.check_window(project, cache_dir)


# Rows hashed at a time by `fingerprint`: pandas' row hashes of a whole 10M-row frame take ~0.45 GB of temporaries.
FINGERPRINT_ROWS = 1_000_000


def fingerprint(frame: pd.DataFrame, columns: list[str] | None = None) -> str:
    """A content hash of the rows and columns used: same data, same fingerprint, whatever the file name.

    `columns`: the fingerprint of `frame[columns]`, without that copy of the frame. The rows are hashed a slice at
    a time (a row's hash depends on that row alone: the same digest as hashing them all at once)."""
    if columns is None or list(frame.columns) == list(columns):
        columns = list(frame.columns)
        part_of = None
    else:
        part_of = list(columns)
    h = hashlib.sha256()
    h.update(repr(list(map(str, columns))).encode())
    h.update(repr([str(frame[c].dtype) for c in columns]).encode())
    for start in range(0, len(frame), FINGERPRINT_ROWS):
        part = frame.iloc[start:start + FINGERPRINT_ROWS]
        part = part if part_of is None else part[part_of]
        h.update(pd.util.hash_pandas_object(part, index=False).to_numpy())
    return "sha256:" + h.hexdigest()


def read_batch(path: Path, data: DataConfig, project: Path) -> pd.DataFrame:
    """A batch file (`mlops validate --input`) read the way ingest reads a `file` source: a FileData with the
    recipe's columns and checks, pointed at `path`. Whatever cannot be read is a DataError saying what was
    read and what to try (delimiter, encoding, format), never a parser's traceback."""
    from mlops.errors import DataError
    from mlops.recipe.schema import FileData, ImageData, ImageFolderData

    path = Path(path)
    if isinstance(data, ImageData):  # an image recipe's batch: a folder of class folders, read as image_folder
        if not path.is_dir():
            raise DataError(f"--input {path}: an image recipe's batch is a folder with one subfolder of PNG/JPEG "
                            "images per class (as source=image_folder reads), not a file.")
        folder = ImageFolderData(source="image_folder", path=str(path.resolve()), target=data.target,
                                 image=data.image, split=data.split, checks=data.checks)
        try:
            return make_source(folder).read(project)
        except ValueError as exc:
            raise DataError(f"--input {path}: {exc}.") from None
    fmt = "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"
    where = f"--input {path}"
    if not path.is_file():
        raise DataError(f"{where}: no such file. Give a .csv or .parquet batch with the recipe's columns.")
    size = path.stat().st_size
    head = path.open("rb").read(200)
    seen = f"read {size} byte(s)" + (f", starting {head.splitlines()[0][:80]!r}" if head.strip() else "")
    if not head.strip():
        raise DataError(f"{where} is empty ({seen}). Give a {fmt.upper()} file whose first line names the "
                        f"recipe's columns ({', '.join([*data.features, data.target])}) and whose rows follow.")
    config = FileData(source="file", path=str(path.resolve()), format=fmt, target=data.target, numeric=data.numeric,
                      categorical=data.categorical, split=data.split, checks=data.checks)
    try:
        frame = make_source(config).read(project)
    except UnicodeDecodeError as exc:
        raise DataError(f"{where} cannot be read as CSV: byte {exc.start} is not UTF-8 ({seen}). Hint: save the "
                        "file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from None
    except Exception as exc:  # any parser's error (pandas, pyarrow) is the file's problem, shown without a traceback
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        other = "CSV" if fmt == "parquet" else "Parquet"
        looks = (" It looks like CSV text: name it .csv." if fmt == "parquet" and b"," in head else
                 " It looks like a Parquet file: name it .parquet." if head.startswith(b"PAR1") else "")
        raise DataError(f"{where} cannot be read as {fmt.upper()}: {type(exc).__name__}: {first} ({seen}).{looks} "
                        f"Hint: check the format (.csv or .parquet; a {other} file with the wrong suffix is read "
                        "wrongly), the encoding (UTF-8) and the delimiter (a comma).") from None
    columns = [str(c) for c in frame.columns]
    missing = [c for c in [*data.features, data.target] if c not in columns]
    if missing and len(columns) == 1 and any(d in columns[0] for d in ";\t|"):
        raise DataError(f"{where}: read one column {columns[0][:80]!r}, not the recipe's columns ({seen}). Hint: "
                        "the file seems to use another delimiter; save it comma-separated.")
    if len(frame) == 0:
        raise DataError(f"{where} has a header but no rows ({seen}; columns: {', '.join(columns) or 'none'}). Give "
                        f"at least data.checks.min_rows={data.checks.min_rows} rows.")
    return frame

"""Strict readers for delimited text and Parquet files.

Every value is checked where it is read, so that a bad input fails with the file, the line (or
Parquet row), the column and the value named — never deep inside pandas or DuckDB.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

LINE = "_line"
"""Column that carries each row's 1-based line (text) or row (Parquet) number."""


class DataFormatError(ValueError):
    """A malformed input file; the message names file, place, column and value."""

    def __init__(
        self,
        path: Path | str,
        reason: str,
        *,
        line: int | None = None,
        column: str | None = None,
        value: object = None,
        unit: str = "line",
    ) -> None:
        self.path, self.line, self.column, self.value, self.reason = str(path), line, column, value, reason
        where = [self.path]
        if line is not None:
            where.append(f"{unit} {line}")
        if column is not None:
            where.append(f"column '{column}'")
        detail = f" (value {value!r})" if value is not None else ""
        super().__init__(f"{', '.join(where)}: {reason}{detail}")


@dataclass(frozen=True)
class Table:
    """A file's rows as strings (or Parquet-native values) plus where each row came from."""

    path: Path
    frame: pd.DataFrame
    unit: str  # "line" for text files, "row" for Parquet

    def error(
        self, reason: str, *, row: int | None = None, column: str | None = None, value: object = None
    ) -> DataFormatError:
        line = int(self.frame[LINE].iloc[row]) if row is not None else None
        return DataFormatError(self.path, reason, line=line, column=column, value=value, unit=self.unit)


def _regular_file(path: Path) -> None:
    """Logs are read only from regular files in their folder: a symlink could point anywhere (and its
    target's first line would be quoted in an error), a FIFO or device would block or never end."""
    if path.is_symlink() or not path.is_file():
        raise DataFormatError(path, "not a regular file (symlinks, folders and special files are not read)")


def _decode(path: Path, encoding: str) -> str:
    _regular_file(path)
    raw = path.read_bytes()
    if not raw.strip():
        raise DataFormatError(path, "file is empty")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataFormatError(
            path,
            f"not valid {encoding} text (byte {exc.start}); re-save the file as {encoding}",
            line=line,
            value=raw[exc.start : exc.end].hex(" "),
        ) from None
    return text.removeprefix("\ufeff")


def read_delimited(
    path: Path,
    *,
    delimiter: str,
    names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    quoting: int = csv.QUOTE_MINIMAL,
) -> Table:
    """Read a delimited text file; the first line is the header unless ``names`` is given."""
    path = Path(path)
    reader = csv.reader(
        io.StringIO(_decode(path, encoding), newline=""), delimiter=delimiter, quoting=quoting
    )
    header = list(names) if names is not None else None
    rows: list[list[str]] = []
    lines: list[int] = []
    for record in reader:
        if not record or (len(record) == 1 and not record[0].strip()):
            continue
        if header is None:
            header = [h.strip() for h in record]
            if len(set(header)) != len(header):
                dup = next(h for h in header if header.count(h) > 1)
                raise DataFormatError(path, "duplicate column in header", line=reader.line_num, column=dup)
            continue
        if len(record) != len(header):
            raise DataFormatError(
                path,
                f"expected {len(header)} fields ({delimiter!r}-separated), found {len(record)}",
                line=reader.line_num,
                value=delimiter.join(record)[:200],
            )
        rows.append(record)
        lines.append(reader.line_num)
    if not rows:
        raise DataFormatError(path, "file has a header but no data rows")
    frame = pd.DataFrame(rows, columns=header, dtype=object)
    frame[LINE] = lines
    return Table(path, frame, "line")


def read_parquet(path: Path) -> Table:
    """Read a Parquet file; rows are numbered from 1 in error messages."""
    path = Path(path)
    _regular_file(path)
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise DataFormatError(path, f"not a readable Parquet file: {exc}") from None
    if frame.empty:
        raise DataFormatError(path, "file has no rows")
    frame = frame.astype(object).where(frame.notna(), None)
    frame[LINE] = range(1, len(frame) + 1)
    return Table(path, frame, "row")


def read_table(path: Path) -> Table:
    """Read CSV (``,``), TSV (``\\t``) or Parquet by file extension."""
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return read_parquet(path)
    if suffix in {".csv", ".tsv", ".txt"}:
        return read_delimited(path, delimiter="\t" if suffix == ".tsv" else ",")
    raise DataFormatError(path, f"unsupported file type {suffix!r}; use .csv, .tsv or .parquet")


def require_columns(table: Table, required: Sequence[str]) -> None:
    missing = [c for c in required if c not in table.frame.columns]
    if missing:
        found = ", ".join(c for c in table.frame.columns if c != LINE)
        raise DataFormatError(
            table.path, f"missing required column(s) {missing}; found: {found}", column=missing[0]
        )


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value)) or str(value).strip() == ""


def text_column(table: Table, column: str, *, required: bool) -> pd.Series:
    """Stripped strings; blanks become None, or fail when ``required``."""
    out = []
    for i, value in enumerate(table.frame[column]):
        if _blank(value):
            if required:
                raise table.error("missing value", row=i, column=column, value="" if value is None else value)
            out.append(None)
        else:
            out.append(str(value).strip())
    return pd.Series(out, index=table.frame.index, dtype=object)


def number_column(table: Table, column: str, *, required: bool, integer: bool) -> pd.Series:
    """Numbers (Int64 or Float64 with NA for blanks); a non-number fails with its value."""
    raw = text_column(table, column, required=required)
    parsed = pd.to_numeric(raw, errors="coerce")
    bad = raw.notna() & parsed.isna()
    if integer:
        bad |= parsed.notna() & (parsed != parsed.round())
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        kind = "an integer" if integer else "a number"
        raise table.error(f"not {kind}", row=i, column=column, value=raw.iloc[i])
    return parsed.astype("Int64" if integer else "Float64")


def timestamp_column(table: Table, column: str) -> pd.Series:
    """Unix seconds from integer seconds or ISO-8601 date-times (naive ones read as UTC)."""
    raw = text_column(table, column, required=True)
    numeric = pd.to_numeric(raw, errors="coerce")
    if numeric.notna().all():
        if (numeric != numeric.round()).any():
            i = int((numeric != numeric.round()).to_numpy().nonzero()[0][0])
            raise table.error("not whole Unix seconds", row=i, column=column, value=raw.iloc[i])
        return numeric.astype("Int64")
    parsed = pd.to_datetime(raw, errors="coerce", utc=True, format="ISO8601")
    bad = parsed.isna() & numeric.isna()
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise table.error(
            "not a Unix timestamp or ISO-8601 date-time", row=i, column=column, value=raw.iloc[i]
        )
    seconds = (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return numeric.fillna(seconds).astype("Int64")


def check_unique(table: Table, keys: pd.Series, column: str) -> None:
    """Fail on the first repeated key, naming both lines."""
    dup = keys.duplicated(keep="first") & keys.notna()
    if dup.any():
        i = int(dup.to_numpy().nonzero()[0][0])
        first = int((keys == keys.iloc[i]).to_numpy().nonzero()[0][0])
        first_line = int(table.frame[LINE].iloc[first])
        raise table.error(
            f"duplicate {column} (first seen at {table.unit} {first_line})",
            row=i,
            column=column,
            value=keys.iloc[i],
        )

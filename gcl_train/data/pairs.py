"""Split CSVs (and their parquet copies) as a stream of `PairRecord`s.

* Split CSV (`<split>.csv`, or `.csv.gz`): RFC-4180 CSV with a header row, read with the
  `csv` module one record at a time (titles may hold commas, quotes and newlines). The
  header must name `query` and `product_id`; every other column is optional. Known
  columns are typed: `position` int; `score_linear`, `score_reciprocal`, `no_score`
  float; `query_id`, `pair_id`, `title`, `image_local` text; `image` text (a path, a
  base64 `data:` URI) or bytes. Unknown columns land in `PairRecord.extra`. A Hugging
  Face copy in parquet (`<split>.parquet`, needs `pyarrow`) yields the same records with
  `image` as bytes (its `{"bytes", "path"}` struct is unpacked).

Every file may be gzip-compressed (a `.gz` name, or gzip content under any name) and
may start with a UTF-8 byte-order mark. Malformed files raise `DataFormatError` naming
the file and line: invalid UTF-8, NUL bytes, a damaged gzip stream (with the last line
read), a CSV record longer than `MAX_RECORD_BYTES` (an unbalanced quote). A row whose
required field is missing is counted in `ReadStats` (reason and first line numbers) and
skipped, never silently; `on_missing="raise"` turns that into an error instead.
`iter_pairs(..., numeric=cols)` validates score columns as the file is read
(`check_score`).
"""
from __future__ import annotations

import base64
import csv
import logging
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

from .errors import DataFormatError
from .fields import is_missing
from .jsonstream import GZIP_ERRORS, encoding_hint, gzip_error, human_size, open_binary, require_file

log = logging.getLogger(__name__)

_INT_COLS = ("position",)
_FLOAT_COLS = ("score_linear", "score_reciprocal", "no_score")
_TEXT_COLS = ("query", "product_id", "title", "image_local", "query_id", "pair_id")
_KNOWN = frozenset(_INT_COLS + _FLOAT_COLS + _TEXT_COLS + ("image",))

# a title field can legitimately exceed csv's default 128 KiB limit in scraped data
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
#: A CSV record (all its physical lines) longer than this many bytes is refused: it is an
#: unbalanced quote swallowing the rest of the file, or not a CSV file at all.
MAX_RECORD_BYTES = 256 << 20


@dataclass
class PairRecord:
    """One (query, product) row of a split file; absent cells are None."""

    query: str
    product_id: str
    position: Optional[int] = None
    title: Optional[str] = None
    image_local: Optional[str] = None
    image: Any = None
    score_linear: Optional[float] = None
    score_reciprocal: Optional[float] = None
    no_score: Optional[float] = None
    query_id: Optional[str] = None
    pair_id: Optional[str] = None
    line: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default=None):
        """The value of a column by name (known or extra)."""
        if key in self.__dataclass_fields__ and key not in ("extra", "line"):
            v = getattr(self, key)
            return default if v is None else v
        return self.extra.get(key, default)


@dataclass
class ReadStats:
    """What a streaming read saw: rows, rows left out and why, optional fields missing."""

    path: str = ""
    rows: int = 0
    yielded: int = 0
    skipped: Counter = field(default_factory=Counter)
    missing: Counter = field(default_factory=Counter)
    examples: Dict[str, List[int]] = field(default_factory=dict)

    def note_skip(self, reason: str, line: int) -> None:
        self.skipped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 5:
            ex.append(line)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One human-readable paragraph."""
        parts = [f"{self.path}: {self.rows} rows read, {self.yielded} used, {self.n_skipped} left out"]
        for reason, n in self.skipped.most_common():
            parts.append(f"  left out {n} rows: {reason} (first at lines {self.examples.get(reason)})")
        for key, n in self.missing.most_common():
            parts.append(f"  {n} rows without optional field {key!r} (weight 0, others renormalised)")
        return "\n".join(parts)


def _parse_number(path, line, col, text, kind):
    t = text.strip()
    if t == "" or t.lower() in ("nan", "none", "null"):
        return None
    try:
        v = float(t)
    except ValueError:
        raise DataFormatError(path, line, f"column {col!r}: expected a number, got {text!r}") from None
    if kind is int:
        if not v.is_integer():
            raise DataFormatError(path, line, f"column {col!r}: expected an integer, got {text!r}")
        return int(v)
    return v


_SCORE_MISSING = frozenset({"", "none", "null", "na", "n/a"})


def check_score(path, line: int, column: str, value) -> Optional[float]:
    """Validate one score cell as it is read: a finite number >= 0, as a float.

    Args:
        path, line: the file and 1-based line (or parquet row), for the error.
        column: the column name, for the error.
        value: the cell: text from a CSV, or a number (parquet).

    Returns:
        The score as a float, or None for a missing cell (None, empty or blank text,
        "none" / "null" / "na" / "n/a"), which callers count as missing.

    Raises:
        DataFormatError(path, line, ...) naming the column and the value for text that is
        not a number, NaN (also the text "nan"), +-inf, a negative number, or a bool.

    Example:
        >>> check_score("s.csv", 2, "score_linear", "87")
        87.0
    """
    if value is None:
        return None
    if isinstance(value, str):
        t = value.strip()
        if t.lower() in _SCORE_MISSING:
            return None
        try:
            v = float(t)
        except ValueError:
            raise DataFormatError(path, line, f"column {column!r}: expected a number, got {value!r}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        v = float(value)
    else:
        raise DataFormatError(path, line, f"column {column!r}: expected a number, got {value!r}")
    if not math.isfinite(v):
        raise DataFormatError(path, line, f"column {column!r}: expected a finite number, got {value!r}")
    if v < 0:
        raise DataFormatError(path, line, f"column {column!r}: expected a score >= 0, got {value!r}")
    return v


def _check_numeric(path, line, col, value):
    v = check_score(path, line, col, value)
    if v is not None and col in _INT_COLS:
        if not v.is_integer():
            raise DataFormatError(path, line, f"column {col!r}: expected an integer, got {value!r}")
        return int(v)
    return v


def _decode_image_cell(value):
    if isinstance(value, dict):
        b = value.get("bytes")
        return b if b else value.get("path")
    return value


def _make_record(path, line, row: Mapping[str, Any]) -> PairRecord:
    kw: Dict[str, Any] = {}
    extra: Dict[str, Any] = {}
    for col, val in row.items():
        if col in _INT_COLS or col in _FLOAT_COLS:
            if val is None or isinstance(val, (int, float)):
                num = val
                if isinstance(val, float) and val != val:
                    num = None
                if col in _INT_COLS and num is not None:
                    if float(num) != int(num):
                        raise DataFormatError(path, line, f"column {col!r}: expected an integer, got {val!r}")
                    num = int(num)
                kw[col] = num
            else:
                kw[col] = _parse_number(path, line, col, str(val), int if col in _INT_COLS else float)
        elif col in _TEXT_COLS:
            kw[col] = None if is_missing(val) else str(val)
        elif col == "image":
            val = _decode_image_cell(val)
            kw[col] = None if is_missing(val) else val
        else:
            extra[col] = val
    return PairRecord(line=line, extra=extra, **kw)


_SHORT_MISSING = frozenset({"nan", "none", "null", "na", "n/a"})


def _text_cell(v: str) -> Optional[str]:
    if not v:
        return None
    if len(v) <= 4 and v.strip().lower() in _SHORT_MISSING:
        return None
    if v[0].isspace() and not v.strip():
        return None
    return v


class _CsvRowConverter:
    """Turns the cells of one CSV row into a `PairRecord`; per-column work decided once per file."""

    def __init__(self, path: str, header: List[str], columns: Optional[Sequence[str]] = None,
                 numeric: Sequence[str] = ()):
        self.path = path
        self.plan = []
        keep = None if columns is None else set(columns) | {"query", "product_id"} | set(numeric)
        for idx, col in enumerate(header):
            if keep is not None and col not in keep:
                continue
            if col in numeric:
                kind = "numeric"
            elif col in _INT_COLS:
                kind = "int"
            elif col in _FLOAT_COLS:
                kind = "float"
            elif col in _TEXT_COLS:
                kind = "text"
            elif col == "image":
                kind = "image"
            else:
                kind = "extra"
            self.plan.append((idx, col, kind))

    def __call__(self, cells: List[str], line: int) -> PairRecord:
        kw: Dict[str, Any] = {}
        extra: Dict[str, Any] = {}
        for idx, col, kind in self.plan:
            v = cells[idx]
            if kind == "text":
                kw[col] = _text_cell(v)
            elif kind == "int":
                try:
                    kw[col] = int(v)
                except ValueError:
                    kw[col] = _parse_number(self.path, line, col, v, int)
            elif kind == "float":
                try:
                    kw[col] = float(v)
                except ValueError:
                    kw[col] = _parse_number(self.path, line, col, v, float)
                else:
                    if kw[col] != kw[col]:
                        kw[col] = None
            elif kind == "image":
                v = _text_cell(v)
                if v is not None and v.startswith("data:"):
                    v = _decode_data_uri(self.path, line, v)
                kw[col] = v
            elif kind == "numeric":
                (kw if col in _KNOWN else extra)[col] = _check_numeric(self.path, line, col, v)
            else:
                extra[col] = v
        if "query" not in kw or "product_id" not in kw:
            raise AssertionError("header was validated")
        return PairRecord(line=line, extra=extra, **kw)


def _accept(rec: PairRecord, required: Sequence[str], optional: Sequence[str], stats: ReadStats,
            on_missing: str, path) -> bool:
    """Whether to yield `rec`, with the counting both readers (CSV, parquet) share."""
    for key in required:
        v = getattr(rec, key, None) if key in _KNOWN else rec.extra.get(key)
        if v is None or is_missing(v):
            reason = f"missing required field {key!r}"
            if on_missing == "raise":
                raise DataFormatError(path, rec.line, reason)
            stats.note_skip(reason, rec.line)
            return False
    for key in optional:
        if is_missing(rec.get(key)):
            stats.missing[key] += 1
    stats.yielded += 1
    return True


def iter_pairs(
    path: str,
    required: Sequence[str] = ("query", "product_id"),
    optional: Sequence[str] = (),
    stats: Optional[ReadStats] = None,
    on_missing: str = "skip",
    columns: Optional[Sequence[str]] = None,
    numeric: Sequence[str] = (),
    report: bool = True,
) -> Iterator[PairRecord]:
    """Stream the rows of a split file as `PairRecord`s, one at a time.

    Args:
        path: a split CSV (`.csv` or `.csv.gz`) or, with pyarrow installed, `.parquet`.
        required: columns that must be present in every row; a row missing one is
            counted in `stats` and skipped (or raises, with on_missing="raise").
        optional: columns whose absence is only counted (e.g. "title", "image_local").
        stats: filled while reading (rows, skipped with reasons and lines, missing).
        report: log the summary of skipped rows as a warning when the file is done
            (False: the caller reports `stats` itself, e.g. once for many passes).
        on_missing: "skip" (count and leave out) or "raise".
        columns: parse only these columns (plus query, product_id, required,
            optional and numeric); the others stay None. Saves time on
            multi-million-row passes.
        numeric: score columns to validate while reading, e.g. ("score_linear",): each
            cell goes through `check_score` and becomes a float (an int for
            `position`), also for columns outside `CSV_COLUMNS` (in `rec.extra`). A
            cell that is not a number, NaN, +-inf or negative raises DataFormatError
            with the file and line; an empty cell is None (missing, so counted and
            skipped when the column is also in `required`). The header must name
            every numeric column.

    Raises:
        DataFormatError (file and line) for an empty file, a header without `query` /
        `product_id` (or a required / numeric column), a row with the wrong number of
        cells, an unparsable number, a bad score (`numeric`), a broken quote, a record
        longer than `MAX_RECORD_BYTES`, NUL bytes, invalid UTF-8 or a damaged gzip
        stream. FileNotFoundError for a missing file (or a directory, a FIFO, a broken
        symlink).

    Example:
        >>> # for rec in iter_pairs("marqo_gs_wfash_1m/query_0_product_id_0.csv",
        >>> #                       required=("query", "product_id", "score_linear"),
        >>> #                       numeric=("score_linear",)): rec.score_linear
    """
    if on_missing not in ("skip", "raise"):
        raise ValueError(f"on_missing: expected 'skip' or 'raise', got {on_missing!r}")
    if isinstance(numeric, str) or not all(isinstance(c, str) and c for c in numeric):
        raise ValueError(f"numeric: expected a sequence of column names, e.g. ('score_linear',), got {numeric!r}")
    numeric = tuple(numeric)
    if stats is None:
        stats = ReadStats()
    stats.path = str(path)
    path = str(path)
    require_file(path, "split file")
    if path.endswith(".parquet"):
        yield from _iter_parquet(path, required, optional, stats, on_missing, numeric)
    else:
        yield from _iter_csv(path, required, optional, stats, on_missing, columns, numeric)
    if stats.n_skipped and report:
        log.warning("%s", stats.summary())


def _csv_lines(path: str, fb, state: List[int]) -> Iterator[str]:
    """The physical lines of a CSV file for `csv.reader`, decoded one by one (so a bad
    byte is reported at its own line), with the checks the csv module does not make:
    NUL bytes, a damaged gzip stream, and a record that grows past `MAX_RECORD_BYTES`.

    `state` is [lines read, bytes read, first line of the current record, bytes read
    before it]; the caller sets the last two after each record."""
    limit = MAX_RECORD_BYTES
    readline = fb.readline
    while True:
        try:
            raw = readline(limit + 1 - (state[1] - state[3]))
        except GZIP_ERRORS as e:
            raise gzip_error(path, e, state[0]) from None
        if not raw:
            return
        state[0] += 1
        state[1] += len(raw)
        if state[1] - state[3] > limit:
            raise DataFormatError(path, state[2], f"a record longer than {human_size(limit)} starts here "
                                                  "(an unbalanced quote, or not a CSV file?)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            hint = encoding_hint(path) if state[0] == 1 else ""
            raise DataFormatError(path, state[0], f"not valid UTF-8 ({e}){hint}") from None
        if "\x00" in text:
            raise DataFormatError(path, state[0], "NUL byte in the line (a corrupt or binary file?)")
        if state[0] == 1 and text.startswith("\ufeff"):
            text = text[1:]
        yield text


_CR_HINT = " (lone CR line endings? re-save the file with LF or CRLF line endings)"


def _csv_error(e: csv.Error) -> str:
    return f"{e}{_CR_HINT}" if "new-line character seen in unquoted field" in str(e) else str(e)


def _decode_data_uri(path, line, uri: str) -> bytes:
    head, _, payload = uri.partition(",")
    if ";base64" not in head:
        raise DataFormatError(path, line, "column 'image': only base64 data: URIs are supported")
    try:
        return base64.b64decode(payload, validate=True)
    except ValueError as e:
        raise DataFormatError(path, line, f"column 'image': invalid base64 ({e})") from None


def _iter_csv(path, required, optional, stats, on_missing, columns, numeric=()):
    with open_binary(path) as fb:
        state = [0, 0, 1, 0]
        reader = csv.reader(_csv_lines(path, fb, state), strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise DataFormatError(path, 1, "empty file, expected a CSV header row") from None
        except csv.Error as e:
            raise DataFormatError(path, 1, f"unreadable CSV header ({_csv_error(e)})") from None
        state[2], state[3] = state[0] + 1, state[1]
        if not header:
            raise DataFormatError(path, 1, "the first line is blank, expected a CSV header row")
        raw_header = header
        header = [h.strip() for h in header]
        if header != raw_header:
            log.warning("%s: header names have surrounding spaces %s; they are stripped from the names, "
                        "but cell values are kept as written", path, [h for h in raw_header if h != h.strip()])
        for col in ("query", "product_id") + tuple(required):
            if col not in header:
                raise DataFormatError(path, 1, f"header has no {col!r} column; columns are {header}")
        for col in numeric:
            if col not in header:
                raise DataFormatError(path, 1, f"header has no {col!r} column (named in numeric); columns are {header}")
        dupes = [h for h, n in Counter(header).items() if n > 1]
        if dupes:
            hint = " (empty names: trailing commas in the header?)" if "" in dupes else ""
            raise DataFormatError(path, 1, f"duplicate column names {dupes}{hint}")
        h0, h0_bom = raw_header[0], "\ufeff" + raw_header[0]
        ncol = len(header)
        convert = _CsvRowConverter(
            path, header, None if columns is None else tuple(columns) + tuple(required) + tuple(optional), numeric)
        prev_line = reader.line_num
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise DataFormatError(path, prev_line + 1, f"malformed CSV ({_csv_error(e)})") from None
            line = prev_line + 1
            prev_line = reader.line_num
            state[2], state[3] = prev_line + 1, state[1]
            if not cells:
                continue  # blank line
            stats.rows += 1
            if len(cells) != ncol:
                raise DataFormatError(path, line, f"expected {ncol} cells (one per header column), got {len(cells)}")
            if (cells[0] == h0 or cells[0] == h0_bom) and cells[1:] == raw_header[1:]:
                raise DataFormatError(path, line, "the header row appears again (two files concatenated?)")
            rec = convert(cells, line)
            if _accept(rec, required, optional, stats, on_missing, path):
                yield rec


def _iter_parquet(path, required, optional, stats, on_missing, numeric=()):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"reading {path} needs pyarrow (pip install pyarrow)") from None
    line = 0
    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        for col in ("query", "product_id") + tuple(required) + tuple(numeric):
            if col not in names:
                raise DataFormatError(path, 0, f"parquet schema has no {col!r} column; columns are {names}")
        for batch in pf.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                line += 1  # the row number stands in for a line
                stats.rows += 1
                for col in numeric:
                    row[col] = _check_numeric(path, line, col, row[col])
                rec = _make_record(path, line, row)
                if _accept(rec, required, optional, stats, on_missing, path):
                    yield rec
    except pa.ArrowException as e:
        raise DataFormatError(path, 0, f"unreadable parquet file after row {line} ({type(e).__name__}: {e})") from None


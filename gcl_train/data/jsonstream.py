"""Stream the members of one large JSON document without loading it whole.

`corpus_N.json` of the full MarqoGS-10M set is one JSON object with millions of members;
`json.load` would hold all of it (several GB of Python objects) at once. `iter_json_members`
walks the top-level object or array with `json.JSONDecoder.raw_decode` over a sliding
text buffer, so memory is bounded by the buffer and the largest single member.
"""
from __future__ import annotations

import errno
import gzip
import io
import json
import os
import stat
import zlib
from typing import Any, Iterator, List, Optional, Tuple

from .errors import DataFormatError

_WS = " \t\r\n"
_CHUNK = 1 << 20
_PIECE = 1 << 16
#: One JSON value (a corpus member) or one JSON line longer than this many characters is
#: refused: it is an unbalanced bracket or quote, or not the file it claims to be.
MAX_VALUE_CHARS = 256 << 20

GZIP_MAGIC = b"\x1f\x8b"
#: What a damaged gzip stream raises while it is read.
GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def require_file(path: str, what: str) -> None:
    """Raise FileNotFoundError("<what> not found: <path> (<why>)") unless `path` is a
    regular file (or a symlink to one); the reason names a directory, a broken symlink,
    a symlink loop or a special file (a FIFO would block a reader forever)."""
    try:
        st = os.stat(path)
    except OSError as e:
        if os.path.islink(path):
            why = "a symlink loop" if getattr(e, "errno", None) == errno.ELOOP else "a broken symlink"
            raise FileNotFoundError(f"{what} not found: {path} ({why})") from None
        raise FileNotFoundError(f"{what} not found: {path}") from None
    if stat.S_ISREG(st.st_mode):
        return
    why = "a directory, not a file" if stat.S_ISDIR(st.st_mode) else "not a regular file"
    raise FileNotFoundError(f"{what} not found: {path} ({why})")


def is_gzip(path: str) -> bool:
    """A `.gz` name, or gzip's magic bytes whatever the name."""
    if str(path).lower().endswith(".gz"):
        return True
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_binary(path: str):
    """Open a file for reading bytes, decompressing gzip (by name or by content)."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def open_text(path: str):
    """Open a text file (optionally gzip) as UTF-8, a leading byte-order mark dropped
    (utf-8-sig), with universal newlines disabled."""
    return io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", newline="")


def gzip_error(path: str, exc: BaseException, lines: int, records: Optional[int] = None) -> DataFormatError:
    """The DataFormatError for a damaged gzip stream: what broke, after how many complete
    lines (and records, when the reader counts them), and the underlying error."""
    cause = f"({type(exc).__name__}: {exc})"
    if lines == 0 and "Not a gzipped file" in str(exc):
        return DataFormatError(path, 0, f"not a gzip file {cause}")
    kind = "truncated gzip stream" if isinstance(exc, EOFError) else "corrupt gzip stream"
    where = f"after line {lines}" if lines else "before the end of the first line"
    if records is not None:
        where += f" ({records} records read)"
    return DataFormatError(path, 0, f"{kind} {where} {cause}")


def human_size(n: int) -> str:
    """1048576 -> '1 MiB', 65536 -> '64 KiB'."""
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def encoding_hint(path: str) -> str:
    """' (the file looks UTF-16 ...)' when a UTF-8 decode failure has an obvious cause."""
    try:
        with open_binary(path) as f:
            head = f.read(4)
    except (OSError,) + GZIP_ERRORS:
        return ""
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "; the file looks UTF-16 (it starts with a UTF-16 byte-order mark): re-save it as UTF-8"
    if head[:2] == GZIP_MAGIC:
        return "; the content is gzip-compressed twice"
    return ""


class _Buffer:
    def __init__(self, path: str, chunk: int):
        self.path = path
        self.f = open_text(path)
        self.chunk = chunk
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.lines_before = 0  # newlines in text already dropped from buf
        self.records = 0  # top-level members yielded so far (for error messages)

    def close(self):
        self.f.close()

    def fill(self, size: Optional[int] = None) -> bool:
        if self.eof:
            return False
        data = self._read(size or self.chunk)
        if not data:
            self.eof = True
            return False
        if self.pos > self.chunk:
            self.lines_before += self.buf.count("\n", 0, self.pos)
            self.buf = self.buf[self.pos:]
            self.pos = 0
        self.buf += data
        return True

    def _read(self, size: int) -> str:
        # in pieces, so a damaged gzip stream is reported after the last line it gave
        pieces: List[str] = []
        got = 0
        try:
            while got < size:
                piece = self.f.read(min(size - got, _PIECE))
                if not piece:
                    break
                pieces.append(piece)
                got += len(piece)
        except UnicodeDecodeError as e:
            line = self.lines_before + self.buf.count("\n") + sum(p.count("\n") for p in pieces) + 1
            raise DataFormatError(self.path, line, f"not valid UTF-8 ({e}){encoding_hint(self.path)}") from None
        except GZIP_ERRORS as e:
            lines = self.lines_before + self.buf.count("\n") + sum(p.count("\n") for p in pieces)
            raise gzip_error(self.path, e, lines, self.records) from None
        return "".join(pieces)

    def line_at(self, pos: int) -> int:
        return self.lines_before + self.buf.count("\n", 0, pos) + 1

    def error(self, what: str, pos: int = None) -> DataFormatError:
        return DataFormatError(self.path, self.line_at(self.pos if pos is None else pos), what)

    def skip_ws(self) -> str:
        """Advance past whitespace; return the next character ('' at end of file)."""
        while True:
            n = len(self.buf)
            p = self.pos
            while p < n and self.buf[p] in _WS:
                p += 1
            self.pos = p
            if p < n:
                return self.buf[p]
            if not self.fill():
                return ""

    def _more(self) -> bool:
        # read as much again as is pending, so a value of n characters costs O(n) decode
        # attempts' worth of scanning in total, not O(n^2 / chunk)
        pending = len(self.buf) - self.pos
        if pending > MAX_VALUE_CHARS:
            raise self.error(f"a single JSON value longer than {human_size(MAX_VALUE_CHARS)} starts here "
                             "(an unbalanced bracket or quote?)")
        return self.fill(max(self.chunk, pending))

    def decode(self, decoder: json.JSONDecoder, what: str) -> Any:
        while True:
            try:
                value, end = decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                # only an error where the text runs out can be cured by reading on; one
                # inside the buffer is reported at once, not after reading the whole file
                incomplete = e.msg.startswith("Unterminated string") or e.pos >= len(self.buf) - 32
                if incomplete and self._more():
                    continue
                start = self.line_at(self.pos)
                raise self.error(f"invalid JSON in {what} (which starts at line {start}): {e.msg}", e.pos) from None
            except RecursionError:
                raise self.error(f"{what} is nested too deeply to decode") from None
            # a number or literal ending exactly at the buffer edge may continue in the next chunk
            if end == len(self.buf) and not self.eof and self.fill():
                continue
            self.pos = end
            return value


def iter_json_members(path: str, chunk: int = _CHUNK) -> Iterator[Tuple[Any, Any, int]]:
    """Yield (key, value, line) for each member of a top-level JSON object, or
    (index, value, line) for each element of a top-level array, reading the file in
    chunks; line is the 1-based line where the value starts. The file may be gzip
    (by name or content) and may start with a UTF-8 byte-order mark.

    Raises:
        DataFormatError naming the file and line of the first malformed spot (or, for a
        damaged gzip stream, the last complete line and the members read); a value
        longer than `MAX_VALUE_CHARS` is refused. FileNotFoundError unless `path` is a
        regular file.

    Example:
        >>> # for pid, doc, line in iter_json_members("corpus_1.json"): ...
    """
    require_file(path, "JSON file")
    b = _Buffer(path, chunk)
    decoder = json.JSONDecoder()
    try:
        first = b.skip_ws()
        if first == "":
            raise b.error("empty file, expected a JSON object or array")
        if first not in "{[":
            raise b.error(f"expected a top-level JSON object or array, found {first!r}")
        closing = "}" if first == "{" else "]"
        b.pos += 1
        index = 0
        c = b.skip_ws()
        if c == closing:
            b.pos += 1
        else:
            while True:
                if first == "{":
                    if c != '"':
                        raise b.error(f"expected a quoted member name, found {c or 'end of file'!r}")
                    key = b.decode(decoder, "member name")
                    if b.skip_ws() != ":":
                        raise b.error(f"expected ':' after member name {key!r}")
                    b.pos += 1
                    if b.skip_ws() == "":
                        raise b.error(f"unexpected end of file after member name {key!r}")
                    line = b.line_at(b.pos)
                    value = b.decode(decoder, f"the value of {key!r}")
                    b.records += 1
                    yield key, value, line
                else:
                    if c == "":
                        raise b.error("unexpected end of file inside the top-level array")
                    line = b.line_at(b.pos)
                    value = b.decode(decoder, f"array element {index}")
                    b.records += 1
                    yield index, value, line
                index += 1
                c = b.skip_ws()
                if c == ",":
                    b.pos += 1
                    c = b.skip_ws()
                    continue
                if c == closing:
                    b.pos += 1
                    break
                raise b.error(f"expected ',' or {closing!r}, found {c or 'end of file'!r}")
        c = b.skip_ws()
        if c != "":
            hint = (" (one JSON value per line is JSON lines: name the file .jsonl)" if c in "{[" else
                    " (NUL bytes: a file zero-filled after a crash?)" if c == "\x00" else "")
            raise b.error(f"unexpected data after the top-level JSON value{hint}")
    finally:
        b.close()


def iter_json_lines(path: str) -> Iterator[Tuple[int, Any]]:
    """Yield (line_number, value) for each non-blank line of a JSON-lines file (gzip by
    name or content, a leading byte-order mark dropped).

    Raises:
        DataFormatError naming the file and line for invalid JSON, invalid UTF-8, a line
        longer than `MAX_VALUE_CHARS` or a damaged gzip stream; FileNotFoundError unless
        `path` is a regular file.
    """
    require_file(path, "JSON-lines file")
    decoder = json.JSONDecoder()
    limit = MAX_VALUE_CHARS
    with open_text(path) as f:
        lineno = 0
        while True:
            try:
                line = f.readline(limit + 1)
            except UnicodeDecodeError as e:
                raise DataFormatError(path, lineno + 1, f"not valid UTF-8 ({e}){encoding_hint(path)}") from None
            except GZIP_ERRORS as e:
                raise gzip_error(path, e, lineno) from None
            if not line:
                return
            lineno += 1
            if len(line) > limit:
                raise DataFormatError(path, lineno, f"a line longer than {human_size(limit)}")
            if not line.strip():
                continue
            try:
                value = decoder.decode(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(path, lineno, f"invalid JSON line: {e.msg} at column {e.colno}") from None
            except RecursionError:
                raise DataFormatError(path, lineno, "JSON line nested too deeply to decode") from None
            yield lineno, value

"""Stream the members of one large JSON document without loading it whole.

`corpus_N.json` of the full MarqoGS-10M set is one JSON object with millions of members;
`json.load` would hold all of it (several GB of Python objects) at once. `iter_json_members`
walks the top-level object or array with `json.JSONDecoder.raw_decode` over a sliding
text buffer, so memory is bounded by the buffer and the largest single member.
"""
from __future__ import annotations

import gzip
import io
import json
import os
from typing import Any, Iterator, Tuple

from .errors import DataFormatError

_WS = " \t\r\n"
_CHUNK = 1 << 20


def open_text(path: str):
    """Open a text file (optionally .gz) as UTF-8 with universal newlines disabled."""
    if str(path).endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, "r", encoding="utf-8", newline="")


class _Buffer:
    def __init__(self, path: str, chunk: int):
        self.path = path
        self.f = open_text(path)
        self.chunk = chunk
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.lines_before = 0  # newlines in text already dropped from buf

    def close(self):
        self.f.close()

    def fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = self.f.read(self.chunk)
        except UnicodeDecodeError as e:
            raise DataFormatError(self.path, self.line_at(len(self.buf)), f"not valid UTF-8 ({e})") from None
        if not data:
            self.eof = True
            return False
        if self.pos > self.chunk:
            self.lines_before += self.buf.count("\n", 0, self.pos)
            self.buf = self.buf[self.pos:]
            self.pos = 0
        self.buf += data
        return True

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

    def decode(self, decoder: json.JSONDecoder, what: str) -> Any:
        while True:
            try:
                value, end = decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                if self.fill():
                    continue
                start = self.line_at(self.pos)
                raise self.error(f"invalid JSON in {what} (which starts at line {start}): {e.msg}", e.pos) from None
            # a number or literal ending exactly at the buffer edge may continue in the next chunk
            if end == len(self.buf) and not self.eof and self.fill():
                continue
            self.pos = end
            return value


def iter_json_members(path: str, chunk: int = _CHUNK) -> Iterator[Tuple[Any, Any, int]]:
    """Yield (key, value, line) for each member of a top-level JSON object, or
    (index, value, line) for each element of a top-level array, reading the file in
    chunks; line is the 1-based line where the value starts.

    Raises:
        DataFormatError naming the file and line of the first malformed spot.

    Example:
        >>> # for pid, doc, line in iter_json_members("corpus_1.json"): ...
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"JSON file not found: {path}")
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
                    yield key, value, line
                else:
                    if c == "":
                        raise b.error("unexpected end of file inside the top-level array")
                    line = b.line_at(b.pos)
                    value = b.decode(decoder, f"array element {index}")
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
        if b.skip_ws() != "":
            raise b.error("unexpected data after the top-level JSON value")
    finally:
        b.close()


def iter_json_lines(path: str) -> Iterator[Tuple[int, Any]]:
    """Yield (line_number, value) for each non-blank line of a JSON-lines file."""
    decoder = json.JSONDecoder()
    with open_text(path) as f:
        lineno = 0
        while True:
            try:
                line = f.readline()
            except UnicodeDecodeError as e:
                raise DataFormatError(path, lineno + 1, f"not valid UTF-8 ({e})") from None
            if not line:
                return
            lineno += 1
            if not line.strip():
                continue
            try:
                value = decoder.decode(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(path, lineno, f"invalid JSON line: {e.msg} at column {e.colno}") from None
            yield lineno, value

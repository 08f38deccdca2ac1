"""Errors raised by the data layer."""
from __future__ import annotations


class DataFormatError(ValueError):
    """A malformed data file; the message names the file and the line.

    Attributes:
        path: the file.
        line: 1-based line number (0 when the problem is not tied to a line).
    """

    def __init__(self, path, line: int, what: str):
        self.path = str(path)
        self.line = int(line)
        self.what = what
        where = f"{self.path}:{self.line}" if self.line > 0 else self.path
        super().__init__(f"{where}: {what}")

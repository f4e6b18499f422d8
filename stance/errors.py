"""One exception type for problems the user can fix, carrying where the problem is."""
from __future__ import annotations

import difflib
from typing import Iterable, Optional


class StanceError(Exception):
    """A problem with the user's input, config or model folder.

    The CLI prints it as one line and exits with ``exit_code``; the location
    fields make every message name the file, line and column involved.
    """

    exit_code = 2

    def __init__(self, message: str, *, path: Optional[str] = None, line: Optional[int] = None,
                 column: Optional[str] = None, hint: Optional[str] = None):
        self.message = message
        self.path = path
        self.line = line
        self.column = column
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = []
        if self.path:
            where.append(str(self.path))
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.column:
            where.append(f"column '{self.column}'")
        text = (", ".join(where) + ": " if where else "") + self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


def _nearest(name: str, choices: Iterable[str]) -> Optional[str]:
    """Nearest choice to ``name``, ignoring case, or None when nothing is close."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    if name.lower() in lowered:
        return lowered[name.lower()]
    match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


def suggestion(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' or '' — for appending to error messages."""
    near = _nearest(name, choices)
    return f"did you mean '{near}'?" if near else ""

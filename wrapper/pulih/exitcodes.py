"""The exit codes every pulih command keeps to (DESIGN.md, command surface)."""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    FAILED = 1  # the run or check failed, or found something
    BAD_INPUT = 2  # the input (register, arguments, files) is not usable
    REFUSED = 3  # refused by the approval gate
    UNUSABLE = 4  # the backup was refused before anything was touched: corrupt, foreign or none found
    UNAVAILABLE = 5  # the service cannot be reached
    INTERRUPTED = 130  # Ctrl-C

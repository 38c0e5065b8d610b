"""pulih: backups, verified restores and their approval record, for a government data center."""

from __future__ import annotations

__version__ = "0.1.0"

from __future__ import annotations

from pulih.cli import main

main()

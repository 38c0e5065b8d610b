"""What every command module of the CLI shares: the consoles, the --json option, and how a
command stops with a message a person can act on."""

from __future__ import annotations

import json
import sys
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from pulih import register as reg
from pulih.exitcodes import Exit

# A table read through a pipe is not cut at 80 columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]
shown = reg.shown


def fail(message: str, code: Exit, *, as_json: bool | None = None, exit_now: bool = False) -> NoReturn:
    """Stop with a message a person can act on (one line), and the documented exit code; under
    --json (the command's, when `as_json` is not given) also one JSON document on stdout."""
    if as_json is None:
        as_json = "--json" in sys.argv[1:]
    if as_json:
        print(json.dumps({"status": "error", "exit_code": int(code), "message": message}))
    err.print(f"[bold red]pulih:[/] {escape(shown(message))}", markup=True, soft_wrap=True)
    if exit_now:
        sys.exit(int(code))
    raise typer.Exit(int(code))

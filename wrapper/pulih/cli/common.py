"""What every command module of the CLI shares: the consoles, the --json option, and how a
command stops with a message a person can act on."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from pulih import jobs
from pulih import register as reg
from pulih.client import ServiceError, call
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


def print_outcome(doc: dict[str, Any], where: str, *, as_json: bool) -> None:
    """A finished run for people: its errors, each failed item with its reason on one line,
    then how it ended and where its report is; under --json the report itself."""
    if as_json:
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    for line in doc.get("errors") or []:
        err.print(f"[red]error:[/] {escape(shown(line))}", markup=True, soft_wrap=True)
    for item in doc.get("items") or []:
        check = item.get("verification") or {}
        why = (
            item.get("error")
            if not item.get("ok")
            else check.get("error")
            if jobs.verification_failed(check)
            else None
        )
        if why:
            name = ":".join(
                str(part) for part in (item.get("asset_id") or item.get("host"), item["item"]) if part
            )
            err.print(
                f"[red]failed:[/] {escape(shown(name))}: {escape(shown(' '.join(str(why).split())))}",
                markup=True,
                soft_wrap=True,
            )
    err.print(f"{doc['kind']} {doc['status']}: {where}", soft_wrap=True)


def call_service(
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    as_json: bool,
    timeout: float = 60,
    raw: bool = False,
    binary: bool = False,
    content: bytes | None = None,
) -> Any:
    """The service's answer (its text with `raw`, its bytes with `binary` too), or the command
    stops with its refusal's message and exit code; `content`: bytes to send as the body."""
    try:
        return call(method, path, body, timeout=timeout, raw=raw, binary=binary, content=content)
    except ServiceError as exc:
        fail(exc.message, exc.code, as_json=as_json)

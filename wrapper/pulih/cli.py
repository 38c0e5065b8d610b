"""The `pulih` command.

Exit codes (every command): 0 done, 1 the run or check failed or found something,
2 bad input, 3 refused by the approval gate. `--json` prints one JSON document on
standard output for scripts; messages for people go to standard error.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from pulih import register as reg
from pulih.exitcodes import Exit
from pulih.register_import import import_csv

app = typer.Typer(
    help="Backups, verified restores and the approval record around them, for a government data center.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
register_app = typer.Typer(
    help="The server asset register: check it, show it, import it.", no_args_is_help=True
)
app.add_typer(register_app, name="register")

# A table read through a pipe is not cut at 80 columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False)

InventoryOpt = Annotated[
    Path | None,
    typer.Option(
        "-i",
        "--inventory",
        help="The register file, or the inventory folder holding *.asset_register.yml "
        "(default: $PULIH_INVENTORY).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]
TodayOpt = Annotated[
    str | None,
    typer.Option(
        "--today",
        help="Count review ages from this date (YYYY-MM-DD; default: $PULIH_TODAY or today).",
        show_default=False,
    ),
]


def fail(message: str, code: Exit, *, as_json: bool = False) -> NoReturn:
    """Stop with a message a person can act on, and the documented exit code."""
    if as_json:
        print(json.dumps({"status": "error", "exit_code": int(code), "message": message}))
    err.print(f"[bold red]pulih:[/] {message}", markup=True, soft_wrap=True)
    raise typer.Exit(int(code))


def _today(option: str | None) -> dt.date:
    text = option or os.environ.get("PULIH_TODAY")
    if not text:
        return dt.date.today()
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        fail(f"'{text}' is not a date; write it as YYYY-MM-DD", Exit.BAD_INPUT)


def _inventory(option: Path | None) -> Path:
    if option is not None:
        return option
    env = os.environ.get("PULIH_INVENTORY")
    if env:
        return Path(env)
    fail(
        "no inventory given: pass -i INVENTORY (a register file or its folder) or set PULIH_INVENTORY",
        Exit.BAD_INPUT,
    )


def _print_problems(problems: list[reg.Problem]) -> None:
    for problem in problems:
        err.print(f"[red]error:[/] {problem}", markup=True, soft_wrap=True)


@register_app.command("check")
def register_check(
    inventory: InventoryOpt = None,
    today: TodayOpt = None,
    max_age_days: Annotated[int, typer.Option(help="Review age that makes an entry overdue.")] = (
        reg.REVIEW_MAX_AGE_DAYS
    ),
    as_json: JsonOpt = False,
) -> None:
    """Validate the register and apply the SOP's warnings (yearly review).

    Exit 0 clean, 1 findings (entries overdue for review), 2 the register is invalid.
    """
    path = _inventory(inventory)
    result = reg.run_check(path, _today(today), max_age_days)
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        _print_problems(result.problems)
        for finding in result.findings:
            err.print(f"[yellow]finding:[/] {finding}", markup=True, soft_wrap=True)
        if result.register is not None:
            hosts = result.register.hosts()
            skipped = len(result.register.assets) - len(hosts)
            summary = (
                f"{len(result.register.assets)} servers in the register, {len(hosts)} in operation "
                f"(inventory hosts), {skipped} not reachable through the inventory; "
                f"{len(result.findings)} finding(s)"
            )
            err.print(summary, soft_wrap=True)
        else:
            err.print(
                f"{len(result.problems)} error(s): the register cannot be used until they are fixed",
                soft_wrap=True,
            )
    code = {"clean": Exit.OK, "findings": Exit.FAILED, "invalid": Exit.BAD_INPUT}[result.status]
    raise typer.Exit(int(code))


@register_app.command("show")
def register_show(inventory: InventoryOpt = None, today: TodayOpt = None, as_json: JsonOpt = False) -> None:
    """List the servers of the register: what Ansible will see and what it will not."""
    day = _today(today)
    try:
        register = reg.load_inventory(_inventory(inventory), day)
    except reg.RegisterError as exc:
        if as_json:
            print(json.dumps({"status": "invalid", "errors": [p.as_dict() for p in exc.problems]}, indent=2))
        _print_problems(exc.problems)
        raise typer.Exit(int(Exit.BAD_INPUT)) from None
    if as_json:
        assets = []
        for asset in register.assets:
            entry = asset.as_dict()
            entry["in_inventory"] = asset.in_operation
            entry["groups"] = asset.groups() if asset.in_operation else []
            entry["review_overdue"] = asset.review_overdue(day)
            assets.append(entry)
        print(
            json.dumps(
                {"status": "ok", "office": register.office, "files": list(register.files), "assets": assets},
                indent=2,
            )
        )
        return
    table = Table(title=register.office or "Server asset register", show_lines=False)
    for column in ("asset id", "host", "address", "SKPD", "env", "status", "data", "last reviewed"):
        table.add_column(column)
    for asset in register.assets:
        items = ", ".join(f"{i.name} ({i.engine})" for i in asset.data) or "-"
        if asset.backup_repository:
            items = f"repository {asset.backup_repository}" + ("" if items == "-" else f"; {items}")
        reviewed = asset.last_reviewed.isoformat() + (
            " [yellow](overdue)[/]" if asset.review_overdue(day) else ""
        )
        status = asset.status if asset.in_operation else f"[dim]{asset.status} (not in inventory)[/]"
        table.add_row(
            asset.asset_id,
            asset.hostname,
            f"{asset.address}:{asset.ssh_port}",
            asset.skpd,
            asset.environment,
            status,
            items,
            reviewed,
        )
    out.print(table)


@register_app.command("import")
def register_import(
    source: Annotated[Path, typer.Argument(help="The office's spreadsheet, saved as CSV.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="The register file to write (*.asset_register.yml).")
    ],
    office: Annotated[str | None, typer.Option(help="The office that keeps the register.")] = None,
    force: Annotated[bool, typer.Option(help="Replace the output file if it exists.")] = False,
    today: TodayOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Turn the office's server spreadsheet (CSV) into a register file, validated first.

    Nothing is written when the sheet has an error; errors name the row and the column.
    """
    try:
        register = import_csv(source, output, office=office, today=_today(today), force=force)
    except reg.RegisterError as exc:
        if as_json:
            print(json.dumps({"status": "invalid", "errors": [p.as_dict() for p in exc.problems]}, indent=2))
        _print_problems(exc.problems)
        err.print("nothing was written", soft_wrap=True)
        raise typer.Exit(int(Exit.BAD_INPUT)) from None
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}", Exit.FAILED, as_json=as_json)
    if as_json:
        print(json.dumps({"status": "ok", "output": str(output), "assets": len(register.assets)}))
    else:
        err.print(
            f"wrote {output}: {len(register.assets)} servers, {len(register.hosts())} in operation",
            soft_wrap=True,
        )


def main() -> None:
    """Entry point: no traceback for a person, ever; PULIH_DEBUG=1 shows one."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("pulih: interrupted", soft_wrap=True)
        sys.exit(int(Exit.INTERRUPTED))
    except Exception as exc:
        if os.environ.get("PULIH_DEBUG"):
            raise
        err.print(
            f"pulih: unexpected error: {type(exc).__name__}: {exc} "
            "(run again with PULIH_DEBUG=1 for details, and report it)",
            soft_wrap=True,
        )
        sys.exit(int(Exit.FAILED))

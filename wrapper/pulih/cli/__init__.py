"""The `pulih` command.

Exit codes (every command): 0 done, 1 the run or check failed or found something,
2 bad input, 3 refused by the approval gate, 4 a backup refused, 5 the service cannot be
reached, 130 interrupted. `--json` prints one JSON document on
standard output for scripts; messages for people go to standard error.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from typer._click.exceptions import UsageError  # typer vendors click; its usage errors are these

from pulih import register as reg
from pulih import report as reports
from pulih.cli import record as record_commands
from pulih.cli import service as service_commands
from pulih.cli.common import JsonOpt, err, fail, out
from pulih.cli.delegation import delegation_app
from pulih.exitcodes import Exit
from pulih.register_import import import_csv
from pulih.runner import ContentError

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
service_commands.register(app)  # serve, whoami, admin, jobs
record_commands.register(app)  # request, restore, backups, runs, report, audit
app.add_typer(delegation_app, name="delegation")


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
TodayOpt = Annotated[
    str | None,
    typer.Option(
        "--today",
        help="Count review ages from this date (YYYY-MM-DD; default: $PULIH_TODAY or today).",
        show_default=False,
    ),
]


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
    max_age_days: Annotated[int, typer.Option(min=1, help="Review age that makes an entry overdue.")] = (
        reg.REVIEW_MAX_AGE_DAYS
    ),
    as_json: JsonOpt = False,
) -> None:
    """Validate the register and apply the SOP's warnings (yearly review).

    Exit 0 clean, 1 findings (entries overdue for review), 2 the register is invalid.
    """
    path = _inventory(inventory)
    result = reg.run_check(path, _today(today), max_age_days)
    report = reports.RunReport(kind="register_check", command=["pulih", *sys.argv[1:]], inventory=str(path))
    report.findings = [f.as_dict() for f in result.findings]
    report.errors = [str(p) for p in result.problems]
    code = {"clean": Exit.OK, "findings": Exit.FAILED, "invalid": Exit.BAD_INPUT}[result.status]
    report.finish({"clean": "succeeded", "findings": "failed", "invalid": "error"}[result.status], int(code))
    report.write()
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


LimitOpt = Annotated[
    str | None, typer.Option("--limit", "-l", help="Ansible host pattern: hosts or groups (skpd_dinkes).")
]
ItemOpt = Annotated[list[str] | None, typer.Option("--item", help="Only this data item (repeatable).")]


@app.command("backup")
def backup(
    limit: LimitOpt = None,
    item: ItemOpt = None,
    check: Annotated[
        bool, typer.Option("--check", help="Show what would be backed up and pruned; change nothing.")
    ] = False,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Test-restore each new backup.")
    ] = True,
    age_recipient: Annotated[
        list[str] | None, typer.Option("--age-recipient", help="Encrypt to this age public key (repeatable).")
    ] = None,
    inventory: record_commands.NoInventory = None,
    as_json: JsonOpt = False,
) -> None:
    """Back up registered servers' data items into the repository host, and verify them.

    A job of the service, on its register, followed here (Ctrl-C cancels it).

    Exit 0 all backed up (and verified), 1 something failed, 2 bad input, 3 a server is busy
    with another job, 5 the service cannot be reached, 130 interrupted.
    """
    record_commands.refuse_inventory(inventory, as_json)
    body = {
        "kind": "backup",
        "limit": limit,
        "items": item or [],
        "verify": verify,
        "check": check,
        "age_recipients": age_recipient or [],
    }
    record_commands.start_and_follow("/jobs", body, as_json)


@app.command("verify")
def verify_command(
    limit: LimitOpt = None,
    item: ItemOpt = None,
    backup_id: Annotated[
        list[str] | None, typer.Option("--backup", help="Verify this backup id (repeatable).")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Compare the checksums only; restore nothing (status 'skipped').")
    ] = False,
    inventory: record_commands.NoInventory = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify backups by a test restore: the newest of each item, or the ones named.

    A job of the service (an encrypted backup is opened with the service's age identity).
    """
    record_commands.refuse_inventory(inventory, as_json)
    body = {"kind": "verify", "limit": limit, "items": item or [], "backups": backup_id or [], "check": check}
    record_commands.start_and_follow("/jobs", body, as_json)


def main() -> None:
    """Entry point: no traceback for a person, ever; PULIH_DEBUG=1 shows one. Bad options
    and arguments are one line and exit 2, and under --json also one JSON document."""
    as_json = "--json" in sys.argv[1:]
    try:
        code = app(standalone_mode=False)
    except ContentError as exc:
        fail(str(exc), Exit.BAD_INPUT, as_json=as_json, exit_now=True)
    except UsageError as exc:
        option = f"{exc.ctx.command_path}: " if exc.ctx is not None else ""
        fail(option + " ".join(exc.format_message().split()), Exit.BAD_INPUT, as_json=as_json, exit_now=True)
    except (KeyboardInterrupt, typer.Abort):
        err.print("pulih: interrupted", soft_wrap=True)
        sys.exit(int(Exit.INTERRUPTED))
    except Exception as exc:
        if os.environ.get("PULIH_DEBUG"):
            raise
        fail(
            f"unexpected error: {type(exc).__name__}: {exc} "
            "(run again with PULIH_DEBUG=1 for details, and report it)",
            Exit.FAILED,
            as_json=as_json,
            exit_now=True,
        )
    sys.exit(int(code or 0))

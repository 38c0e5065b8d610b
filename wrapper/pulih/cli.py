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
from pulih import report as reports
from pulih.exitcodes import Exit
from pulih.register_import import import_csv
from pulih.runner import RunOutcome, run_playbook

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
backups_app = typer.Typer(help="The backups in the repository.", no_args_is_help=True)
app.add_typer(backups_app, name="backups")
runs_app = typer.Typer(help="Runs and their reports.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
report_app = typer.Typer(help="Show a run's report.", no_args_is_help=True)
app.add_typer(report_app, name="report")

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


LimitOpt = Annotated[
    str | None, typer.Option("--limit", "-l", help="Ansible host pattern: hosts or groups (skpd_dinkes).")
]
ItemOpt = Annotated[list[str] | None, typer.Option("--item", help="Only this data item (repeatable).")]


def _job(
    kind: str,
    playbook: str,
    *,
    inventory: Path | None,
    limit: str | None,
    items: list[str] | None,
    extravars: dict[str, object],
    check: bool,
    as_json: bool,
) -> None:
    """Run one playbook as a pulih job: validate, run with progress, report, exit."""
    report = reports.RunReport(kind=kind, command=["pulih", *sys.argv[1:]], check_mode=check, limit=limit)
    path = _inventory(inventory)
    report.inventory = str(path)
    today = _today(None)

    def finish(status: str, code: Exit, message: str | None = None) -> NoReturn:
        if message:
            report.errors.append(message)
        report.finish(status, int(code))
        written = report.write()
        if as_json:
            print(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
        for line in report.errors:
            err.print(f"[red]error:[/] {line}", markup=True, soft_wrap=True)
        err.print(f"{kind} {report.status}: report {written} (and report.html)", soft_wrap=True)
        raise typer.Exit(int(code))

    try:
        register = reg.load_inventory(path, today)
    except reg.RegisterError as exc:
        finish("error", Exit.BAD_INPUT, "the register is invalid: " + "; ".join(str(p) for p in exc.problems))
    known = {i.name for a in register.hosts() for i in a.data}
    unknown = sorted(set(items or []) - known)
    if unknown:
        finish(
            "error",
            Exit.BAD_INPUT,
            f"no server in operation holds data item(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known)) or 'none'})",
        )

    with err.status(f"{kind}: starting", spinner="dots") as status:

        def progress(what: str, text: str) -> None:
            if what == "task":
                status.update(f"{kind}: {text}")
            else:
                err.print(f"  {text}", soft_wrap=True)

        outcome = run_playbook(
            playbook,
            inventory=path,
            run_dir=report.run_dir / "runner",
            limit=limit,
            extravars=extravars,
            check=check,
            progress=progress,
        )
    report.artifacts_dir = outcome.artifacts_dir
    _fill_report(report, outcome, register, today)
    if outcome.status == "interrupted":
        finish(
            "interrupted",
            Exit.INTERRUPTED,
            "interrupted (Ctrl-C): whatever was being written is not listed and is removed by a later run",
        )
    if not outcome.hosts:
        finish("error", Exit.BAD_INPUT, f"no registered server in operation matches --limit {limit!r}")
    failed = (
        outcome.status != "succeeded"
        or any(not i["ok"] for i in report.items)
        or any(i.get("verification") and not i["verification"]["ok"] for i in report.items)
    )
    if failed:
        finish("failed", Exit.FAILED)
    finish("succeeded", Exit.OK)


def _fill_report(
    report: reports.RunReport, outcome: RunOutcome, register: reg.Register, today: dt.date
) -> None:
    by_host = {a.hostname: a for a in register.assets}
    verifications: dict[str, dict[str, object]] = {}
    for results in outcome.facts("pulih_verify_results").values():
        for record in results:
            verifications[record["backup_id"]] = record
    for name, host in sorted(outcome.hosts.items()):
        asset = by_host.get(name)
        report.hosts.append(
            {
                "host": name,
                "asset_id": asset.asset_id if asset else None,
                "status": host.status,
                "review_overdue": bool(asset and asset.review_overdue(today)),
                "errors": host.errors[-5:],
            }
        )
        if asset and asset.review_overdue(today):
            report.findings += [f.as_dict() for f in reg.check(reg.Register((), (asset,)), today)]
        backup_results = host.facts.get("pulih_backup_results")
        if backup_results is not None:
            for result in backup_results:
                report.items.append(
                    {
                        "host": name,
                        "asset_id": asset.asset_id if asset else None,
                        "item": result["item"],
                        "engine": result.get("engine"),
                        "ok": bool(result["ok"]),
                        "backup_id": result.get("backup_id"),
                        "bytes": result.get("bytes"),
                        "seconds": result.get("seconds"),
                        "error": result.get("error"),
                        "pruned": result.get("pruned", []),
                        "verification": verifications.pop(result.get("backup_id") or "", None),
                    }
                )
        for result in host.facts.get("pulih_verify_results", []):
            if result["backup_id"] in verifications:  # verify runs: one line per verified backup
                verifications.pop(result["backup_id"])
                report.items.append(
                    {
                        "host": name,
                        "asset_id": asset.asset_id if asset else None,
                        "item": result["item"],
                        "engine": None,
                        "ok": bool(result["ok"]),
                        "backup_id": result["backup_id"],
                        "bytes": None,
                        "seconds": result.get("seconds"),
                        "error": result.get("error"),
                        "pruned": [],
                        "verification": result,
                    }
                )
        if host.status != "ok" and backup_results is None and "pulih_verify_results" not in host.facts:
            report.errors.append(f"{name}: {host.status}: " + ("; ".join(host.errors[-2:]) or "no detail"))


@app.command("backup")
def backup(
    inventory: InventoryOpt = None,
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
    as_json: JsonOpt = False,
) -> None:
    """Back up the data items of registered servers into the repository host, then verify them.

    Exit 0 all backed up (and verified), 1 something failed, 2 bad input, 130 interrupted.
    """
    extravars: dict[str, object] = {"pulih_backup_verify": verify}
    if item:
        extravars["pulih_backup_items"] = item
    if age_recipient:
        extravars["pulih_backup_age_recipients"] = age_recipient
    _job(
        "backup",
        "backup.yml",
        inventory=inventory,
        limit=limit,
        items=item,
        extravars=extravars,
        check=check,
        as_json=as_json,
    )


@app.command("verify")
def verify_command(
    inventory: InventoryOpt = None,
    limit: LimitOpt = None,
    item: ItemOpt = None,
    backup_id: Annotated[
        list[str] | None, typer.Option("--backup", help="Verify this backup id (repeatable).")
    ] = None,
    identity: Annotated[
        Path | None, typer.Option("--identity", help="age private key file, for encrypted backups.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify backups by a test restore: the newest of each item, or the ones named."""
    extravars: dict[str, object] = {}
    if item:
        extravars["pulih_verify_items"] = item
    if backup_id:
        extravars["pulih_verify_backup_ids"] = backup_id
    if identity is not None:
        if not identity.is_file():
            fail(f"--identity {identity}: no such file", Exit.BAD_INPUT, as_json=as_json)
        extravars["pulih_verify_age_identity_file"] = str(identity.resolve())
    _job(
        "verify",
        "verify.yml",
        inventory=inventory,
        limit=limit,
        items=item,
        extravars=extravars,
        check=False,
        as_json=as_json,
    )


@backups_app.command("list")
def backups_list(
    inventory: InventoryOpt = None,
    asset: Annotated[str | None, typer.Option("--asset", help="Only this asset id.")] = None,
    item: Annotated[str | None, typer.Option("--item", help="Only this data item.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List published backups, with size and last verification (read on the repository host)."""
    path = _inventory(inventory)
    try:
        reg.load_inventory(path, _today(None))
    except reg.RegisterError as exc:
        fail(
            "the register is invalid: " + "; ".join(str(p) for p in exc.problems),
            Exit.BAD_INPUT,
            as_json=as_json,
        )
    extravars = {k: v for k, v in {"pulih_list_asset": asset, "pulih_list_item": item}.items() if v}
    run_dir = reports.state_dir() / "runs" / reports.new_run_id("list") / "runner"
    outcome = run_playbook("backups_list.yml", inventory=path, run_dir=run_dir, extravars=extravars)
    if outcome.status != "succeeded":
        errors = "; ".join(e for h in outcome.hosts.values() for e in h.errors) or outcome.status
        fail(f"cannot read the repository: {errors}", Exit.FAILED, as_json=as_json)
    backups = outcome.registered.get("backups", [])
    if as_json:
        print(json.dumps({"status": "ok", "backups": backups}, indent=2, ensure_ascii=False))
        return
    table = Table(title="Backups")
    for column in ("asset", "item", "backup id", "kind", "bytes", "verified"):
        table.add_column(column)
    for entry in backups:
        manifest = entry.get("manifest") or {}
        size = sum(a.get("size", 0) for a in manifest.get("artifacts", []))
        table.add_row(
            entry["asset_id"],
            entry["item"],
            entry["backup_id"],
            manifest.get("kind", "?"),
            str(size),
            "yes" if entry["verified"] else "[yellow]no[/]",
        )
    out.print(table)


@runs_app.command("list")
def runs_list(as_json: JsonOpt = False) -> None:
    """Runs with a report, oldest first."""
    runs = reports.list_runs()
    if as_json:
        print(
            json.dumps(
                [
                    {k: r.get(k) for k in ("run_id", "kind", "status", "exit_code", "started_at")}
                    for r in runs
                ],
                indent=2,
            )
        )
        return
    table = Table(title="Runs")
    for column in ("run", "kind", "status", "started (UTC)", "operator"):
        table.add_column(column)
    for run in runs:
        table.add_row(run["run_id"], run["kind"], run["status"], run["started_at"], run.get("operator", ""))
    out.print(table)


@report_app.command("show")
def report_show(
    run_id: Annotated[str, typer.Argument(help="The run's id (pulih runs list).")],
    fmt: Annotated[str, typer.Option("--format", help="json or html")] = "json",
) -> None:
    """Print a run's report."""
    if fmt not in ("json", "html"):
        fail("--format is json or html", Exit.BAD_INPUT)
    try:
        doc = reports.load(run_id)
    except (OSError, ValueError):
        fail(f"no report for run {run_id!r} in {reports.state_dir() / 'runs'}", Exit.BAD_INPUT)
    print(json.dumps(doc, indent=2, ensure_ascii=False) if fmt == "json" else reports.render_html(doc))


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

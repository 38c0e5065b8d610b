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
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.table import Table
from sqlalchemy import exc as sa_exc
from typer._click.exceptions import UsageError  # typer vendors click; its usage errors are these

from pulih import forms, restoring
from pulih import jobs as job_runs  # not `jobs`: pulih.cli.jobs (the commands) would shadow it
from pulih import register as reg
from pulih import report as reports
from pulih.cli import service as service_commands
from pulih.cli.common import JsonOpt, err, fail, out, print_outcome
from pulih.exitcodes import Exit
from pulih.register_import import import_csv
from pulih.requests import BadRequestInput, Config, Refused, Requests, current_actor, load_config
from pulih.runner import ContentError, RunOutcome, playbook_path, run_playbook
from pulih.store import Store

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
request_app = typer.Typer(help="Requests, step by step as the SOPs run them.", no_args_is_help=True)
app.add_typer(request_app, name="request")
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
service_commands.register(app)  # serve, whoami, admin


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


def _on_record(report: reports.RunReport, path: Path) -> None:
    """Put a finished run into the store and the audit log; a run never fails for it."""
    try:
        config = load_config()
        url = os.environ.get("PULIH_STORE") or config.store
        store = Store(url) if url else Store.at_path(reports.state_dir() / "pulih.db")
        report.record_on(store, path, current_actor(config))
    except Exception as exc:  # the report itself is written; say why the record is not
        err.print(
            f"[yellow]warning:[/] run {report.run_id} not put on the record: {exc}",
            markup=True,
            soft_wrap=True,
        )


reports.RECORDERS.append(_on_record)  # every report of every command goes on the record


RUN_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[a-z_]+-[0-9a-f]{4}$")


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


def _finish_run(
    report: reports.RunReport, status: str, code: Exit, message: str | None, *, as_json: bool
) -> NoReturn:
    """End a run: its report written (JSON, HTML, the record), errors shown, the exit code."""
    if message:
        report.errors.append(message)
    report.finish(status, int(code))
    written = report.write()
    print_outcome(report.as_dict(), f"report {written} (and report.html)", as_json=as_json)
    raise typer.Exit(int(code))


@contextmanager
def _progress(kind: str) -> Iterator[Callable[[str, str], None]]:
    """A spinner naming the current task, and a line per stored stream or unreachable host."""
    with err.status(f"{kind}: starting", spinner="dots") as status:

        def progress(what: str, text: str) -> None:
            if what == "task":
                status.update(f"{kind}: {text}")
            else:
                err.print(f"  {text}", soft_wrap=True)

        yield progress


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
    with _progress(kind) as progress:
        ending = job_runs.run_job(
            report,
            playbook,
            inventory=path,
            limit=limit,
            items=items,
            extravars=extravars,
            check=check,
            today=_today(None),
            progress=progress,
        )
    _finish_run(report, ending.status, ending.code, ending.message, as_json=as_json)


def _why(outcome: RunOutcome) -> str:
    """What went wrong in a run, from its hosts' last errors, else its status."""
    return (
        "; ".join(e for h in outcome.hosts.values() for e in h.errors[-2:])
        or outcome.message
        or outcome.status
    )


def _run_with_progress(
    kind: str,
    playbook: str,
    *,
    inventory: Path,
    run_dir: Path,
    limit: str | None,
    extravars: dict[str, object],
    check: bool = False,
) -> RunOutcome:
    """Run a playbook with a spinner naming the current task and a line per stored stream."""
    with _progress(kind) as progress:
        return run_playbook(
            playbook,
            inventory=inventory,
            run_dir=run_dir,
            limit=limit,
            extravars=extravars,
            check=check,
            progress=progress,
        )


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
    check: Annotated[
        bool, typer.Option("--check", help="Compare the checksums only; restore nothing (status 'skipped').")
    ] = False,
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
        check=check,
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
        fail(f"cannot read the repository: {_why(outcome)}", Exit.FAILED, as_json=as_json)
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
    lang: Annotated[str, typer.Option("--lang", help="en or id (html)")] = "en",
    as_json: JsonOpt = False,
) -> None:
    """Print a run's report (JSON, the default and with --json, or HTML)."""
    if fmt not in ("json", "html") or lang not in ("en", "id"):
        fail("--format is json or html, --lang is en or id", Exit.BAD_INPUT)
    if not RUN_ID.match(run_id):  # an id, never a path
        fail(
            f"RUN_ID: {run_id!r} is not a run id (like 20261121T020000Z-backup-1a2b; see pulih runs list)",
            Exit.BAD_INPUT,
        )
    try:
        doc = reports.load(run_id)
    except (OSError, ValueError):
        fail(f"no report for run {run_id!r} in {reports.state_dir() / 'runs'}", Exit.BAD_INPUT)
    print(json.dumps(doc, indent=2, ensure_ascii=False) if fmt == "json" else reports.render_html(doc, lang))


# --------------------------------------------------------------------------- the record


def _config() -> Config:
    try:
        return load_config()
    except BadRequestInput as exc:
        fail(str(exc), Exit.BAD_INPUT)


def _store(config: Config) -> Store:
    url = os.environ.get("PULIH_STORE") or config.store
    try:
        return Store(url) if url else Store.at_path(reports.state_dir() / "pulih.db")
    except RuntimeError as exc:
        fail(str(exc), Exit.BAD_INPUT)
    except sa_exc.ArgumentError:
        where = "PULIH_STORE" if os.environ.get("PULIH_STORE") else "the config's 'store'"
        fail(
            f"{where}: {url!r} is not a database URL (sqlite:////path/pulih.db or "
            "postgresql+psycopg://user@host/db)",
            Exit.BAD_INPUT,
        )
    except sa_exc.OperationalError as exc:
        fail(
            f"cannot open the store {url or reports.state_dir() / 'pulih.db'}: "
            f"{' '.join(str(exc.orig).split()) or exc} (check that it exists, that you may write it, "
            "and that its server answers)",
            Exit.FAILED,
        )
    except Exception as exc:  # a store that cannot be reached
        fail(
            f"cannot open the store {url or reports.state_dir() / 'pulih.db'}: {type(exc).__name__}: {exc}",
            Exit.FAILED,
        )


def _record() -> tuple[Requests, str]:
    config = _config()
    return Requests(_store(config), config), current_actor(config)


def _act(call: object, as_json: bool) -> None:
    """Run one record operation: refusals exit 3, bad input 2, and the request is shown."""
    try:
        record = call()  # type: ignore[operator]
    except Refused as exc:
        fail(f"refused: {exc}", Exit.REFUSED, as_json=as_json)
    except BadRequestInput as exc:
        fail(str(exc), Exit.BAD_INPUT, as_json=as_json)
    if as_json:
        print(json.dumps(record, indent=2, ensure_ascii=False, default=str))
    elif isinstance(record, dict) and "status" in record and "id" in record:
        err.print(f"{record['id']}: {record['status']}", soft_wrap=True)


def _scope(items: list[str], inventory: Path | None) -> list[dict[str, str]]:
    """ASSET_ID:ITEM arguments, checked against the register."""
    register = _load_register(inventory)
    known = {(a.asset_id, i.name) for a in register.hosts() for i in a.data}
    scope = []
    for text in items:
        asset_id, _, item = text.partition(":")
        if (asset_id, item) not in known:
            fail(
                f"{text}: no data item '{item}' on a server in operation with asset id '{asset_id}' "
                "(write ASSET_ID:ITEM as in the register)",
                Exit.BAD_INPUT,
            )
        scope.append({"asset_id": asset_id, "item": item})
    return scope


def _target(text: str, inventory: Path | None) -> dict[str, str]:
    if text in ("in-place", "in_place"):
        return {"kind": "in_place"}
    kind, _, rest = text.partition(":")
    host, _, name = rest.partition(":")
    if kind != "alternate" or not host:
        fail(
            f"--target {text!r}: write in-place, alternate:HOST or alternate:HOST:DATABASE_OR_PATH",
            Exit.BAD_INPUT,
        )
    if host not in {a.hostname for a in _load_register(inventory).hosts()}:
        fail(f"--target {text!r}: {host} is not a registered server in operation", Exit.BAD_INPUT)
    return {"kind": "alternate", "host": host, **({"name": name} if name else {})}


def _load_register(inventory: Path | None) -> reg.Register:
    try:
        return reg.load_inventory(_inventory(inventory), _today(None))
    except reg.RegisterError as exc:
        fail("the register is invalid: " + "; ".join(str(p) for p in exc.problems), Exit.BAD_INPUT)


RequestId = Annotated[str, typer.Argument(help="The request's id (pulih request list).")]
NoteOpt = Annotated[str, typer.Option("--note", help="What you want on the record.")]


@request_app.command("new")
def request_new(
    item: Annotated[list[str], typer.Option("--item", help="ASSET_ID:ITEM to restore (repeatable).")],
    skpd: Annotated[str, typer.Option(help="The requesting agency.")],
    contact: Annotated[str, typer.Option(help="How to reach the requester.")],
    reason: Annotated[str, typer.Option(help="disaster, error, accidental_deletion or other.")],
    procedure: Annotated[
        str, typer.Option(help="recovery (SOP A, Form PPD) or backup_restore (SOP B).")
    ] = "recovery",
    reason_text: Annotated[str, typer.Option(help="In your own words (required with 'other').")] = "",
    restore_point: Annotated[str | None, typer.Option(help="Wanted restore point, ISO date or time.")] = None,
    target: Annotated[str, typer.Option(help="in-place, or alternate:HOST[:NAME].")] = "in-place",
    inventory: InventoryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """File a request (step 1 of the SOPs): the data items, the reason, the target."""
    requests, actor = _record()
    scope = _scope(item, inventory)
    where = _target(target, inventory)
    _act(
        lambda: requests.new(
            actor,
            procedure=procedure,
            skpd=skpd,
            contact=contact,
            scope=scope,
            reason=reason,
            reason_text=reason_text,
            restore_point=restore_point,
            target=where,
        ),
        as_json,
    )


@request_app.command("receive")
def request_receive(request_id: RequestId, note: NoteOpt = "", as_json: JsonOpt = False) -> None:
    """Record that the request was received (sub-coordinator / Aptika)."""
    requests, actor = _record()
    _act(lambda: requests.receive(actor, request_id, note), as_json)


@request_app.command("approve")
def request_approve(
    request_id: RequestId,
    valid_hours: Annotated[
        int | None,
        typer.Option(
            min=1, max=720, help="How long the approval holds, 1 to 720 hours (default from config)."
        ),
    ] = None,
    note: NoteOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Approve a received request, for a limited time; never by its requester."""
    requests, actor = _record()
    _act(lambda: requests.approve(actor, request_id, valid_hours=valid_hours, note=note), as_json)


@request_app.command("reject")
def request_reject(
    request_id: RequestId,
    reason: Annotated[str, typer.Option(help="Why: the requester is told.")],
    as_json: JsonOpt = False,
) -> None:
    """Reject a received request, with the reason the requester will see."""
    requests, actor = _record()
    _act(lambda: requests.reject(actor, request_id, reason), as_json)


@request_app.command("assess")
def request_assess(
    request_id: RequestId,
    damage: Annotated[str, typer.Option(help="none, disaster, error, accidental_deletion or other.")],
    exists: Annotated[bool, typer.Option("--exists/--missing", help="Does the data still exist?")] = True,
    note: NoteOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Form PD: does the data still exist, and what damaged it."""
    requests, actor = _record()
    _act(lambda: requests.assess(actor, request_id, data_exists=exists, damage=damage, note=note), as_json)


@request_app.command("check-backups")
def request_check_backups(
    request_id: RequestId,
    inventory: InventoryOpt = None,
    query: Annotated[
        bool,
        typer.Option("--query/--no-query", help="Read the repository (default) or only record your note."),
    ] = True,
    note: NoteOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Record which backups exist for the request's data items, verified or not."""
    requests, actor = _record()
    try:
        record = requests.get(request_id)
    except Refused as exc:
        fail(f"refused: {exc}", Exit.REFUSED, as_json=as_json)
    found: list[dict[str, object]] = []
    if query:
        path = _inventory(inventory)
        run_dir = reports.state_dir() / "runs" / reports.new_run_id("list") / "runner"
        outcome = run_playbook("backups_list.yml", inventory=path, run_dir=run_dir)
        if outcome.status != "succeeded":
            fail(f"cannot read the repository: {_why(outcome)}", Exit.FAILED, as_json=as_json)
        wanted = {(s["asset_id"], s["item"]) for s in record["scope"]}
        found = [
            {
                "asset_id": b["asset_id"],
                "item": b["item"],
                "backup_id": b["backup_id"],
                "verified": b["verified"],
                "kind": (b.get("manifest") or {}).get("kind"),
            }
            for b in outcome.registered.get("backups", [])
            if (b["asset_id"], b["item"]) in wanted
        ]
    _act(lambda: requests.check_backups(actor, request_id, found, note), as_json)


@request_app.command("plan")
def request_plan(
    request_id: RequestId,
    backup: Annotated[list[str], typer.Option("--backup", help="ASSET_ID:ITEM=BACKUP_ID (repeatable).")],
    window: Annotated[str, typer.Option(help="When the restore will run.")] = "",
    unverified: Annotated[
        str | None,
        typer.Option(
            "--unverified",
            metavar="REASON",
            help="Plan a backup whose verification did not succeed; the reason goes on the record.",
        ),
    ] = None,
    inventory: InventoryOpt = None,
    query: Annotated[
        bool,
        typer.Option(
            "--query/--no-query",
            help="Check and protect the backups in the repository (default), or only record the plan "
            "(then the backups are not protected from retention; needs --unverified REASON).",
        ),
    ] = True,
    note: NoteOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Plan the restore: which backup for which item, and when.

    Each named backup must be in the repository and verified (exit 4 otherwise, unless
    --unverified REASON); it is then protected from retention until the request closes.
    """
    requests, actor = _record()
    plan = {}
    for text in backup:
        key, _, value = text.partition("=")
        asset_id, _, item = key.partition(":")
        if not (value and asset_id and item):
            fail(f"--backup {text!r}: write ASSET_ID:ITEM=BACKUP_ID", Exit.BAD_INPUT, as_json=as_json)
        plan[key] = value
    if unverified is not None and not unverified.strip():
        fail("--unverified needs a reason, which goes on the record", Exit.BAD_INPUT, as_json=as_json)
    if not query and unverified is None:
        fail(
            "--no-query plans without asking the repository whether the backups exist and verified: "
            "say why with --unverified REASON",
            Exit.BAD_INPUT,
            as_json=as_json,
        )
    if query:
        _protect(request_id, plan, inventory, allow_unverified=unverified is not None, as_json=as_json)
    if unverified is not None:
        how = "planned without asking the repository" if not query else "planned although not verified"
        note = f"{note} [{how}: {unverified.strip()}]".strip()
    _act(
        lambda: requests.plan(actor, request_id, backups=plan, window=window, note=note, protected=query),
        as_json,
    )


def _protect(
    request_id: str,
    plan: dict[str, str],
    inventory: Path | None,
    *,
    allow_unverified: bool = False,
    lift: bool = False,
    as_json: bool,
    refuse: bool = True,
) -> str | None:
    """Check the planned backups in the repository and protect them from retention (or lift
    the request's protection); exit 4 when one is missing or not verified, 1 when the
    repository cannot be reached (with `refuse=False`, return that problem instead)."""
    path = _inventory(inventory)
    named = []
    for key, backup_id in plan.items():
        asset_id, _, item = key.partition(":")
        named.append({"asset_id": asset_id, "item": item, "backup_id": backup_id})
    run_dir = reports.state_dir() / "runs" / reports.new_run_id("protect") / "runner"
    outcome = run_playbook(
        "protect.yml",
        inventory=path,
        run_dir=run_dir,
        extravars={
            "pulih_protect_request_id": request_id,
            "pulih_protect_backups": named,
            "pulih_protect_allow_unverified": allow_unverified,
            "pulih_protect_state": "absent" if lift else "present",
        },
    )
    results = outcome.registered.get("protect", [])
    refused = [r for r in results if r.get("failed") and (r.get("missing") or r.get("unverified"))]
    if refused:
        fail(f"refused: {refused[0].get('msg')}", Exit.UNUSABLE, as_json=as_json)
    if outcome.status != "succeeded" or not results:
        problem = (
            f"cannot reach the repository to change the protection of the planned backups: {_why(outcome)}"
        )
        if not refuse:
            return problem
        fail(problem, Exit.FAILED, as_json=as_json)
    return None


@request_app.command("confirm")
def request_confirm(
    request_id: RequestId,
    note: NoteOpt = "",
    not_restored: Annotated[
        bool, typer.Option("--not-restored", help="The data is not back: say what is missing in --note.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """The requester confirms the result, or answers that it is not restored (with a note)."""
    requests, actor = _record()
    if not_restored:
        _act(lambda: requests.not_restored(actor, request_id, note), as_json)
        return
    _act(lambda: requests.confirm(actor, request_id, note), as_json)


@request_app.command("close")
def request_close(
    request_id: RequestId,
    inventory: InventoryOpt = None,
    note: NoteOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Close a confirmed request; its planned backups are no longer protected from retention."""
    requests, actor = _record()

    def close_and_lift() -> dict[str, object]:
        record = requests.close(actor, request_id, note)
        if (record.get("plan") or {}).get("protected"):
            problem = _protect(request_id, {}, inventory, lift=True, as_json=as_json, refuse=False)
            if problem:  # the request is closed all the same; its backups stay protected, the safe side
                err.print(f"[yellow]warning:[/] {problem}", markup=True, soft_wrap=True)
        return record

    _act(close_and_lift, as_json)


@request_app.command("show")
def request_show(request_id: RequestId, as_json: JsonOpt = False) -> None:
    """A request with every step: who, in which role, when, standard time beside actual time."""
    requests, _actor = _record()
    try:
        record = requests.get(request_id)
    except Refused as exc:
        fail(f"refused: {exc}", Exit.REFUSED, as_json=as_json)
    if as_json:
        print(json.dumps(record, indent=2, ensure_ascii=False))
        return
    out.print(
        f"[bold]{record['id']}[/] {record['procedure']} — {record['status']}; requested by "
        f"{record['requester']} ({record['skpd']})"
    )
    scope = ", ".join(f"{s['asset_id']}:{s['item']}" for s in record["scope"])
    out.print(f"scope: {scope}; target: {json.dumps(record['target'])}")
    if record["rejected_reason"]:
        out.print(f"[red]rejected:[/] {record['rejected_reason']}")
    elif record["approved_by"]:
        out.print(
            f"approved by {record['approved_by']} at {record['approved_at']}, "
            f"valid until {record['approval_expires_at']}"
        )
    table = Table()
    for column in ("step", "who", "role", "when (UTC)", "standard min", "actual min", "note"):
        table.add_column(column)
    for row, step in zip(record["timing"], record["steps"], strict=True):
        actual = "" if row["actual_minutes"] is None else str(row["actual_minutes"])
        table.add_row(
            row["step"],
            row["actor"],
            row["role"],
            row["at"],
            "" if row["standard_minutes"] is None else str(row["standard_minutes"]),
            f"[red]{actual} (overrun)[/]" if row["overrun"] else actual,
            step["note"],
        )
    out.print(table)


@request_app.command("list")
def request_list(as_json: JsonOpt = False) -> None:
    """Every request and where it stands."""
    requests, _actor = _record()
    rows = requests.all()
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    table = Table(title="Requests")
    for column in ("id", "procedure", "status", "requester", "SKPD", "filed (UTC)"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["id"], row["procedure"], row["status"], row["requester"], row["skpd"], row["created_at"]
        )
    out.print(table)


@request_app.command("form")
def request_form(
    request_id: RequestId,
    form: Annotated[str, typer.Option(help="ppd (the request) or pd (the recovery work).")] = "ppd",
    lang: Annotated[str, typer.Option(help="en or id.")] = "en",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write the HTML here.")] = None,
) -> None:
    """Print Form PPD or Form PD of a request as HTML, in English or Indonesian."""
    requests, _actor = _record()
    if form not in ("ppd", "pd") or lang not in forms.LANGS:
        fail("--form is ppd or pd, --lang is en or id", Exit.BAD_INPUT)
    try:
        record = requests.get(request_id)
    except Refused as exc:
        fail(f"refused: {exc}", Exit.REFUSED)
    html = forms.render(record, form, lang)
    if output is None:
        print(html)
    else:
        from pulih.fsutil import atomic_write_text

        atomic_write_text(output, html)
        err.print(f"wrote {output}", soft_wrap=True)


@app.command("restore")
def restore(
    request: Annotated[str, typer.Option("--request", help="The approved request this restore carries out.")],
    item: Annotated[
        list[str] | None, typer.Option("--item", help="ASSET_ID:ITEM (default: the whole request).")
    ] = None,
    backup: Annotated[
        list[str] | None,
        typer.Option(
            "--backup",
            help="BACKUP_ID, or ASSET_ID:ITEM=BACKUP_ID (repeatable); default: the plan's, else the newest "
            "verified backup at or before the request's restore point.",
        ),
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="in-place or alternate:HOST[:NAME] (default: approved).")
    ] = None,
    attempts: Annotated[
        int | None,
        typer.Option(
            min=1, max=20, help="Attempts before giving up, 1 to 20 (default: restore_attempts, 3)."
        ),
    ] = None,
    check: Annotated[bool, typer.Option("--check", help="Only ask the gate; change nothing.")] = False,
    inventory: InventoryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Restore under an approved request: verified in a stage, the live data saved first, then
    swapped in; retried when an attempt fails. Refused (exit 3) unless the record allows it.

    Exit 0 restored and verified, 1 failed after every attempt, 2 bad input, 3 refused by the
    gate, 4 the backup refused before anything was touched (corrupt, foreign, none found), 130
    interrupted.
    """
    config = _config()
    requests, actor = Requests(_store(config), config), current_actor(config)
    # A check asks the gate and changes nothing: on the record it is a check, never a restore.
    report = reports.RunReport(
        kind="restore_check" if check else "restore",
        command=["pulih", *sys.argv[1:]],
        check_mode=check,
        request_id=request,
    )

    def finish(status: str, code: Exit, message: str | None = None) -> NoReturn:
        _finish_run(report, status, code, message, as_json=as_json)

    try:
        record = requests.get(request)
        scope = _scope(item, inventory) if item else record["scope"]
        where = _target(target, inventory) if target else None
        decision = requests.gate(actor, request, run_scope=scope, target=where)
        report.gate = decision
    except Refused as exc:
        finish("refused", Exit.REFUSED, f"refused: {exc}")
    if check:
        report.items = [{"host": "", "item": f"{s['asset_id']}:{s['item']}", "ok": True} for s in scope]
        if not as_json:
            err.print(f"allowed: {actor} may restore {request} ({len(scope)} item(s))", soft_wrap=True)
        finish("allowed", Exit.OK)

    path = _inventory(inventory)
    report.inventory = str(path)
    try:
        playbook_path("restore.yml")
        register = reg.load_inventory(path, _today(None))
        plan = (record.get("plan") or {}).get("backups") or {}
        run_items = restoring.items_for(scope, register, planned=plan, named=backup or [])
    except ContentError as exc:
        finish("error", Exit.BAD_INPUT, str(exc))
    except reg.RegisterError as exc:
        finish("error", Exit.BAD_INPUT, "the register is invalid: " + "; ".join(str(p) for p in exc.problems))
    except restoring.RestoreInputError as exc:
        finish("error", Exit.BAD_INPUT, str(exc))

    total = attempts or config.restore_attempts
    # On disk and on the record before anything is touched: a run killed outright (SIGKILL, power
    # cut) stays visible as 'running' in pulih runs list and the audit log.
    report.write()
    asset_ids = {a.hostname: a.asset_id for a in register.assets}
    for attempt in range(1, total + 1):
        limit, extravars = restoring.attempt_vars(
            run_items,
            request_id=request,
            target=decision["target"],
            restore_point=record.get("restore_point"),
        )
        run_dir = report.run_dir / f"attempt-{attempt}"
        requests.attempt_started(actor, request, attempt=attempt, of=total, run_id=report.run_id)
        started = reports.utcnow()
        outcome = _run_with_progress(
            f"restore (attempt {attempt} of {total})",
            "restore.yml",
            inventory=path,
            run_dir=run_dir,
            limit=limit,
            extravars=extravars,
        )
        report.artifacts_dir = outcome.artifacts_dir
        if outcome.status == "interrupted":
            report.attempts.append(
                {"attempt": attempt, "status": "interrupted", "run_dir": str(run_dir), "items": {}}
            )
            report.items = [restoring.report_item(i) for i in run_items]
            stopped_by = job_runs.signal_name(outcome)
            requests.executed(
                actor, request, outcome="interrupted", note=f"attempt {attempt} of {total}, {stopped_by}"
            )
            finish(
                "interrupted",
                Exit.INTERRUPTED,
                f"interrupted ({stopped_by}): an item not yet swapped in is as it was; run the restore again",
            )
        tried = [i for i in run_items if i.pending]
        restoring.apply_outcome(run_items, outcome)
        report.hosts = [
            {
                "host": h.name,
                "asset_id": asset_ids.get(h.name),
                "status": h.status,
                "review_overdue": False,
                "errors": h.errors[-5:],
            }
            for h in sorted(outcome.hosts.values(), key=lambda h: h.name)
        ]
        report.attempts.append(
            {
                "attempt": attempt,
                "status": "succeeded" if all(i.done for i in tried) else "failed",
                "run_dir": str(run_dir),
                "started_at": started.isoformat().replace("+00:00", "Z"),
                "finished_at": reports.utcnow().isoformat().replace("+00:00", "Z"),
                "items": {i.key: i.history[-1] for i in tried},
            }
        )
        summary = "; ".join(f"{i.key} {i.history[-1]}" for i in tried)
        requests.executed(
            actor,
            request,
            outcome="succeeded" if all(i.done for i in tried) else "failed",
            note=f"attempt {attempt} of {total}, run {report.run_id}: {summary}",
        )
        if not any(i.pending for i in run_items):
            break
        if attempt < total:
            err.print(
                f"attempt {attempt} of {total} failed; trying again in {config.restore_retry_seconds:g}s",
                soft_wrap=True,
            )
            time.sleep(config.restore_retry_seconds)

    report.items = [restoring.report_item(i) for i in run_items]
    report.errors += [f"{i.key}: {i.result['error']}" for i in run_items if i.result and not i.done]
    if all(i.done for i in run_items):
        finish("succeeded", Exit.OK)
    if any(i.refused for i in run_items) and not any(i.pending for i in run_items):
        finish(
            "refused",
            Exit.UNUSABLE,
            "a backup was refused before anything was touched; name another with --backup",
        )
    restored = sum(1 for i in run_items if i.done)
    finish(
        "failed",
        Exit.FAILED,
        f"{restored} of {len(run_items)} item(s) restored after {len(report.attempts)} attempt(s); "
        "each failed item is named below with its cause",
    )


@audit_app.command("verify")
def audit_verify(as_json: JsonOpt = False) -> None:
    """Prove the audit log: every entry unchanged, none deleted, inserted or moved."""
    config = _config()
    store = _store(config)
    problems = store.verify_audit()
    count = len(store.audit_entries())
    report = reports.RunReport(kind="audit", command=["pulih", *sys.argv[1:]])
    report.errors = [str(p) for p in problems]
    report.finish("failed" if problems else "succeeded", int(Exit.FAILED if problems else Exit.OK))
    report.write()
    if as_json:
        print(
            json.dumps(
                {
                    "status": "tampered" if problems else "intact",
                    "entries": count,
                    "problems": [{"seq": p.seq, "message": p.message} for p in problems],
                },
                indent=2,
            )
        )
    for problem in problems:
        err.print(f"[red]tampered:[/] {problem}", markup=True, soft_wrap=True)
    if problems:
        raise typer.Exit(int(Exit.FAILED))
    err.print(f"audit log intact: {count} entries, each chained to the one before", soft_wrap=True)


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

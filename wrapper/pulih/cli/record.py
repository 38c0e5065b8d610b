"""The gated commands, as clients of pulih serve: requests step by step, restores, backups and
verifications, the repository's list, runs and reports, the audit log. Each parses, calls the
service and prints; who the caller is, their roles, the register and the keys are the
service's. The SOP's logic is in pulih.requests and pulih.service, once."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import urlencode

import typer
from rich.markup import escape
from rich.table import Table

from pulih import report as reports
from pulih import signing
from pulih.cli.common import JsonOpt, call_service, err, fail, out, print_outcome, shown
from pulih.cli.jobs import follow_to_end
from pulih.client import ServiceError, call
from pulih.exitcodes import Exit
from pulih.fsutil import atomic_write_bytes, atomic_write_text

request_app = typer.Typer(help="Requests, step by step as the SOPs run them.", no_args_is_help=True)
backups_app = typer.Typer(help="The backups in the repository.", no_args_is_help=True)
runs_app = typer.Typer(help="Runs and their reports.", no_args_is_help=True)
report_app = typer.Typer(help="Show a run's report.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)

# Playbook runs (the repository's list, the protection of planned backups) take a while.
SLOW = 900.0

# A gated command's register is the service's: -i is refused, so nobody believes it counts.
NoInventory = Annotated[
    Path | None,
    typer.Option("-i", "--inventory", hidden=True, help="Refused: the service's register counts."),
]
RequestId = Annotated[str, typer.Argument(help="The request's id (pulih request list).")]
NoteOpt = Annotated[str, typer.Option("--note", help="What you want on the record.")]
ItemOpt = Annotated[list[str] | None, typer.Option("--item", help="Only this data item (repeatable).")]


def refuse_inventory(inventory: Path | None, as_json: bool) -> None:
    if inventory is not None:
        fail(
            "-i/--inventory: a gated command runs on the service's register (the one its config "
            "names), never on one the caller names; -i is for pulih register check|show|import",
            Exit.BAD_INPUT,
            as_json=as_json,
        )


def _shown_request(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(record, indent=2, ensure_ascii=False, default=str))
    else:
        err.print(escape(shown(f"{record['id']}: {record['status']}")), soft_wrap=True)
    for warning in record.get("warnings") or []:
        err.print(f"[yellow]warning:[/] {escape(shown(warning))}", markup=True, soft_wrap=True)


def _step(path: str, body: dict[str, Any], as_json: bool, *, timeout: float = 60) -> None:
    _shown_request(call_service("POST", path, body, as_json=as_json, timeout=timeout), as_json)


def _scope(items: list[str], as_json: bool) -> list[dict[str, str]]:
    scope = []
    for text in items:
        asset_id, _, item = text.partition(":")
        if not asset_id or not item:
            fail(f"--item {text!r}: write ASSET_ID:ITEM as in the register", Exit.BAD_INPUT, as_json=as_json)
        scope.append({"asset_id": asset_id, "item": item})
    return scope


def _target(text: str, as_json: bool) -> dict[str, str]:
    if text in ("in-place", "in_place"):
        return {"kind": "in_place"}
    kind, _, rest = text.partition(":")
    host, _, name = rest.partition(":")
    if kind != "alternate" or not host:
        fail(
            f"--target {text!r}: write in-place, alternate:HOST or alternate:HOST:DATABASE_OR_PATH",
            Exit.BAD_INPUT,
            as_json=as_json,
        )
    return {"kind": "alternate", "host": host, **({"name": name} if name else {})}


@request_app.command("new")
def request_new(
    item: Annotated[
        list[str], typer.Option("--item", help="ASSET_ID:ITEM to restore or back up (repeatable).")
    ],
    skpd: Annotated[str, typer.Option(help="The requesting agency.")],
    contact: Annotated[str, typer.Option(help="How to reach the requester.")],
    reason: Annotated[
        str,
        typer.Option(
            help="A restore's: disaster, error, accidental_deletion or other; a backup's: migration, "
            "maintenance or other."
        ),
    ],
    procedure: Annotated[
        str, typer.Option(help="recovery (SOP A, Form PPD) or backup_restore (SOP B).")
    ] = "recovery",
    kind: Annotated[
        str, typer.Option(help="restore, or backup (SOP B: a one-off backup, e.g. before a migration).")
    ] = "restore",
    reason_text: Annotated[str, typer.Option(help="In your own words (required with 'other').")] = "",
    restore_point: Annotated[str | None, typer.Option(help="Wanted restore point, ISO date or time.")] = None,
    target: Annotated[
        str | None, typer.Option(help="in-place (a restore's default), or alternate:HOST[:NAME].")
    ] = None,
    letter: Annotated[
        Path | None, typer.Option(help="The request letter (surat permohonan): a PDF, PNG or JPEG.")
    ] = None,
    inventory: NoInventory = None,
    as_json: JsonOpt = False,
) -> None:
    """File a request (step 1 of the SOPs): the data items, the reason, the target, the letter."""
    refuse_inventory(inventory, as_json)
    content = _letter_bytes(letter, as_json) if letter else None
    body = {
        "procedure": procedure,
        "kind": kind,
        "skpd": skpd,
        "contact": contact,
        "scope": _scope(item, as_json),
        "reason": reason,
        "reason_text": reason_text,
        "restore_point": restore_point,
        "target": _target(target, as_json) if target else None,
    }
    filed = call_service("POST", "/requests", body, as_json=as_json)
    if letter is not None and content is not None:
        filed = _attach(filed["id"], letter, content, as_json)
    _shown_request(filed, as_json)


def _letter_bytes(path: Path, as_json: bool) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"cannot read the letter {path}: {exc.strerror or exc}", Exit.BAD_INPUT, as_json=as_json)


def _attach(request_id: str, path: Path, content: bytes, as_json: bool) -> dict[str, Any]:
    query = urlencode({"filename": path.name})
    attached: dict[str, Any] = call_service(
        "POST", f"/requests/{request_id}/letter?{query}", as_json=as_json, content=content
    )
    return attached


@request_app.command("attach-letter")
def request_attach_letter(
    request_id: RequestId,
    letter: Annotated[Path, typer.Argument(help="The request letter: a PDF, PNG or JPEG, at most 10 MiB.")],
    as_json: JsonOpt = False,
) -> None:
    """Attach the request's letter (surat permohonan), at filing or at the disposition; its
    SHA-256 goes on the audit chain."""
    _shown_request(_attach(request_id, letter, _letter_bytes(letter, as_json), as_json), as_json)


@request_app.command("letter")
def request_letter(
    request_id: RequestId,
    output: Annotated[Path, typer.Option("-o", "--output", help="Write the letter here.")],
    letter_id: Annotated[
        int | None, typer.Option("--id", help="An earlier letter (default: the newest).")
    ] = None,
) -> None:
    """Save the request's letter, as the service holds it to its hash on the audit chain."""
    query = f"?letter={letter_id}" if letter_id is not None else ""
    content = call_service(
        "GET", f"/requests/{request_id}/letter{query}", as_json=False, raw=True, binary=True
    )
    _write(output, lambda: atomic_write_bytes(output, content))


@request_app.command("backup")
def request_backup(
    request_id: RequestId,
    check: Annotated[bool, typer.Option("--check", help="Only ask the gate; back up nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Carry out a backup request (SOP B): its items that have no backup of it yet are backed
    up and verified, kept out of retention, and recorded as its 'executed' step.

    Exit 0 every item backed up and verified, 1 an item failed (run it again: only what is
    missing is backed up), 3 refused by the gate, 5 the service cannot be reached.
    """
    start_and_follow(f"/requests/{request_id}/backup", {"check": check}, as_json)


@request_app.command("receive")
def request_receive(request_id: RequestId, note: NoteOpt = "", as_json: JsonOpt = False) -> None:
    """Record that the request was received (sub-coordinator / Aptika)."""
    _step(f"/requests/{request_id}/receive", {"note": note}, as_json)


@request_app.command("approve")
def request_approve(
    request_id: RequestId,
    valid_hours: Annotated[
        int | None,
        typer.Option(
            min=1, max=720, help="How long the approval holds, 1 to 720 hours (default: the service's)."
        ),
    ] = None,
    note: NoteOpt = "",
    sign: Annotated[
        bool,
        typer.Option(
            "--sign",
            help="Sign the approval's statement here with ssh-keygen -Y sign (your key; with --key a .pub, "
            "its private half in your ssh-agent).",
        ),
    ] = False,
    key: Annotated[
        Path | None, typer.Option("--key", help="With --sign: the key (default ~/.ssh/id_ed25519.pub).")
    ] = None,
    statement: Annotated[
        Path | None,
        typer.Option(
            "--statement", help="A statement signed elsewhere (pulih request statement), with --signature."
        ),
    ] = None,
    signature: Annotated[
        Path | None, typer.Option("--signature", help="Its ssh-keygen -Y sign -n pulih-approval signature.")
    ] = None,
    outside_window: Annotated[
        bool,
        typer.Option(
            "--outside-window",
            help="Let the restore run in place outside its servers' maintenance windows (the register's).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Approve a received request, for a limited time; never by its requester.

    Signed (--sign, or --statement and --signature made on another machine), the approval
    carries your SSH signature of its statement, which anyone can check offline (README,
    "Signed approvals"); the office's policy may require it.
    """
    body: dict[str, Any] = {"valid_hours": valid_hours, "note": note, "outside_window": outside_window}
    if (statement is None) != (signature is None) or (sign and statement is not None):
        fail(
            "a signed approval is --sign, or --statement FILE with --signature FILE",
            Exit.BAD_INPUT,
            as_json=as_json,
        )
    if sign:
        doc = _statement(request_id, valid_hours, note, as_json, outside_window=outside_window)
        chosen = key or Path.home() / ".ssh" / "id_ed25519.pub"
        try:
            body.update(statement=doc, signature=signing.sign(signing.canonical(doc), chosen))
        except signing.SignatureError as exc:
            fail(str(exc), Exit.BAD_INPUT, as_json=as_json)
    elif statement is not None and signature is not None:
        try:
            body.update(statement=json.loads(statement.read_bytes()), signature=signature.read_text())
        except (OSError, ValueError) as exc:
            fail(f"cannot read the signed statement: {exc}", Exit.BAD_INPUT, as_json=as_json)
    _step(f"/requests/{request_id}/approve", body, as_json)


def _statement(
    request_id: str, valid_hours: int | None, note: str, as_json: bool, *, outside_window: bool = False
) -> dict[str, Any]:
    asked = (
        ("valid_hours", valid_hours),
        ("note", note),
        ("outside_window", "true" if outside_window else ""),
    )
    query = urlencode({k: v for k, v in asked if v})
    found: dict[str, Any] = call_service(
        "GET", f"/requests/{request_id}/statement" + (f"?{query}" if query else ""), as_json=as_json
    )
    return found


@request_app.command("statement")
def request_statement(
    request_id: RequestId,
    valid_hours: Annotated[int | None, typer.Option(min=1, max=720, help="As you will approve it.")] = None,
    note: NoteOpt = "",
    output: Annotated[
        Path | None, typer.Option("--output", help="Write it here (default: standard output).")
    ] = None,
    outside_window: Annotated[
        bool,
        typer.Option(
            "--outside-window",
            help="Let the restore run in place outside its servers' maintenance windows (the register's).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """The statement you sign to approve a request so, as the exact bytes to sign:

    ssh-keygen -Y sign -n pulih-approval -f ~/.ssh/id_ed25519 statement.json
    """
    text = signing.canonical(
        _statement(request_id, valid_hours, note, as_json, outside_window=outside_window)
    )
    if output is None:
        sys.stdout.buffer.write(text)
        return
    atomic_write_text(output, text.decode())
    err.print(f"wrote {output}: sign it, then pulih request approve {request_id} --statement {output} "
              f"--signature {output}.sig", soft_wrap=True)  # fmt: skip


@request_app.command("export-approval")
def request_export_approval(
    request_id: RequestId,
    folder: Annotated[Path, typer.Option("--dir", help="Where to write approval-N.json and its .sig.")],
    as_json: JsonOpt = False,
) -> None:
    """Write each signed approval of a request (its statement's bytes and its signature), to
    check offline with ssh-keygen -Y verify and pulih audit export-signers."""
    record = call_service("GET", f"/requests/{request_id}", as_json=as_json)
    written = []
    for number, approval in enumerate(record.get("approvals") or [], start=1):
        if approval.get("signature"):
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / f"approval-{number}.json", approval["statement"])
            atomic_write_text(folder / f"approval-{number}.json.sig", approval["signature"])
            written.append({"file": str(folder / f"approval-{number}.json"), "approver": approval["approver"],
                            "key": approval["key_fingerprint"]})  # fmt: skip
    if not written:
        fail(f"request {request_id} has no signed approval", Exit.BAD_INPUT, as_json=as_json)
    if as_json:
        print(json.dumps({"status": "ok", "approvals": written}, indent=2))
        return
    for entry in written:
        err.print(
            escape(shown(f"wrote {entry['file']} (+ .sig): {entry['approver']}, key {entry['key']}")),
            soft_wrap=True,
        )


@request_app.command("reject")
def request_reject(
    request_id: RequestId,
    reason: Annotated[str, typer.Option(help="Why: the requester is told.")],
    as_json: JsonOpt = False,
) -> None:
    """Reject a received request, with the reason the requester will see."""
    _step(f"/requests/{request_id}/reject", {"reason": reason}, as_json)


@request_app.command("revoke")
def request_revoke(
    request_id: RequestId,
    reason: Annotated[str, typer.Option(help="Why: the operator and the requester are told.")],
    as_json: JsonOpt = False,
) -> None:
    """Take an approval back: a running restore stops at its next gate, before anything live
    changes, and nothing more is restored until the request is approved again."""
    _step(f"/requests/{request_id}/revoke", {"reason": reason}, as_json)


@request_app.command("assess")
def request_assess(
    request_id: RequestId,
    damage: Annotated[str, typer.Option(help="none, disaster, error, accidental_deletion or other.")],
    exists: Annotated[bool, typer.Option("--exists/--missing", help="Does the data still exist?")] = True,
    note: NoteOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Form PD: does the data still exist, and what damaged it."""
    _step(f"/requests/{request_id}/assess", {"data_exists": exists, "damage": damage, "note": note}, as_json)


@request_app.command("check-backups")
def request_check_backups(
    request_id: RequestId,
    inventory: NoInventory = None,
    query: Annotated[
        bool,
        typer.Option("--query/--no-query", help="Read the repository (default) or only record your note."),
    ] = True,
    note: NoteOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Record which backups exist for the request's data items, verified or not."""
    refuse_inventory(inventory, as_json)
    _step(f"/requests/{request_id}/check-backups", {"query": query, "note": note}, as_json, timeout=SLOW)


@request_app.command("plan")
def request_plan(
    request_id: RequestId,
    backup: Annotated[
        list[str] | None,
        typer.Option("--backup", help="ASSET_ID:ITEM=BACKUP_ID (repeatable; none for a backup request)."),
    ] = None,
    window: Annotated[str, typer.Option(help="When the restore (or the backup) will run.")] = "",
    unverified: Annotated[
        str | None,
        typer.Option(
            "--unverified",
            metavar="REASON",
            help="Plan a backup whose verification did not succeed; the reason goes on the record.",
        ),
    ] = None,
    inventory: NoInventory = None,
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
    """Plan the restore: which backup for which item, and when (a backup request's: when).

    Each named backup must be in the repository and verified (exit 4 otherwise, unless
    --unverified REASON); it is then protected from retention until the request closes.
    """
    refuse_inventory(inventory, as_json)
    plan = {}
    for text in backup or []:
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
    body = {"backups": plan, "window": window, "unverified": unverified, "query": query, "note": note}
    _step(f"/requests/{request_id}/plan", body, as_json, timeout=SLOW)


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
    step = "not-restored" if not_restored else "confirm"
    _step(f"/requests/{request_id}/{step}", {"note": note}, as_json)


@request_app.command("close")
def request_close(
    request_id: RequestId, inventory: NoInventory = None, note: NoteOpt = "", as_json: JsonOpt = False
) -> None:
    """Close a confirmed request; its planned backups are no longer protected from retention."""
    refuse_inventory(inventory, as_json)
    _step(f"/requests/{request_id}/close", {"note": note}, as_json, timeout=SLOW)


@request_app.command("show")
def request_show(request_id: RequestId, as_json: JsonOpt = False) -> None:
    """A request with every step: who, in which role, when, standard time beside actual time."""
    record = call_service("GET", f"/requests/{request_id}", as_json=as_json)
    if as_json:
        print(json.dumps(record, indent=2, ensure_ascii=False))
        return
    out.print(
        f"[bold]{escape(record['id'])}[/] {record['procedure']} {record['kind']} — {record['status']}; "
        f"requested by {escape(record['requester'])} ({escape(record['skpd'])})"
    )
    scope = ", ".join(f"{s['asset_id']}:{s['item']}" for s in record["scope"])
    where = f"; target: {json.dumps(record['target'])}" if record["kind"] == "restore" else ""
    out.print(escape(f"scope: {scope}{where}"))
    for letter in record.get("letters") or []:
        out.print(
            escape(
                shown(
                    f"letter {letter['id']}: {letter['filename']} ({letter['media_type']}, {letter['size']} "
                    f"bytes, sha256 {letter['sha256']}), attached by {letter['attached_by']}"
                )
            )
        )
    for key, backup_id in (record.get("backups_made") or {}).items():
        out.print(escape(f"backup made: {key} {backup_id}"))
    newest = (record.get("approvals") or [{}])[-1]  # the approval in force
    acting = newest.get("acting_for")
    if record["rejected_reason"]:
        out.print(f"[red]rejected:[/] {escape(record['rejected_reason'])}")
    elif record["approved_by"]:
        out.print(
            f"approved by {escape(record['approved_by'])}"
            + (f" (Plh., for {escape(acting)})" if acting else "")
            + f" at {record['approved_at']}, valid until {record['approval_expires_at']}"
        )
    table = Table()
    for column in ("step", "who", "role", "when (UTC)", "standard min", "actual min", "note"):
        table.add_column(column)
    for row, step in zip(record["timing"], record["steps"], strict=True):
        actual = "" if row["actual_minutes"] is None else str(row["actual_minutes"])
        table.add_row(
            row["step"],
            escape(row["actor"]),
            row["role"],
            row["at"],
            "" if row["standard_minutes"] is None else str(row["standard_minutes"]),
            f"[red]{actual} (overrun)[/]" if row["overrun"] else actual,
            escape(shown(step["note"])),
        )
    out.print(table)


@request_app.command("list")
def request_list(as_json: JsonOpt = False) -> None:
    """Every request you may see, and where it stands."""
    rows = call_service("GET", "/requests", as_json=as_json)["requests"]
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    table = Table(title="Requests")
    for column in ("id", "procedure", "status", "requester", "SKPD", "filed (UTC)"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["id"],
            row["procedure"],
            row["status"],
            escape(row["requester"]),
            row["skpd"],
            row["created_at"],
        )
    out.print(table)


@request_app.command("form")
def request_form(
    request_id: RequestId,
    form: Annotated[str, typer.Option(help="ppd (the request) or pd (the recovery work).")] = "ppd",
    lang: Annotated[str, typer.Option(help="id (Indonesian) or en.")] = "id",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write the HTML here.")] = None,
    pdf: Annotated[
        Path | None, typer.Option("--pdf", help="Write the form as a PDF (A4) here, not the HTML to stdout.")
    ] = None,
) -> None:
    """Print Form PPD or Form PD of a request as HTML, or write it as PDF, in Indonesian or
    English: printed by the service, under the office's letterhead."""
    if form not in ("ppd", "pd") or lang not in reports.LANGS:
        fail("--form is ppd or pd, --lang is id or en", Exit.BAD_INPUT)
    path = f"/requests/{request_id}/form?form={form}&lang={lang}"
    if pdf is not None:
        printed = call_service("GET", f"{path}&format=pdf", as_json=False, raw=True, binary=True)
        _write(pdf, lambda: atomic_write_bytes(pdf, printed))
    if pdf is None or output is not None:
        html = call_service("GET", path, as_json=False, raw=True)
        if output is None:
            print(html)
        else:
            _write(output, lambda: atomic_write_text(output, html))


def _write(path: Path, write: Callable[[], None]) -> None:
    """Write a file the caller named (whole or not at all), or stop saying why not."""
    try:
        write()
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}", Exit.FAILED)
    err.print(f"wrote {path}", soft_wrap=True)


def _refused_run(exc: ServiceError, as_json: bool) -> NoReturn:
    """A job the service refused before it began: its report when the service wrote one."""
    run_id = exc.details.get("run_id")
    if run_id:
        try:
            doc = call("GET", f"/runs/{run_id}")
        except ServiceError:
            doc = None
        if doc:
            print_outcome(doc, f"run {run_id}", as_json=as_json)
            raise typer.Exit(int(exc.code))
    fail(exc.message, exc.code, as_json=as_json)


def start_and_follow(path: str, body: dict[str, Any], as_json: bool, *, timeout: float = 60) -> NoReturn:
    try:
        job = call("POST", path, body, timeout=timeout)
    except ServiceError as exc:
        _refused_run(exc, as_json)
    err.print(
        escape(shown(f"job {job['id']}: {job['kind']} of {', '.join(job['servers']) or '-'}")), soft_wrap=True
    )
    follow_to_end(job["id"], as_json)


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
        typer.Option(min=1, max=20, help="Attempts before giving up, 1 to 20 (default: the service's, 3)."),
    ] = None,
    check: Annotated[bool, typer.Option("--check", help="Only ask the gate; change nothing.")] = False,
    inventory: NoInventory = None,
    as_json: JsonOpt = False,
) -> None:
    """Restore under an approved request, as a job of the service.

    Each item is verified in a stage, the live data saved first, then swapped in; a failed
    attempt is retried. The gate is asked before every attempt and right before every swap:
    refused (exit 3) unless the record allows it.

    Exit 0 restored and verified, 1 failed after every attempt, 2 bad input, 3 refused by the
    gate (or the target is busy with another job), 4 the backup refused before anything was
    touched, 5 the service cannot be reached, 130 interrupted or cancelled.
    """
    refuse_inventory(inventory, as_json)
    body = {
        "request": request,
        "items": item or [],
        "backups": backup or [],
        "target": _target(target, as_json) if target else None,
        "attempts": attempts,
        "check": check,
    }
    start_and_follow("/restores", body, as_json)


def backups_list(
    asset: Annotated[str | None, typer.Option("--asset", help="Only this asset id.")] = None,
    item: Annotated[str | None, typer.Option("--item", help="Only this data item.")] = None,
    inventory: NoInventory = None,
    as_json: JsonOpt = False,
) -> None:
    """List published backups, with size and last verification (read on the repository host)."""
    refuse_inventory(inventory, as_json)
    query = "&".join(f"{k}={v}" for k, v in (("asset", asset), ("item", item)) if v)
    backups = call_service("GET", "/backups" + (f"?{query}" if query else ""), as_json=as_json, timeout=SLOW)[
        "backups"
    ]
    if as_json:
        print(json.dumps({"status": "ok", "backups": backups}, indent=2, ensure_ascii=False))
        return
    table = Table(title="Backups")
    for column in ("asset", "item", "backup id", "kind", "bytes", "verified", "on the record"):
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
            "yes" if entry.get("recorded") else "[yellow]no (pulih backups adopt)[/]",
        )
    out.print(table)


def backups_adopt(
    backup_id: Annotated[str, typer.Argument(help="The backup's id (pulih backups list).")],
    reason: Annotated[str, typer.Option("--reason", help="Why you vouch for it: it goes on the record.")],
    asset: Annotated[
        str | None, typer.Option("--asset", help="Its asset id, if the id is not unique.")
    ] = None,
    item: Annotated[
        str | None, typer.Option("--item", help="Its data item, if the id is not unique.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Put a backup the service never saw published on the record (an admin's).

    A backup made by plain Ansible, or before backups were recorded, is refused by the
    service's restores, verifications and plans. Adopting it test-restores it once, the
    repository trusted for that once; if it passes, its manifest's digest goes on the record
    (backup.adopted on the audit log, with your reason).

    Exit 0 adopted, 1 the verification failed, 2 bad input (or on the record already),
    4 no such backup, 5 the service cannot be reached.
    """
    if not reason.strip():
        fail("--reason is needed: it goes on the record", Exit.BAD_INPUT, as_json=as_json)
    body = {"backup_id": backup_id, "asset": asset, "item": item, "reason": reason}
    start_and_follow("/backups/adopt", body, as_json, timeout=SLOW)  # it lists the repository first


def runs_list(as_json: JsonOpt = False) -> None:
    """The service's runs with a report, oldest first."""
    runs = call_service("GET", "/runs", as_json=as_json)["runs"]
    if as_json:
        print(json.dumps(runs, indent=2))
        return
    table = Table(title="Runs")
    for column in ("run", "kind", "status", "started (UTC)", "operator"):
        table.add_column(column)
    for run in runs:
        table.add_row(run["run_id"], run["kind"], run["status"], run["started_at"], run.get("operator") or "")
    out.print(table)


def report_show(
    run_id: Annotated[str, typer.Argument(help="The run's id (pulih runs list).")],
    fmt: Annotated[str, typer.Option("--format", help="json or html")] = "json",
    lang: Annotated[str, typer.Option("--lang", help="en or id (html)")] = "en",
    as_json: JsonOpt = False,
) -> None:
    """Print a run's report (JSON, the default and with --json, or HTML)."""
    if fmt not in ("json", "html") or lang not in reports.LANGS:
        fail("--format is json or html, --lang is en or id", Exit.BAD_INPUT)
    if not reports.RUN_ID.match(run_id):  # an id, never a path
        fail(
            f"RUN_ID: {run_id!r} is not a run id (like 20261121T020000Z-backup-1a2b; see pulih runs list)",
            Exit.BAD_INPUT,
        )
    if fmt == "html":
        print(call_service("GET", f"/runs/{run_id}?format=html&lang={lang}", as_json=False, raw=True))
        return
    print(json.dumps(call_service("GET", f"/runs/{run_id}", as_json=as_json), indent=2, ensure_ascii=False))


def audit_verify(as_json: JsonOpt = False) -> None:
    """Prove the audit log: every entry unchanged, none deleted, inserted or moved."""
    doc = call_service("POST", "/audit/verify", as_json=as_json)
    if as_json:
        print(
            json.dumps({k: doc[k] for k in ("status", "entries", "problems", "anchors", "run_id")}, indent=2)
        )
    for problem in doc["problems"]:
        err.print(
            f"[red]tampered:[/] audit entry {problem['seq']}: {escape(shown(problem['message']))}",
            markup=True,
            soft_wrap=True,
        )
    if doc["problems"]:
        raise typer.Exit(int(Exit.FAILED))
    anchored = (
        f", and as every anchor says ({', '.join(doc['anchors'])})" if doc.get("anchors") else " (no anchor)"
    )
    err.print(
        escape(
            shown(f"audit log intact: {doc['entries']} entries, each chained to the one before{anchored}")
        ),
        soft_wrap=True,
    )


def audit_export_signers(
    output: Annotated[
        Path | None, typer.Option("--output", help="Write it here (default: standard output).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """ssh-keygen's allowed-signers file: every approval key ever registered, each within the
    window it was valid in, and the audit key that signs the anchors."""
    text = call_service("GET", "/audit/signers", as_json=as_json, raw=True)
    if output is None:
        print(text, end="")
        return
    atomic_write_text(output, text)
    err.print(f"wrote {output}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(request_app, name="request")
    app.add_typer(backups_app, name="backups")
    app.add_typer(runs_app, name="runs")
    app.add_typer(report_app, name="report")
    app.add_typer(audit_app, name="audit")
    app.command("restore")(restore)
    backups_app.command("list")(backups_list)
    backups_app.command("adopt")(backups_adopt)
    runs_app.command("list")(runs_list)
    report_app.command("show")(report_show)
    audit_app.command("verify")(audit_verify)
    audit_app.command("export-signers")(audit_export_signers)

"""`pulih admin outbox`: the service's mail outbox (GET /v1/admin/outbox), printed."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from pulih.cli.common import JsonOpt, call_service, err, out, shown


class Status(StrEnum):  # the outbox's statuses, listed by --help
    pending = "pending"
    failed = "failed"
    sent = "sent"
    skipped = "skipped"


def outbox(
    status: Annotated[Status | None, typer.Option(help="Only the mails of this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many, newest first.")] = 200,
    as_json: JsonOpt = False,
) -> None:
    """The mail outbox: pending, failed (with the last attempt's error), sent and skipped mails."""
    query = f"/admin/outbox?limit={limit}" + (f"&status={status.value}" if status else "")
    doc = call_service("GET", query, None, as_json=as_json)
    if as_json:
        print(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    mail = doc.get("mail")
    if mail is None:
        err.print("mail is not configured (config.yml has no mail: section): nothing is sent", soft_wrap=True)
    else:
        server = f"{mail['smtp_host']}:{mail['smtp_port']} ({mail['security']})"
        err.print(escape(shown(f"mail from {mail['from']} through {server}")), soft_wrap=True)
    table = Table("id", "request", "event", "to", "status", "tries", "next / sent", "last error")
    for row in doc["mails"]:
        table.add_row(
            str(row["id"]),
            row["request_id"],
            row["event"] if row["event"] == row["step"] else f"{row['event']} ({row['step']})",
            escape(shown(f"{row['account']} <{row['recipient']}>" if row["recipient"] else row["account"])),
            row["status"],
            str(row["attempts"]),
            row["sent_at"] or row["next_attempt_at"] or "",
            escape(shown(row["last_error"] or "")),  # a server's words, never markup
        )
    out.print(table)

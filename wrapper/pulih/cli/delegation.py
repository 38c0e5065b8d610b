"""`pulih delegation`: acting approvers (Plt./Plh.), as the service records them."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from pulih.cli.common import JsonOpt, call_service, err, out, shown

delegation_app = typer.Typer(
    help="Acting approvers (Plt./Plh.): who approves in an approver's place, from when to when.",
    no_args_is_help=True,
)


@delegation_app.command("grant")
def grant(
    delegator: Annotated[str, typer.Option("--for", help="The approver who is away (their account).")],
    delegate: Annotated[str, typer.Option("--to", help="The account that acts in their place.")],
    until: Annotated[
        str, typer.Option(help="When it ends by itself: ISO 8601 with a zone, 2026-12-20T16:00+07:00.")
    ],
    reason: Annotated[str, typer.Option(help="Why, e.g. the letter appointing the Plh. (on the record).")],
    starts: Annotated[str | None, typer.Option(help="When it begins (default: now).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Let an account act as an approver's Plh. for a bounded time: an admin's, or the
    approver's own where the office's policy allows it."""
    body = {"delegator": delegator, "delegate": delegate, "starts": starts, "ends": until, "reason": reason}
    granted = call_service("POST", "/delegations", body, as_json=as_json)
    if as_json:
        print(json.dumps(granted, indent=2, ensure_ascii=False))
        return
    err.print(
        escape(
            shown(
                f"delegation {granted['id']}: {granted['delegate']} approves for {granted['delegator']} "
                f"from {granted['starts_at']} until {granted['ends_at']}"
            )
        ),
        soft_wrap=True,
    )


@delegation_app.command("list")
def listing(as_json: JsonOpt = False) -> None:
    """Every delegation, and whether it is in force now."""
    rows = call_service("GET", "/delegations", as_json=as_json)["delegations"]
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    table = Table("id", "for", "acting", "from", "until", "in force", "ended", "granted by", "reason")
    for row in rows:
        table.add_row(
            str(row["id"]),
            escape(row["delegator"]),
            escape(row["delegate"]),
            row["starts_at"],
            row["ends_at"],
            "yes" if row["active"] else "no",
            escape(f"{row['ended_at']} by {row['ended_by']}") if row["ended_at"] else "",
            escape(row["granted_by"]),
            escape(shown(row["reason"])),
        )
    out.print(table)


@delegation_app.command("end")
def end(
    delegation_id: Annotated[int, typer.Argument(help="The delegation's id (pulih delegation list).")],
    as_json: JsonOpt = False,
) -> None:
    """End a delegation now (the approver is back): an admin's, or the delegator's."""
    ended = call_service("POST", f"/delegations/{delegation_id}/end", {}, as_json=as_json)
    if as_json:
        print(json.dumps(ended, indent=2, ensure_ascii=False))
        return
    err.print(f"delegation {ended['id']} ended at {ended['ended_at']}", soft_wrap=True)

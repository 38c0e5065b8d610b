"""Carrying out a restore the gate allowed: which backup for which item, attempts and retries.

The playbook does the restoring (roles/pulih_restore); this module decides what each attempt
asks of it and reads back what happened. An item is attempted again only when its failure
may pass (a server down, a connection lost, a run killed); a backup refused before anything
was touched (corrupt, foreign, none at the restore point) is not, since the same backup
would be refused again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pulih import register as reg
from pulih.runner import RunOutcome


class RestoreInputError(Exception):
    """What the operator asked for cannot be restored as asked (exit 2)."""


@dataclass
class RestoreItem:
    asset_id: str
    host: str
    item: str
    engine: str
    backup_id: str = ""  # empty: the role takes the newest verified backup at the restore point
    result: dict[str, Any] | None = None
    tries: int = 0
    history: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.asset_id}:{self.item}"

    @property
    def done(self) -> bool:
        return bool(self.result and self.result.get("ok"))

    @property
    def refused(self) -> bool:
        """Refused before anything was touched: another attempt would be refused again (the
        backup's checks), or the approval no longer holds (the gate right before the swap)."""
        return bool(
            self.result and not self.result.get("ok") and self.result.get("phase") in ("checks", "gate")
        )

    @property
    def gate_refused(self) -> bool:
        return bool(self.result and not self.result.get("ok") and self.result.get("phase") == "gate")

    @property
    def pending(self) -> bool:
        return not self.done and not self.refused


def items_for(
    scope: list[dict[str, str]],
    register: reg.Register,
    *,
    planned: dict[str, str],
    named: list[str],
) -> list[RestoreItem]:
    """The run's items with the backup each uses: named on the command line
    (ASSET_ID:ITEM=BACKUP_ID, or BACKUP_ID alone for a one-item run), else the request's plan,
    else the newest verified backup at or before the restore point (chosen by the role)."""
    by_asset = {a.asset_id: a for a in register.hosts()}
    items = []
    for entry in scope:
        asset = by_asset.get(entry["asset_id"])
        data = next((d for d in asset.data if d.name == entry["item"]), None) if asset else None
        if asset is None or data is None:
            raise RestoreInputError(
                f"{entry['asset_id']}:{entry['item']} is not a data item of a server in operation "
                "in the register any more"
            )
        items.append(
            RestoreItem(
                asset_id=asset.asset_id,
                host=asset.hostname,
                item=data.name,
                engine=data.engine,
                backup_id=planned.get(f"{asset.asset_id}:{data.name}", ""),
            )
        )
    keyed = {i.key: i for i in items}
    for text in named:
        key, sep, backup_id = text.rpartition("=")
        if not sep:
            if len(items) != 1:
                raise RestoreInputError(
                    f"--backup {text!r}: this run restores {len(items)} items; write ASSET_ID:ITEM=BACKUP_ID"
                )
            items[0].backup_id = text
        elif key not in keyed:
            raise RestoreInputError(
                f"--backup {text!r}: {key} is not an item of this run ({', '.join(keyed)})"
            )
        else:
            keyed[key].backup_id = backup_id
    return items


def attempt_vars(
    items: list[RestoreItem],
    *,
    request_id: str,
    target: dict[str, Any],
    restore_point: str | None,
    gate: dict[str, str] | None = None,
    recorded: dict[str, dict[str, Any]] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The --limit and extra vars of one attempt, for the items still pending; `recorded`, the
    service's record of the items' backups (the role refuses any other)."""
    scope: dict[str, dict[str, str]] = {}
    for item in items:
        if item.pending:
            scope.setdefault(item.host, {})[item.item] = item.backup_id
    extravars = {
        "pulih_restore_request_id": request_id,
        "pulih_restore_scope": scope,
        "pulih_restore_target": target,
        "pulih_restore_point": restore_point or "",
    }
    if gate:  # the service's socket and job: the role asks the gate again right before each swap
        extravars["pulih_restore_gate"] = gate
    if recorded is not None:  # ASSET:ITEM:BACKUP_ID -> {manifest_sha256, verified} on the record
        extravars["pulih_restore_recorded"] = recorded
    return ",".join(sorted(scope)), extravars


def apply_outcome(items: list[RestoreItem], outcome: RunOutcome) -> None:
    """Each pending item's result from the hosts' published results; an item whose host
    never got to publish one (unreachable, killed) fails with the host's own errors."""
    results = outcome.facts("pulih_restore_results")
    for item in items:
        if not item.pending:
            continue
        item.tries += 1
        found = next((r for r in results.get(item.host, []) if r.get("item") == item.item), None)
        if found is None:
            host = outcome.hosts.get(item.host)
            why = "; ".join(host.errors[-2:]) if host and host.errors else f"the run ended {outcome.status}"
            status = host.status if host else "not reached"
            found = {
                "item": item.item,
                "ok": False,
                "phase": "connect",
                "error": f"{item.host} {status}: {why}",
            }
        item.result = found
        item.history.append("restored" if found.get("ok") else f"{found.get('phase')}: {found.get('error')}")


def report_item(item: RestoreItem) -> dict[str, Any]:
    result = item.result or {}
    return {
        "host": item.host,
        "asset_id": item.asset_id,
        "item": item.item,
        "engine": item.engine,
        "ok": item.done,
        "backup_id": result.get("backup_id") or item.backup_id or None,
        "bytes": None,
        # The data path: stage (restore and verify) and swap (and verify again).
        "seconds": round(float(result["stage_seconds"]) + float(result["swap_seconds"]), 3)
        if item.done
        else None,
        "error": None if item.done else result.get("error", "not attempted"),
        "pruned": [],
        "verification": ({"ok": True, "checks": result.get("checks", [])} if item.done else None),
        "restore": {
            "target_host": result.get("target_host"),
            "target": result.get("target"),
            "replaced": result.get("replaced"),
            "pre_restore_backup_id": result.get("pre_restore_backup_id"),
            # Its digests, for the record: the service recorded it as it was published.
            "pre_restore_backup": result.get("pre_restore_backup"),
            "pre_restore_seconds": float(result.get("pre_restore_seconds") or 0) if item.done else None,
            "timings": result.get("timings"),
            "backup_started_at": result.get("backup_started_at"),
            "phase": result.get("phase"),
            # The register's hooks around the swap: each one's exit, time and end of output.
            "hooks": result.get("hooks"),
            "tries": item.tries,
            "history": item.history,
        },
    }

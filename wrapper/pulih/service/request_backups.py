"""A backup request's run (SOP B, kind 'backup'): the gate asked as for a restore, then the
backup of exactly the request's items that have no backup of it yet, each verified by a test
restore like every backup, kept out of retention (kind on_request: only scheduled backups are
ever pruned) and named with the request in its manifest; the 'executed' step records how it
ended and which backups it made. One item failing is reported alone, and the next run backs
up only what is still missing."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pulih import jobs as job_runs
from pulih import register as reg
from pulih import report as reports
from pulih.exitcodes import Exit
from pulih.requests import Refused, Requests


def pending_scope(record: dict[str, Any]) -> list[dict[str, str]]:
    """The request's items that have no backup of it yet."""
    made = record.get("backups_made") or {}
    return [s for s in record["scope"] if f"{s['asset_id']}:{s['item']}" not in made]


def servers_of(register: reg.Register, scope: list[dict[str, str]]) -> list[str]:
    by_id = {a.asset_id: a.hostname for a in register.hosts()}
    missing = sorted({s["asset_id"] for s in scope} - set(by_id))
    if missing:
        raise KeyError(", ".join(missing))
    return sorted({by_id[s["asset_id"]] for s in scope})


def made_by(report: reports.RunReport) -> dict[str, str]:
    """The backups the run made and verified, by ASSET_ID:ITEM."""
    return {
        f"{i['asset_id']}:{i['item']}": i["backup_id"]
        for i in report.items
        if i["ok"] and i.get("backup_id") and _verified(i.get("verification"))
    }


def _verified(verification: dict[str, Any] | None) -> bool:
    """A verification that ran and passed (the same reading as pulih.jobs)."""
    if not verification:
        return False
    status = verification.get("status", "verified" if verification.get("ok") else "failed")
    return bool(status == "verified")


@dataclass
class RequestBackupRun:
    requests: Requests
    actor: str
    request_id: str
    scope: list[dict[str, str]]  # the items this run backs up, as the job locked them
    register_path: Path
    progress: Callable[[str, str], None]
    cancel: threading.Event
    check: bool = False
    age_identity: str | None = None

    def run(self, report: reports.RunReport) -> job_runs.Ending:
        try:
            report.gate = self.requests.gate(self.actor, self.request_id, run_scope=self.scope, kind="backup")
        except Refused as exc:
            return job_runs.Ending("refused", Exit.REFUSED, f"refused: {exc}")
        if self.check:
            report.items = [
                {"host": "", "item": f"{s['asset_id']}:{s['item']}", "ok": True} for s in self.scope
            ]
            return job_runs.Ending("allowed", Exit.OK, None)
        register = reg.load_inventory(self.register_path)
        extravars: dict[str, Any] = {
            "pulih_backup_kind": "on_request",
            "pulih_backup_request_id": self.request_id,
            "pulih_backup_items": [f"{s['asset_id']}:{s['item']}" for s in self.scope],
            "pulih_backup_verify": True,  # a request's backup is verified like every backup
        }
        if self.age_identity:
            extravars["pulih_verify_age_identity_file"] = self.age_identity
        ending = job_runs.run_job(
            report,
            "backup.yml",
            inventory=self.register_path,
            limit=",".join(servers_of(register, self.scope)),
            items=None,
            extravars=extravars,
            check=False,
            today=dt.date.today(),
            progress=self.progress,
            cancel=self.cancel,
        )
        made = made_by(report)
        wanted = [f"{s['asset_id']}:{s['item']}" for s in self.scope]
        outcome = "succeeded" if set(wanted) <= set(made) else ending.status
        missing = [k for k in wanted if k not in made]
        note = f"run {report.run_id}: " + "; ".join(
            [f"{k} {made[k]}" for k in wanted if k in made] + [f"{k} not made" for k in missing]
        )
        self.requests.executed(self.actor, self.request_id, outcome=outcome, note=note, backups=made)
        if outcome == "succeeded":
            return job_runs.Ending("succeeded", Exit.OK, None)
        if ending.code == Exit.OK:  # the playbook ended well, yet an item has no verified backup
            return job_runs.Ending(
                "failed", Exit.FAILED, f"{', '.join(missing)}: no verified backup; run it again"
            )
        return ending

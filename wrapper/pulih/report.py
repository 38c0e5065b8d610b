"""Run reports: one JSON document (schemas/run_report.schema.json) and one printable HTML
page per run, written for every run — also one that failed or was interrupted."""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pulih import printing
from pulih.fsutil import atomic_write_text
from pulih.printing import N_

LANGS = ("en", "id")  # the languages of printed reports and Forms PPD and PD

FORMAT = "pulih.run_report/1"
# Called with every written report: the CLI puts each run on the record (store, audit log).
RECORDERS: list[Callable[[RunReport, Path], None]] = []


# A run's id: its start (UTC), its kind and four hex digits; never a path.
RUN_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[a-z_]+-[0-9a-f]{4}$")


def state_dir() -> Path:
    """Where pulih keeps runs and reports: $PULIH_STATE_DIR, else $XDG_STATE_HOME/pulih."""
    env = os.environ.get("PULIH_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "pulih"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def new_run_id(kind: str) -> str:
    return f"{utcnow().strftime('%Y%m%dT%H%M%SZ')}-{kind}-{secrets.token_hex(2)}"


@dataclass
class RunReport:
    kind: str
    command: list[str]
    run_id: str = ""
    started_at: dt.datetime = field(default_factory=utcnow)
    finished_at: dt.datetime | None = None
    status: str = "running"
    exit_code: int | None = None
    # The account a service's run is for; a local tool's report names the OS user the kernel
    # says runs it (never USER or LOGNAME, which the caller sets).
    operator: str = field(default_factory=lambda: pwd.getpwuid(os.getuid()).pw_name)
    inventory: str | None = None
    limit: str | None = None
    check_mode: bool = False
    hosts: list[dict[str, Any]] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    artifacts_dir: str | None = None
    request_id: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    gate: dict[str, Any] | None = None
    # Run by a demo store's service (pulih serve --demo-actors), whose actors a script names:
    # the report says so, so that nobody mistakes it for a record of real work.
    demo: bool = False
    # The audit chain's head once the run is on the record ({seq, hash, at}): with it, whoever
    # holds the report can show later that the chain still holds the run's entry as it was.
    audit_head: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.run_id = self.run_id or new_run_id(self.kind)

    @property
    def run_dir(self) -> Path:
        return state_dir() / "runs" / self.run_id

    def finish(self, status: str, exit_code: int) -> None:
        self.status, self.exit_code, self.finished_at = status, exit_code, utcnow()

    def as_dict(self) -> dict[str, Any]:
        finished = self.finished_at or utcnow()
        return {
            "format": FORMAT,
            "run_id": self.run_id,
            "kind": self.kind,
            "status": self.status,
            "exit_code": self.exit_code,
            "operator": self.operator,
            "command": self.command,
            "started_at": self.started_at.isoformat().replace("+00:00", "Z"),
            "finished_at": finished.isoformat().replace("+00:00", "Z"),
            "duration_seconds": round((finished - self.started_at).total_seconds(), 3),
            "inventory": self.inventory,
            "limit": self.limit,
            "check_mode": self.check_mode,
            "hosts": self.hosts,
            "items": self.items,
            "findings": self.findings,
            "errors": self.errors,
            "artifacts_dir": self.artifacts_dir,
            "request_id": self.request_id,
            "attempts": self.attempts,
            "gate": self.gate,
            "demo": self.demo,
            "audit_head": self.audit_head,
        }

    def record_on(self, store: Any, path: Path, actor: str) -> None:
        """Put this run on a store's record (runs table and audit log) as `actor`'s."""
        doc = self.as_dict()
        store.record_run(
            run_id=self.run_id,
            kind=self.kind,
            status=self.status,
            started_at=doc["started_at"],
            finished_at=doc["finished_at"],
            report=str(path),
            exit_code=self.exit_code,
            actor=actor,
            request_id=self.request_id,
        )
        if self.kind == "adopt":  # an admin vouches for a backup the service never saw published
            store.record_backups(
                self.verified_backups(), run_id=self.run_id, actor=actor, action="backup.adopted"
            )
        store.record_backups(self.published_backups(), run_id=self.run_id, actor=actor)
        store.record_verifications(self.verifications(), run_id=self.run_id, actor=actor)

    def verifications(self) -> list[dict[str, Any]]:
        """The test restores this run made that ran to a result (passed or failed), each with
        the digest of the manifest the verifier was given."""
        return [
            {**item["verification"], "asset_id": item["asset_id"]}
            for item in self.items
            if item.get("asset_id")
            and (item.get("verification") or {}).get("status") in ("verified", "failed")
            and item["verification"].get("manifest_sha256")
        ]

    def verified_backups(self) -> list[dict[str, Any]]:
        """The backups this run verified, as published backups (an adoption's)."""
        return [
            {
                "asset_id": v["asset_id"],
                "item": v["item"],
                "backup_id": v["backup_id"],
                "kind": v.get("kind"),
                "request_id": None,
                "manifest_sha256": v["manifest_sha256"],
                "artifacts": v.get("artifacts") or [],
            }
            for v in self.verifications()
            if v["status"] == "verified"
        ]

    def published_backups(self) -> list[dict[str, Any]]:
        """The backups this run published, with the digests the controller sent: its backups,
        and the pre-restore backups its restores took."""
        found = []
        for item in self.items:
            if item.get("ok") and item.get("backup_id") and item.get("manifest_sha256"):
                found.append(
                    {
                        "asset_id": item["asset_id"],
                        "item": item["item"],
                        "backup_id": item["backup_id"],
                        "kind": item.get("kind"),
                        "request_id": item.get("request_id"),
                        "manifest_sha256": item["manifest_sha256"],
                        "artifacts": item.get("artifacts") or [],
                    }
                )
            pre = (item.get("restore") or {}).get("pre_restore_backup") or {}
            if pre.get("backup_id") and pre.get("manifest_sha256"):
                found.append(
                    {
                        "asset_id": item["asset_id"],
                        "item": item["item"],
                        "backup_id": pre["backup_id"],
                        "kind": "pre_restore",
                        "request_id": self.request_id,
                        "manifest_sha256": pre["manifest_sha256"],
                        "artifacts": pre.get("artifacts") or [],
                    }
                )
        return found

    def write(self) -> Path:
        """Write report.json and report.html into the run's folder and put the run on the
        record (store and audit log) when one is configured; returns the JSON's path."""
        doc = self.as_dict()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "report.json", json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        atomic_write_text(self.run_dir / "report.html", render_html(doc))
        for recorder in RECORDERS:
            recorder(self, self.run_dir / "report.json")
        if self.audit_head is not None and self.audit_head != doc["audit_head"]:  # recorded: say where
            atomic_write_text(
                self.run_dir / "report.json", json.dumps(self.as_dict(), indent=2, ensure_ascii=False) + "\n"
            )
        return self.run_dir / "report.json"


# The record's codes as a reader sees them; the JSON keeps the codes.
STATUSES: Final = {
    "running": N_("running"),
    "succeeded": N_("succeeded"),
    "failed": N_("failed"),
    "interrupted": N_("interrupted"),
    "error": N_("error"),
    "refused": N_("refused"),
    "allowed": N_("allowed"),
}
KINDS: Final = {
    "backup": N_("backup"),
    "verify": N_("verification"),
    "adopt": N_("adoption of a backup"),
    "restore": N_("restore"),
    "restore_check": N_("restore check"),
    "audit": N_("audit check"),
    "register_check": N_("register check"),
    "list": N_("repository list"),
    "protect": N_("backup protection"),
}
HOST_STATUSES: Final = {"ok": N_("ok"), "failed": N_("failed"), "unreachable": N_("unreachable")}
ENGINES: Final = {"files": N_("files")}
# What a verification or a restore checked (the roles' `checks`).
CHECKS: Final = {
    "manifest": N_("manifest"),
    "recorded": N_("as on the record"),
    "checksums": N_("checksums"),
    "test_restore": N_("test restore"),
    "row_counts": N_("row counts"),
    "file_list": N_("file list"),
    "row_counts before the swap": N_("row counts before the swap"),
    "row_counts after the swap": N_("row counts after the swap"),
    "file_list before the swap": N_("file list before the swap"),
    "file_list after the swap": N_("file list after the swap"),
}
# Where a restore stopped (its history says "PHASE: ERROR"), and how an attempt ended.
PHASES: Final = {
    "connect": N_("connect"),
    "checks": N_("checks"),
    "target": N_("target"),
    "stage": N_("stage"),
    "pre_hook": N_("pre-restore hook"),
    "pre_restore_backup": N_("pre-restore backup"),
    "gate": N_("approval gate"),
    "swap": N_("swap"),
}
RESULTS: Final = {"restored": N_("restored")}


def render_html(doc: dict[str, Any], lang: str = "en") -> str:
    return (
        printing.environment(lang)
        .get_template("run_report.html.j2")
        .render(
            r=doc,
            lang=lang,
            statuses=STATUSES,
            kinds=KINDS,
            host_statuses=HOST_STATUSES,
            engines=ENGINES,
            checks=CHECKS,
            phases=PHASES,
            results=RESULTS,
        )
    )


def load(run_id: str) -> dict[str, Any]:
    path = state_dir() / "runs" / run_id / "report.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def list_runs() -> list[dict[str, Any]]:
    runs = []
    base = state_dir() / "runs"
    for path in sorted(base.glob("*/report.json")) if base.exists() else []:
        try:
            runs.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return runs

"""A run of one playbook as a pulih job, without a terminal: validate the register and the
items, write the 'running' report before anything runs, run the playbook, fill the report from
the hosts' published results, and say how it ended. The CLI prints what this returns; the
service (pulih serve) runs it in a job of its own."""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from pathlib import Path

from pulih import register as reg
from pulih import report as reports
from pulih.exitcodes import Exit
from pulih.runner import ContentError, ProgressFn, RunOutcome, playbook_path, run_playbook


@dataclass(frozen=True)
class Ending:
    status: str
    code: Exit
    message: str | None = None


def signal_name(outcome: RunOutcome) -> str:
    return "Ctrl-C" if outcome.signal in (None, "SIGINT") else str(outcome.signal)


def run_job(
    report: reports.RunReport,
    playbook: str,
    *,
    inventory: Path,
    limit: str | None,
    items: list[str] | None,
    extravars: dict[str, object],
    check: bool,
    today: dt.date,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> Ending:
    """Run the job behind `report` (its kind, command and operator already set)."""
    report.inventory = str(inventory)
    try:
        playbook_path(playbook)
        register = reg.load_inventory(inventory, today)
    except ContentError as exc:
        return Ending("error", Exit.BAD_INPUT, str(exc))
    except reg.RegisterError as exc:
        return Ending(
            "error", Exit.BAD_INPUT, "the register is invalid: " + "; ".join(str(p) for p in exc.problems)
        )
    known = {i.name for a in register.hosts() for i in a.data}
    unknown = sorted(set(items or []) - known)
    if unknown:
        return Ending(
            "error",
            Exit.BAD_INPUT,
            f"no server in operation holds data item(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known)) or 'none'})",
        )
    # On disk and on the record before anything runs: a run killed outright (SIGKILL, power
    # cut) stays visible as 'running' in pulih runs list and the audit log.
    report.write()
    outcome = run_playbook(
        playbook,
        inventory=inventory,
        run_dir=report.run_dir / "runner",
        limit=limit,
        extravars=extravars,
        check=check,
        progress=progress,
        cancel=cancel,
    )
    report.artifacts_dir = outcome.artifacts_dir
    fill_report(report, outcome, register, today)
    if outcome.status == "interrupted":
        return Ending(
            "interrupted",
            Exit.INTERRUPTED,
            f"interrupted ({signal_name(outcome)}): whatever was being written is not listed "
            "and is removed by a later run",
        )
    if not outcome.hosts and outcome.message:
        return Ending("error", Exit.FAILED, f"ansible-playbook stopped before any server: {outcome.message}")
    if not outcome.hosts:
        return Ending("error", Exit.BAD_INPUT, f"no registered server in operation matches --limit {limit!r}")
    failed = (
        outcome.status != "succeeded"
        or any(not i["ok"] for i in report.items)
        or any(i.get("verification") and verification_failed(i["verification"]) for i in report.items)
    )
    if not failed:
        return Ending("succeeded", Exit.OK)
    # Every failure a refused backup (not on the record, or changed since): exit 4, as a restore.
    refused = [i for i in report.items if (i.get("verification") or {}).get("status") == "refused"]
    if (
        refused
        and all(i["ok"] or i in refused for i in report.items)
        and all(h["status"] != "unreachable" for h in report.hosts)
    ):
        return Ending("failed", Exit.UNUSABLE, refused[0]["verification"]["error"])
    return Ending("failed", Exit.FAILED)


def verification_failed(record: dict[str, object]) -> bool:
    """A verification that ran and failed, or a backup refused before it could (check mode's
    'skipped' is neither)."""
    return record.get("status", "verified" if record.get("ok") else "failed") in ("failed", "refused")


def fill_report(
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
                        "kind": result.get("kind"),
                        "request_id": result.get("request_id"),
                        # What the service records: the manifest's digest as sent, and the
                        # artifacts' hashes taken on the data server.
                        "manifest_sha256": result.get("manifest_sha256"),
                        "artifacts": result.get("artifacts"),
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
                        "ok": not verification_failed(result),  # check mode's 'skipped' is no failure
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

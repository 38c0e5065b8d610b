"""Restores as jobs of pulih serve: the request's items resolved against the service's register,
the approval gate asked before every attempt and (by the role, through the service's socket)
right before every swap, the attempts and retries the SOP asks for, and the report.

One module for the restore loop, so the CLI, the desk and a script all start the same thing:
``POST /v1/restores`` names the request (and optionally items, backups, a target, attempts);
what runs, on which servers, with which register and keys, is the service's."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pulih import jobs as job_runs
from pulih import register as reg
from pulih import report as reports
from pulih import restoring
from pulih.exitcodes import Exit
from pulih.requests import Refused, Requests
from pulih.runner import ContentError, playbook_path, run_playbook

ENGINE_PORTS = {"postgresql": 5432, "mariadb": 3306, "mysql": 3306}


@dataclass
class RestoreOrder:
    request_id: str
    items: list[str] = field(default_factory=list)  # ASSET_ID:ITEM; empty: the whole request
    backups: list[str] = field(default_factory=list)  # BACKUP_ID or ASSET_ID:ITEM=BACKUP_ID
    target: dict[str, Any] | None = None  # None: the approved target
    attempts: int | None = None
    check: bool = False  # ask the gate only; change nothing


def scope_of(items: list[str], register: reg.Register) -> list[dict[str, str]]:
    """ASSET_ID:ITEM texts, each a registered item of a server in operation."""
    known = {(a.asset_id, i.name) for a in register.hosts() for i in a.data}
    scope = []
    for text in items:
        asset_id, _, item = text.partition(":")
        if (asset_id, item) not in known:
            raise restoring.RestoreInputError(
                f"{text}: no data item '{item}' on a server in operation with asset id '{asset_id}' "
                "(write ASSET_ID:ITEM as in the register)"
            )
        scope.append({"asset_id": asset_id, "item": item})
    return scope


def target_key(address: str, item: reg.DataItem, name: str | None = None) -> str:
    """What a lock holds: one database or folder of one server (address, port, engine, name)."""
    if item.engine == "files":
        return f"files://{address}{name or item.path}"
    port = item.port or ENGINE_PORTS.get(item.engine, 0)
    return f"{item.engine}://{address}:{port}/{name or item.database}"


def item_keys(register: reg.Register, servers: list[str], items: list[str]) -> list[str]:
    """The targets a backup or verification of these servers' items touches."""
    keys = []
    for asset in register.hosts():
        if asset.hostname in servers:
            keys += [target_key(asset.address, d) for d in asset.data if not items or d.name in items]
    return sorted(set(keys))


def restore_keys(register: reg.Register, scope: list[dict[str, str]], target: dict[str, Any]) -> list[str]:
    """The live targets a restore of `scope` to `target` may change: in place, each item's own;
    elsewhere, the new database or folder on the alternate server (the item's server of the
    same engine there, as the role resolves it)."""
    by_id = {a.asset_id: a for a in register.hosts()}
    by_host = {a.hostname: a for a in register.hosts()}
    keys = []
    for entry in scope:
        asset = by_id[entry["asset_id"]]
        data = next(d for d in asset.data if d.name == entry["item"])
        if target.get("kind") != "alternate":
            keys.append(target_key(asset.address, data))
            continue
        other = by_host.get(str(target.get("host")))
        if other is None:
            raise restoring.RestoreInputError(
                f"target host {target.get('host')} is not a registered server in operation"
            )
        there = next((d for d in other.data if d.engine == data.engine), data)
        keys.append(target_key(other.address, there, target.get("name") or (data.path or data.database)))
    return sorted(set(keys))


def closed_windows(
    register: reg.Register, scope: list[dict[str, str]], target: dict[str, Any], at: dt.datetime
) -> list[str]:
    """The servers an in-place restore of `scope` would change whose maintenance window (the
    register's) is closed at `at`, each named with its window; none for a restore elsewhere."""
    if target.get("kind") == "alternate":
        return []
    by_id = {a.asset_id: a for a in register.hosts()}
    closed = []
    for asset_id in sorted({s["asset_id"] for s in scope}):
        window = by_id[asset_id].maintenance_window if asset_id in by_id else None
        if window is not None and not window.contains(at):
            closed.append(f"{by_id[asset_id].hostname} (window {window})")
    return closed


def post_hook_failure(item: restoring.RestoreItem) -> str:
    """A failed post-restore hook, in words: the data may be back, its application may not."""
    hooks = (item.result or {}).get("hooks") or {}
    failed = next((h for h in hooks.get("post") or [] if not h.get("ok")), None)
    if failed is None:
        why = hooks.get("post_error") or "they did not run"
        return f"{item.key}: the post-restore hooks failed ({why}); run them by hand"
    how = "timed out" if failed.get("timed_out") else f"exit {failed.get('rc')}"
    said = " ".join(str(failed.get("output") or "").split())[-300:]
    return f"{item.key}: post-restore hook {' '.join(failed['argv'])} failed ({how}: {said}); run it by hand"


@dataclass
class RestoreRun:
    """One restore job's work, after its targets are locked."""

    requests: Requests
    actor: str
    order: RestoreOrder
    register_path: Path
    attempts: int
    retry_seconds: float
    gate_socket: str | None
    job_id: str
    progress: Callable[[str, str], None]
    cancel: threading.Event
    age_identity: str | None = None
    locked: list[str] = field(default_factory=list)  # the targets the job holds

    def changed_targets(self, register: reg.Register, scope: list[dict[str, str]], target: Any) -> str | None:
        """Why the register now resolves this restore to other targets than the job locked, or
        None: an edit of the register during a job never sends an attempt somewhere unlocked."""
        now = restore_keys(register, scope, target)
        if self.order.check or now == self.locked:
            return None
        return (
            "the service's register changed while the job ran: it now resolves the restore to "
            f"{', '.join(now)}, and the job locked {', '.join(self.locked)}; start the restore again"
        )

    def run(self, report: reports.RunReport) -> job_runs.Ending:
        order = self.order
        try:
            register = reg.load_inventory(self.register_path)
            record = self.requests.get(order.request_id)
            scope = scope_of(order.items, register) if order.items else record["scope"]
            targets = restore_keys(register, scope, order.target or record["target"])
            decision = self.requests.gate(
                self.actor,
                order.request_id,
                run_scope=scope,
                target=order.target,
                run_targets=targets,
                closed_windows=closed_windows(
                    register, scope, order.target or record["target"], self.requests.clock()
                ),
            )
            report.gate = decision
        except reg.RegisterError as exc:
            return job_runs.Ending(
                "error", Exit.FAILED, "the service's register is invalid: " + str(exc.problems[0])
            )
        except restoring.RestoreInputError as exc:
            return job_runs.Ending("error", Exit.BAD_INPUT, str(exc))
        except (KeyError, StopIteration):
            return job_runs.Ending(
                "error",
                Exit.BAD_INPUT,
                f"request {order.request_id} names an item the register no longer holds",
            )
        except Refused as exc:
            return job_runs.Ending("refused", Exit.REFUSED, f"refused: {exc}")
        if order.check:
            report.items = [{"host": "", "item": f"{s['asset_id']}:{s['item']}", "ok": True} for s in scope]
            return job_runs.Ending("allowed", Exit.OK, None)
        report.inventory = str(self.register_path)
        try:
            playbook_path("restore.yml")
            plan = (record.get("plan") or {}).get("backups") or {}
            run_items = restoring.items_for(scope, register, planned=plan, named=order.backups)
        except ContentError as exc:
            return job_runs.Ending("error", Exit.BAD_INPUT, str(exc))
        except restoring.RestoreInputError as exc:
            return job_runs.Ending("error", Exit.BAD_INPUT, str(exc))
        # On disk and on the record before anything is touched: a service killed outright
        # leaves it 'running', and its next start marks it interrupted.
        report.write()
        return self._attempts(report, record, run_items, decision, scope, targets)

    def _attempts(
        self,
        report: reports.RunReport,
        record: dict[str, Any],
        run_items: list[restoring.RestoreItem],
        decision: dict[str, Any],
        scope: list[dict[str, str]],
        targets: list[str],
    ) -> job_runs.Ending:
        order, total = self.order, self.attempts
        gate = {"socket": self.gate_socket, "job": self.job_id} if self.gate_socket else None
        for attempt in range(1, total + 1):
            # Today's register, read again for every attempt (the playbook reads it too).
            try:
                register = reg.load_inventory(self.register_path)
                changed = self.changed_targets(register, scope, decision["target"])
            except (reg.RegisterError, restoring.RestoreInputError, KeyError, StopIteration) as exc:
                changed = f"the service's register no longer resolves the restore ({exc})"
            if changed:
                report.items = [restoring.report_item(i) for i in run_items]
                return job_runs.Ending(
                    "refused", Exit.REFUSED, f"refused before attempt {attempt}: {changed}"
                )
            asset_ids = {a.hostname: a.asset_id for a in register.assets}
            if attempt > 1:  # the gate again before every attempt: an approval may have gone meanwhile
                try:
                    pending = [{"asset_id": i.asset_id, "item": i.item} for i in run_items if i.pending]
                    report.gate = self.requests.gate(
                        self.actor,
                        order.request_id,
                        run_scope=pending,
                        target=order.target,
                        run_targets=targets,
                        closed_windows=closed_windows(
                            register, pending, decision["target"], self.requests.clock()
                        ),
                    )
                except Refused as exc:
                    report.items = [restoring.report_item(i) for i in run_items]
                    return job_runs.Ending(
                        "refused", Exit.REFUSED, f"refused before attempt {attempt} of {total}: {exc}"
                    )
            limit, extravars = restoring.attempt_vars(
                run_items,
                request_id=order.request_id,
                target=decision["target"],
                restore_point=record.get("restore_point"),
                gate=gate,
                recorded=self.requests.store.recorded_backups([(i.asset_id, i.item) for i in run_items]),
            )
            if self.age_identity:
                extravars["pulih_restore_age_identity_file"] = self.age_identity
            run_dir = report.run_dir / f"attempt-{attempt}"
            self.requests.attempt_started(
                self.actor, order.request_id, attempt=attempt, of=total, run_id=report.run_id
            )
            started = reports.utcnow()
            self.progress("task", f"restore (attempt {attempt} of {total})")
            outcome = run_playbook(
                "restore.yml",
                inventory=self.register_path,
                run_dir=run_dir,
                limit=limit,
                extravars=extravars,
                progress=self.progress,
                cancel=self.cancel,
            )
            report.artifacts_dir = outcome.artifacts_dir
            if outcome.status == "interrupted":
                report.attempts.append(
                    {"attempt": attempt, "status": "interrupted", "run_dir": str(run_dir), "items": {}}
                )
                report.items = [restoring.report_item(i) for i in run_items]
                stopped_by = "cancelled" if self.cancel.is_set() else job_runs.signal_name(outcome)
                self.requests.executed(
                    self.actor,
                    order.request_id,
                    outcome="interrupted",
                    note=f"attempt {attempt} of {total}, {stopped_by}",
                )
                return job_runs.Ending(
                    "interrupted",
                    Exit.INTERRUPTED,
                    f"interrupted ({stopped_by}): an item not yet swapped in is as it was; "
                    "run the restore again",
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
            self.requests.executed(
                self.actor,
                order.request_id,
                outcome="succeeded" if all(i.done for i in tried) else "failed",
                note=f"attempt {attempt} of {total}, run {report.run_id}: {summary}",
            )
            if not any(i.pending for i in run_items):
                break
            if attempt < total:
                self.progress(
                    "stream", f"attempt {attempt} of {total} failed; trying again in {self.retry_seconds:g}s"
                )
                if self.cancel.wait(self.retry_seconds):
                    report.items = [restoring.report_item(i) for i in run_items]
                    return job_runs.Ending(
                        "interrupted",
                        Exit.INTERRUPTED,
                        "cancelled between attempts; nothing more was touched",
                    )
        return self._ending(report, run_items)

    @staticmethod
    def _ending(report: reports.RunReport, run_items: list[restoring.RestoreItem]) -> job_runs.Ending:
        report.items = [restoring.report_item(i) for i in run_items]
        report.errors += [f"{i.key}: {i.result['error']}" for i in run_items if i.result and not i.done]
        report.errors += [
            post_hook_failure(i)
            for i in run_items
            if ((i.result or {}).get("hooks") or {}).get("post_failed")
        ]
        if all(i.done for i in run_items):
            return job_runs.Ending("succeeded", Exit.OK, None)
        if any(i.gate_refused for i in run_items) and not any(i.pending for i in run_items):
            return job_runs.Ending(
                "refused",
                Exit.REFUSED,
                "refused by the gate right before the swap; "
                "the live target of each refused item was not touched",
            )
        if any(i.refused for i in run_items) and not any(i.pending for i in run_items):
            return job_runs.Ending(
                "refused",
                Exit.UNUSABLE,
                "a backup was refused before anything was touched; name another with --backup",
            )
        restored = sum(1 for i in run_items if i.done)
        return job_runs.Ending(
            "failed",
            Exit.FAILED,
            f"{restored} of {len(run_items)} item(s) restored after {len(report.attempts)} attempt(s); "
            "each failed item is named below with its cause",
        )

"""Jobs of pulih serve: backups and verifications run by the service, under its own account,
with its own register and content, for an authenticated caller (the report's operator).

One job at a time per target: a job locks every database or folder it may touch (address,
port, engine, and database or path: a backup its servers' items, a restore the live targets
it may replace), and a second job that wants one of them is refused, naming the running job
(exit 3), so a backup never interleaves with a restore of the same item and two restores of
one target never both run. Each job has an event stream (the progress lines,
then its end with the report) that any number of clients follow; a client that goes away
cancels nothing, a cancel does. A job the service did not finish (the service was killed) is
found 'running' at the next start and marked 'interrupted'."""

from __future__ import annotations

import asyncio
import datetime as dt
import fnmatch
import json
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pulih import jobs as job_runs
from pulih import register as reg
from pulih import report as reports
from pulih import restoring
from pulih.exitcodes import Exit
from pulih.requests import Refused, Requests
from pulih.service import request_backups, restores

# adopt: an admin's verification of a backup the service never recorded, which then goes on
# the record (backup.adopted) when it passes.
KINDS = {"backup": "backup.yml", "verify": "verify.yml", "adopt": "verify.yml"}

# What the record says of the backups of some (asset_id, item) pairs (Store.recorded_backups).
Recorded = Callable[[list[tuple[str, str]]], dict[str, dict[str, Any]]]


class Cancel(threading.Event):
    """A job's stop flag, with who asked and why (its report says so)."""

    reason: str | None = None


class JobRefused(Exception):
    def __init__(self, code: Exit, message_id: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message_id = code, message_id
        self.run_id: str | None = None  # the report of a refused restore


@dataclass
class Job:
    id: str
    kind: str
    account: str
    limit: str | None
    items: list[str]
    servers: list[str]
    targets: list[str] = field(default_factory=list)  # what the job locks
    request_id: str | None = None
    order: Any = None  # a restore's RestoreOrder: what its gate is asked about
    status: str = "running"
    exit_code: int | None = None
    message: str | None = None
    run_id: str | None = None
    created_at: str = ""
    finished_at: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    cancel: Cancel = field(default_factory=Cancel)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "account": self.account,
            "limit": self.limit,
            "items": self.items,
            "servers": self.servers,
            "targets": self.targets,
            "request_id": self.request_id,
            "status": self.status,
            "exit_code": self.exit_code,
            "message": self.message,
            "run_id": self.run_id,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
        }

    def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)  # one append: followers in the event loop read it whole


def backup_keys(register: reg.Register, scope: list[dict[str, str]]) -> list[str]:
    """The targets a backup of exactly these items touches."""
    wanted = {(s["asset_id"], s["item"]) for s in scope}
    return sorted(
        {
            restores.target_key(a.address, d)
            for a in register.hosts()
            for d in a.data
            if (a.asset_id, d.name) in wanted
        }
    )


def _selected(register: reg.Register, limit: str | None) -> list[str]:
    """The registered servers in operation that a --limit of names, groups or patterns selects."""
    hosts = register.hosts()
    if not limit:
        return sorted(a.hostname for a in hosts)
    parts = [p.strip() for p in limit.split(",") if p.strip()]
    chosen = set()
    for asset in hosts:
        names = {asset.hostname, asset.asset_id, *asset.groups()}
        if any(fnmatch.fnmatchcase(name, part) for part in parts for name in names):
            chosen.add(asset.hostname)
    return sorted(chosen)


def _refused_before_it_began(report: reports.RunReport, exc: JobRefused) -> None:
    """A job refused before it began still leaves its report, on the record."""
    report.errors.append(str(exc))
    report.finish("refused" if exc.code == Exit.REFUSED else "error", int(exc.code))
    report.write()
    exc.run_id = report.run_id


class Jobs:
    def __init__(
        self, inventory: Path | None, *, demo: bool = False, recorded: Recorded | None = None
    ) -> None:
        self.inventory = inventory
        self.demo = demo  # a demo store's service: every report says so
        self.recorded = recorded
        self._jobs: dict[str, Job] = {}
        self._busy: dict[str, str] = {}  # target -> job id
        self._lock = threading.Lock()

    def start(
        self,
        account: str,
        kind: str,
        *,
        limit: str | None,
        items: list[str],
        extravars: dict[str, Any],
        check: bool,
    ) -> Job:
        if kind not in KINDS:
            raise JobRefused(Exit.BAD_INPUT, "job.kind", f"unknown job kind {kind!r} ({', '.join(KINDS)})")
        register = self._register()
        servers = _selected(register, limit)
        if not servers:
            raise JobRefused(
                Exit.BAD_INPUT, "job.limit", f"no registered server in operation matches --limit {limit!r}"
            )
        job = Job(
            id=f"job-{secrets.token_hex(4)}",
            kind=kind,
            account=account,
            limit=limit,
            items=items,
            servers=servers,
            targets=[] if check else restores.item_keys(register, servers, items),
            created_at=reports.utcnow().isoformat().replace("+00:00", "Z"),
        )
        if kind == "verify" and self.recorded is not None:
            # Each backup is held to the record: one not on it, or changed since, is refused.
            pairs = [
                (a.asset_id, d.name)
                for a in register.hosts()
                if a.hostname in servers
                for d in a.data
                if not items or d.name in items
            ]
            extravars = {**extravars, "pulih_verify_recorded": self.recorded(pairs)}
        report = reports.RunReport(
            kind=job.kind,
            command=["pulih", job.kind, *(["--limit", job.limit] if job.limit else []), *job.items],
            check_mode=check,
            limit=job.limit,
            operator=job.account,
            demo=self.demo,
        )

        def work(report: reports.RunReport) -> job_runs.Ending:
            assert self.inventory is not None
            return job_runs.run_job(
                report,
                KINDS[job.kind],
                inventory=self.inventory,
                # Exactly the servers this job locked: never more than --limit's reading above.
                limit=",".join(job.servers),
                items=job.items or None,
                extravars=extravars,
                check=check,
                today=dt.date.today(),
                progress=lambda what, text: job.emit({"type": what, "text": text}),
                cancel=job.cancel,
            )

        self._take(job)
        self._launch(job, report, work)
        return job

    def start_restore(
        self,
        account: str,
        order: restores.RestoreOrder,
        requests: Requests,
        *,
        attempts: int,
        retry_seconds: float,
        gate_socket: str | None,
        age_identity: str | None,
    ) -> Job:
        """A restore under an approved request: its live targets locked, then the gate asked
        (in the job, whose report says why when it refuses), then the attempts."""
        report = reports.RunReport(
            kind="restore_check" if order.check else "restore",
            command=["pulih", "restore", "--request", order.request_id, *order.items],
            check_mode=order.check,
            request_id=order.request_id,
            operator=account,
            demo=self.demo,
        )
        try:
            register = self._register()
            try:
                record = requests.get(order.request_id)
                scope = restores.scope_of(order.items, register) if order.items else record["scope"]
                targets = restores.restore_keys(register, scope, order.target or record["target"])
            except Refused as exc:
                raise JobRefused(Exit.REFUSED, "record.refused", f"refused: {exc}") from None
            except (restoring.RestoreInputError, KeyError, StopIteration) as exc:
                raise JobRefused(
                    Exit.BAD_INPUT,
                    "restore.input",
                    str(exc)
                    if isinstance(exc, restoring.RestoreInputError)
                    else f"request {order.request_id} names an item the register no longer holds",
                ) from None
            by_id = {a.asset_id: a.hostname for a in register.hosts()}
            job = Job(
                id=f"job-{secrets.token_hex(4)}",
                kind=report.kind,
                account=account,
                limit=None,
                items=[f"{s['asset_id']}:{s['item']}" for s in scope],
                servers=sorted({by_id[s["asset_id"]] for s in scope if s["asset_id"] in by_id}),
                targets=[] if order.check else targets,
                request_id=order.request_id,
                order=order,
                created_at=reports.utcnow().isoformat().replace("+00:00", "Z"),
            )
            self._take(job)
        except JobRefused as exc:
            _refused_before_it_began(report, exc)
            raise
        assert self.inventory is not None  # _register() refused a service without one
        run = restores.RestoreRun(
            requests=requests,
            actor=account,
            order=order,
            register_path=self.inventory,
            attempts=order.attempts or attempts,
            retry_seconds=retry_seconds,
            gate_socket=gate_socket,
            job_id=job.id,
            progress=lambda what, text: job.emit({"type": what, "text": text}),
            cancel=job.cancel,
            age_identity=age_identity,
            locked=job.targets,
        )
        self._launch(job, report, run.run)
        return job

    def start_request_backup(
        self,
        account: str,
        request_id: str,
        requests: Requests,
        *,
        check: bool,
        age_identity: str | None,
    ) -> Job:
        """A backup request's run: the items it still lacks a backup of, locked, then the gate
        (in the job, whose report says why when it refuses), then the backup and verification."""
        report = reports.RunReport(
            kind="backup_check" if check else "backup",
            command=["pulih", "request", "backup", request_id, *(["--check"] if check else [])],
            check_mode=check,
            request_id=request_id,
            operator=account,
            demo=self.demo,
        )
        try:
            register = self._register()
            try:
                record = requests.get(request_id)
                scope = request_backups.pending_scope(record)
                servers = request_backups.servers_of(register, scope)
            except Refused as exc:
                raise JobRefused(Exit.REFUSED, "record.refused", f"refused: {exc}") from None
            except KeyError as exc:
                raise JobRefused(
                    Exit.BAD_INPUT,
                    "request.register",
                    f"request {request_id} names a server the register no longer holds in operation: {exc}",
                ) from None
            if record.get("kind") != "backup":
                raise JobRefused(
                    Exit.REFUSED,
                    "record.refused",
                    f"refused: request {request_id} asks for a restore: pulih restore --request {request_id}",
                )
            if not scope:
                raise JobRefused(
                    Exit.REFUSED,
                    "request.backups_made",
                    f"refused: every item of request {request_id} has its verified backup; the requester "
                    "confirms it (pulih request confirm)",
                )
            items = [f"{s['asset_id']}:{s['item']}" for s in scope]
            job = Job(
                id=f"job-{secrets.token_hex(4)}",
                kind=report.kind,
                account=account,
                limit=None,
                items=items,
                servers=servers,
                targets=[] if check else backup_keys(register, scope),
                request_id=request_id,
                created_at=reports.utcnow().isoformat().replace("+00:00", "Z"),
            )
            self._take(job)
        except JobRefused as exc:
            _refused_before_it_began(report, exc)
            raise
        assert self.inventory is not None  # _register() refused a service without one
        run = request_backups.RequestBackupRun(
            requests=requests,
            actor=account,
            request_id=request_id,
            scope=scope,
            register_path=self.inventory,
            progress=lambda what, text: job.emit({"type": what, "text": text}),
            cancel=job.cancel,
            check=check,
            age_identity=age_identity,
        )
        self._launch(job, report, run.run)
        return job

    def _register(self) -> reg.Register:
        """The service's register, or JobRefused saying what is wrong with it."""
        if self.inventory is None:
            raise JobRefused(Exit.FAILED, "service.register", "the service's config names no register")
        try:
            return reg.load_inventory(self.inventory)
        except reg.RegisterError as exc:
            raise JobRefused(
                Exit.FAILED, "service.register", "the service's register is invalid: " + str(exc.problems[0])
            ) from None

    def _take(self, job: Job) -> None:
        """Lock the job's targets, or refuse it naming the job that holds one."""
        with self._lock:
            taken = {t: self._busy[t] for t in job.targets if t in self._busy}
            if taken:
                target, other = next(iter(sorted(taken.items())))
                running = self._jobs[other]
                raise JobRefused(
                    Exit.REFUSED,
                    "job.busy",
                    f"{target} is busy with job {other} ({running.kind} by {running.account}"
                    + (f", request {running.request_id}" if running.request_id else "")
                    + "); wait for it (pulih jobs follow) or cancel it",
                )
            for target in job.targets:
                self._busy[target] = job.id
            self._jobs[job.id] = job

    def _launch(
        self, job: Job, report: reports.RunReport, work: Callable[[reports.RunReport], job_runs.Ending]
    ) -> None:
        job.run_id = report.run_id
        thread = threading.Thread(target=self._run, args=(job, report, work), name=job.id, daemon=True)
        thread.start()

    def _run(
        self, job: Job, report: reports.RunReport, work: Callable[[reports.RunReport], job_runs.Ending]
    ) -> None:
        job.emit({"type": "started", "job": job.id, "run_id": report.run_id})
        try:
            self._run_and_report(job, report, work)
        finally:  # whatever happened, the targets are free again and followers learn the end
            job.finished_at = reports.utcnow().isoformat().replace("+00:00", "Z")
            if job.status == "running":
                job.status, job.exit_code = "error", int(Exit.FAILED)
            with self._lock:
                for target in job.targets:
                    if self._busy.get(target) == job.id:
                        del self._busy[target]
            job.emit({"type": "end", "job": job.as_dict(), "report": report.as_dict()})

    def _run_and_report(
        self, job: Job, report: reports.RunReport, work: Callable[[reports.RunReport], job_runs.Ending]
    ) -> None:
        try:
            ending = work(report)
        except Exception as exc:  # a job never takes the service down; it ends, with the cause
            ending = job_runs.Ending("error", Exit.FAILED, f"{type(exc).__name__}: {exc}")
        if ending.message:
            report.errors.append(ending.message)
        report.finish(ending.status, int(ending.code))
        # The status last: a reader who sees it no longer 'running' sees its exit code too.
        job.exit_code, job.message = int(ending.code), ending.message
        job.status = ending.status
        try:
            report.write()
        except Exception as exc:  # the job's end is still told; the report's fate with it
            job.message = f"{ending.message or ending.status}; its report could not be written: {exc}"

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobRefused(
                Exit.BAD_INPUT, "job.unknown", f"there is no job {job_id!r} (since the service started)"
            )
        return job

    def all(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.created_at)

    async def follow(self, job: Job) -> AsyncIterator[str]:
        """Every event of the job as NDJSON lines, from the first, until its end. Async: a
        follower holds no worker thread while it waits, however many follow."""
        sent, quiet = 0, 0.0
        while True:
            fresh = job.events[sent:]
            for event in fresh:
                yield json.dumps(event, ensure_ascii=False, default=str) + "\n"
                sent += 1
                if event.get("type") == "end":
                    return
            if fresh:
                quiet = 0.0
                continue
            await asyncio.sleep(0.2)
            quiet += 0.2
            if quiet >= 15:  # a follower learns the link still holds
                quiet = 0.0
                yield json.dumps({"type": "alive"}) + "\n"

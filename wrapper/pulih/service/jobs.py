"""Jobs of pulih serve: backups and verifications run by the service, under its own account,
with its own register and content, for an authenticated caller (the report's operator).

One job at a time per server: a job takes a lock on every registered server its --limit
selects, and a second job that wants one of them is refused, naming the running job (exit 3),
so two runs never interleave on one server. Each job has an event stream (the progress lines,
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
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pulih import jobs as job_runs
from pulih import register as reg
from pulih import report as reports
from pulih.exitcodes import Exit

KINDS = {"backup": "backup.yml", "verify": "verify.yml"}


class JobRefused(Exception):
    def __init__(self, code: Exit, message_id: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message_id = code, message_id


@dataclass
class Job:
    id: str
    kind: str
    account: str
    limit: str | None
    items: list[str]
    servers: list[str]
    status: str = "running"
    exit_code: int | None = None
    message: str | None = None
    run_id: str | None = None
    created_at: str = ""
    finished_at: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "account": self.account,
            "limit": self.limit,
            "items": self.items,
            "servers": self.servers,
            "status": self.status,
            "exit_code": self.exit_code,
            "message": self.message,
            "run_id": self.run_id,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
        }

    def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)  # one append: followers in the event loop read it whole


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


class Jobs:
    def __init__(self, inventory: Path | None) -> None:
        self.inventory = inventory
        self._jobs: dict[str, Job] = {}
        self._busy: dict[str, str] = {}  # server -> job id
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
        if self.inventory is None:
            raise JobRefused(Exit.FAILED, "service.register", "the service's config names no register")
        try:
            register = reg.load_inventory(self.inventory)
        except reg.RegisterError as exc:
            raise JobRefused(
                Exit.FAILED, "service.register", "the service's register is invalid: " + str(exc.problems[0])
            ) from None
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
            created_at=reports.utcnow().isoformat().replace("+00:00", "Z"),
        )
        with self._lock:
            taken = {s: self._busy[s] for s in servers if s in self._busy}
            if taken:
                server, other = next(iter(sorted(taken.items())))
                running = self._jobs[other]
                raise JobRefused(
                    Exit.REFUSED,
                    "job.busy",
                    f"{server} is busy with job {other} ({running.kind} by {running.account}); "
                    "wait for it (pulih jobs follow) or cancel it",
                )
            for server in servers:
                self._busy[server] = job.id
            self._jobs[job.id] = job
        thread = threading.Thread(target=self._run, args=(job, extravars, check), name=job.id, daemon=True)
        thread.start()
        return job

    def _run(self, job: Job, extravars: dict[str, Any], check: bool) -> None:
        report = reports.RunReport(
            kind=job.kind,
            command=["pulih", job.kind, *(["--limit", job.limit] if job.limit else []), *job.items],
            check_mode=check,
            limit=job.limit,
            operator=job.account,
        )
        job.run_id = report.run_id
        job.emit({"type": "started", "job": job.id, "run_id": report.run_id})
        try:
            self._run_and_report(job, report, extravars, check)
        finally:  # whatever happened, the servers are free again and followers learn the end
            job.finished_at = reports.utcnow().isoformat().replace("+00:00", "Z")
            if job.status == "running":
                job.status, job.exit_code = "error", int(Exit.FAILED)
            with self._lock:
                for server in job.servers:
                    if self._busy.get(server) == job.id:
                        del self._busy[server]
            job.emit({"type": "end", "job": job.as_dict(), "report": report.as_dict()})

    def _run_and_report(
        self, job: Job, report: reports.RunReport, extravars: dict[str, Any], check: bool
    ) -> None:
        try:
            assert self.inventory is not None
            ending = job_runs.run_job(
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
        except Exception as exc:  # a job never takes the service down; it ends, with the cause
            ending = job_runs.Ending("error", Exit.FAILED, f"{type(exc).__name__}: {exc}")
        if ending.message:
            report.errors.append(ending.message)
        report.finish(ending.status, int(ending.code))
        job.status, job.exit_code, job.message = ending.status, int(ending.code), ending.message
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

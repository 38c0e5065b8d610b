"""`pulih jobs ...`: backups and verifications run by pulih serve, followed from here."""

from __future__ import annotations

import json
import signal
from typing import Annotated, Any, NoReturn

import typer
from rich.table import Table

from pulih.cli.common import JsonOpt, call_service, err, fail, out, print_outcome
from pulih.client import ServiceError, follow

jobs_app = typer.Typer(help="Jobs of the service: start, list, show, follow, cancel.", no_args_is_help=True)


def _call(method: str, path: str, body: dict[str, Any] | None, as_json: bool) -> Any:
    return call_service(method, path, body, as_json=as_json)


class _Stopped(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _stop_on(signum: int, _frame: object) -> None:
    raise _Stopped(signal.Signals(signum).name)


def follow_to_end(job_id: str, as_json: bool) -> NoReturn:
    """Print the job's progress until it ends; Ctrl-C and SIGTERM (systemd, cron, timeout) ask
    the service to cancel it, and the job's end is still shown; a client that merely goes away
    (killed, its terminal lost) cancels nothing."""
    signal.signal(signal.SIGTERM, _stop_on)
    end: dict[str, Any] | None = None
    shown = 0  # events printed: following again after a cancel starts from the first
    while end is None:
        try:
            for index, event in enumerate(
                e for e in follow(f"/jobs/{job_id}/events") if e["type"] != "alive"
            ):
                if index < shown:
                    continue
                shown += 1
                if event["type"] == "task":
                    err.print(f"{job_id}: {event['text']}", soft_wrap=True, style="dim")
                elif event["type"] in ("stream", "host"):
                    err.print(f"  {event['text']}", soft_wrap=True)
                elif event["type"] == "end":
                    end = event
        except (KeyboardInterrupt, _Stopped) as stop:
            why = stop.name if isinstance(stop, _Stopped) else "Ctrl-C"
            _call("POST", f"/jobs/{job_id}/cancel", {"reason": why}, as_json)
            err.print(f"{job_id}: cancel asked ({why}); waiting for the job to stop", soft_wrap=True)
        except ServiceError as exc:
            fail(exc.message, exc.code, as_json=as_json)
    job, report = end["job"], end["report"]
    print_outcome(report, f"job {job_id}, run {job['run_id']}", as_json=as_json)
    raise typer.Exit(int(job["exit_code"] or 0))


@jobs_app.command("start")
def start(
    kind: Annotated[str, typer.Argument(help="backup or verify")],
    limit: Annotated[str | None, typer.Option(help="Registered servers, groups or patterns.")] = None,
    item: Annotated[
        list[str] | None, typer.Option("--item", help="Only this data item (repeatable).")
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Test-restore each new backup.")
    ] = True,
    check: Annotated[bool, typer.Option("--check", help="Change nothing; say what would be done.")] = False,
    detach: Annotated[
        bool, typer.Option("--detach", help="Start it and return (pulih jobs follow ID).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start a backup or verification as a job of the service, under its register and keys."""
    body = {"kind": kind, "limit": limit, "items": item or [], "verify": verify, "check": check}
    job = _call("POST", "/jobs", body, as_json)
    if detach:
        if as_json:
            print(json.dumps(job, indent=2))
        err.print(f"job {job['id']} started ({kind} of {', '.join(job['servers'])})", soft_wrap=True)
        return
    err.print(f"job {job['id']}: {kind} of {', '.join(job['servers'])}", soft_wrap=True)
    follow_to_end(job["id"], as_json)


@jobs_app.command("follow")
def follow_job(job_id: str, as_json: JsonOpt = False) -> None:
    """Follow a job to its end (from its first event)."""
    follow_to_end(job_id, as_json)


@jobs_app.command("show")
def show(job_id: str, as_json: JsonOpt = False) -> None:
    """One job."""
    job = _call("GET", f"/jobs/{job_id}", None, as_json)
    if as_json:
        print(json.dumps(job, indent=2))
        return
    err.print(
        f"{job['id']}: {job['kind']} by {job['account']}, {job['status']}"
        + (f" (exit {job['exit_code']})" if job["exit_code"] is not None else ""),
        soft_wrap=True,
    )


@jobs_app.command("list")
def list_jobs(as_json: JsonOpt = False) -> None:
    """The service's jobs since it started."""
    doc = _call("GET", "/jobs", None, as_json)
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    table = Table("job", "kind", "by", "servers", "status", "run")
    for job in doc["jobs"]:
        table.add_row(
            job["id"],
            job["kind"],
            job["account"],
            ", ".join(job["servers"]),
            job["status"],
            job["run_id"] or "",
        )
    out.print(table)


@jobs_app.command("cancel")
def cancel(job_id: str, as_json: JsonOpt = False) -> None:
    """Ask the service to stop a job (what is half-written is never listed)."""
    job = _call("POST", f"/jobs/{job_id}/cancel", None, as_json)
    if as_json:
        print(json.dumps(job, indent=2))
    err.print(f"job {job_id}: cancel asked", soft_wrap=True)

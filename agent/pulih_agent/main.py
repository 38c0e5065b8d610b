"""The agent's entry point: one request, its items run one by one, each reported alone (a
streaming mode has one item: its standard input or output is that item's artifact)."""

from __future__ import annotations

import os
import sys
import time

from . import files, hooks, mariadb, postgresql
from .preflight import pg_restore_problem, require_tools, room_problem, tools_problem
from .protocol import STREAMING, AgentError, BadRequest, emit, read_request, say_hello, set_current_item


def probe(request):
    """Before a restore touches anything: whether its target exists (an alternate target
    must not), and what would stop its stage here (missing tools, too little room)."""
    engine, live = request["engine"], request["live"]
    problems = [tools_problem("stage", engine, request)]
    if engine == "postgresql" and not problems[0]:
        problems.append(pg_restore_problem(request.get("dumped_with")))
    if problems[0]:  # without its client library the database cannot even be asked
        emit("result", engine=engine, live=live, exists=None, problems=problems[:1])
        return
    if engine == "files":
        exists = os.path.lexists(live)
        room = files.files_stage_room(request)
    elif engine == "postgresql":
        admin = postgresql.pg_connect(request["conn"], "postgres")
        try:
            exists = bool(postgresql.pg_database_info(admin.cursor(), live))
            room = postgresql.pg_stage_room(admin.cursor(), request)
        finally:
            admin.close()
    else:
        admin = mariadb.my_connect(request["conn"])
        try:
            mariadb.my_recover_swap(admin.cursor(), request)
            exists = bool(mariadb.my_schema_charset(admin.cursor(), live))
            room = mariadb.my_stage_room(admin.cursor(), request)
        finally:
            admin.close()
    problems.append(room_problem("restore's stage", room))
    emit("result", engine=engine, live=live, exists=exists, problems=[p for p in problems if p])


# (mode, engine) -> what runs it; pg_globals is dumped only.
HANDLERS = {
    ("dump", "postgresql"): postgresql.dump_postgresql,
    ("dump", "pg_globals"): postgresql.dump_pg_globals,
    ("verify", "postgresql"): postgresql.verify_postgresql,
    ("stage", "postgresql"): postgresql.stage_postgresql,
    ("swap", "postgresql"): postgresql.swap_postgresql,
    ("discard", "postgresql"): postgresql.discard_postgresql,
    ("dump", "files"): files.dump_files,
    ("verify", "files"): files.verify_files,
    ("stage", "files"): files.stage_files,
    ("swap", "files"): files.swap_files,
    ("discard", "files"): files.discard_files,
}
for _mode in ("dump", "verify", "stage", "swap", "discard"):
    for _engine in ("mariadb", "mysql"):
        HANDLERS[(_mode, _engine)] = getattr(mariadb, "%s_mariadb" % _mode)
for _engine in ("postgresql", "mariadb", "mysql", "files"):
    HANDLERS[("probe", _engine)] = probe
    HANDLERS[("hook", _engine)] = hooks.run_hooks  # the register's commands around a swap


def run_item(mode, item):
    handler = HANDLERS.get((mode, item["engine"]))
    if handler is None:
        raise BadRequest("the agent does not %s %s items" % (mode, item["engine"]))
    if mode in STREAMING:
        require_tools(mode, item["engine"], item)
    handler(item)


def failure_text(exc):
    if isinstance(exc, AgentError):
        return str(exc)
    return "%s: %s" % (type(exc).__name__, exc)  # reported with its class, and the item fails


def main():
    """Exit 0 when every item succeeded; 3 when one failed as the agent foresaw (its message
    says what to do), 4 on anything else, 5 when the request itself is wrong."""
    started = time.time()
    code = 0
    say_hello()  # before the request is read: a refused one is answered by a known release too
    try:
        request = read_request()
        tool_path = request.get("tool_path") or []
        if tool_path:  # the operator's folders first: a pg_dump of the server's major version
            os.environ["PATH"] = os.pathsep.join([*tool_path, os.environ.get("PATH", os.defpath)])
        items = request["items"]
        for index, item in enumerate(items):
            set_current_item(index, item, len(items) > 1)
            try:
                run_item(request["mode"], item)
            except BadRequest:
                raise
            except Exception as exc:
                if len(items) == 1:
                    raise
                # One item failing is reported alone; the others still run.
                sys.stderr.write(
                    "pulih agent: item %d (%s): %s\n" % (index, item.get("name", "?"), failure_text(exc))
                )
                emit("item_failed", message=failure_text(exc))
                code = max(code, 3 if isinstance(exc, AgentError) else 4)
        set_current_item(0, {}, False)
    except BadRequest as exc:
        sys.stderr.write("pulih agent: %s\n" % exc)
        code = 5
    except Exception as exc:
        sys.stderr.write("pulih agent: %s\n" % failure_text(exc))
        code = 3 if isinstance(exc, AgentError) else 4
    finally:
        emit("timing", seconds=round(time.time() - started, 3))
    return code


def run():
    """The zipapp's entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()

"""Before a dump, a verification or a stage reads or writes a byte: whether this server has
what the request needs (tools, Python modules, versions, room), all that is missing said at
once, with the Debian package that brings it."""

from __future__ import annotations

import os
import shutil
import sys

#
# Before a dump, a verification or a stage reads or writes a byte, the agent checks that
# this server has what the request needs, and says all that is missing at once (a person
# installs it in one go), with the Debian package that brings it.
from . import OLDEST_PYTHON
from .protocol import AgentError, tool_version

PACKAGES = {
    "zstd": "zstd",
    "age": "age",
    "pg_dump": "postgresql-client",
    "pg_dumpall": "postgresql-client",
    "pg_restore": "postgresql-client",
    "mariadb-dump": "mariadb-client",
    "mariadb": "mariadb-client",
    "tar": "tar",
    "psycopg2": "python3-psycopg2",
    "pymysql": "python3-pymysql",
}
# (mode, engine) -> commands (alternatives joined by "|") and Python modules it runs.
NEEDS = {
    ("dump", "postgresql"): (["pg_dump"], ["psycopg2"]),
    ("dump", "pg_globals"): (["pg_dumpall"], []),
    ("dump", "mariadb"): (["mariadb-dump|mysqldump"], ["pymysql"]),
    ("dump", "files"): (["tar"], []),
    ("verify", "postgresql"): (["pg_restore"], ["psycopg2"]),
    ("verify", "mariadb"): (["mariadb|mysql"], ["pymysql"]),
    ("verify", "files"): (["tar"], []),
}
for _key in list(NEEDS):
    if _key[1] != "pg_globals":
        NEEDS[("stage", _key[1])] = NEEDS[("verify", _key[1])]
for _key in [k for k in NEEDS if k[1] == "mariadb"]:
    NEEDS[(_key[0], "mysql")] = NEEDS[_key]


def missing_tools(mode, engine, request):
    """What of the request's commands and Python modules this server lacks."""
    commands, modules = NEEDS.get((mode, engine), ([], []))
    commands = ["zstd", *commands]
    if request.get("recipients") if mode == "dump" else request.get("encrypted"):
        commands.append("age")
    missing = []
    for command in commands:
        choices = command.split("|")
        if not any(shutil.which(choice) for choice in choices):
            missing.append(choices[0])
    for name in modules:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    return missing


def tools_problem(mode, engine, request):
    """What this server lacks to run the request, in one sentence; None when nothing."""
    if sys.version_info < OLDEST_PYTHON:
        return "this server's Python is %d.%d; the agent needs %d.%d or later (set pulih_common_python)" % (
            sys.version_info[:2] + OLDEST_PYTHON
        )
    missing = missing_tools(mode, engine, request)
    if not missing:
        return None
    packages = sorted({PACKAGES.get(name, name) for name in missing})
    return (
        "missing on this server: %s (Debian packages: %s; or put the commands on pulih_common_tool_path)"
        % (
            ", ".join(missing),
            " ".join(packages),
        )
    )


def require_tools(mode, engine, request):
    problem = tools_problem(mode, engine, request)
    if problem:
        raise AgentError(problem)


def major_version(text):
    """The major version in a tool's or server's version line ("pg_dump (PostgreSQL) 15.8",
    "15.8 (Debian 15.8-0+deb12u1)", "9.6.24"): 15, 15, 9."""
    for word in (text or "").replace("(", " ").split():
        head = word.split(".")[0]
        if head.isdigit():
            return int(head)
    return None


def require_pg_dump_for(server_version):
    """pg_dump refuses a server newer than itself; say so before a dump starts."""
    tool = tool_version(["pg_dump", "--version"])
    have, need = major_version(tool), major_version(server_version)
    if have is not None and need is not None and have < need:
        raise AgentError(
            "this server's pg_dump is %s but the PostgreSQL server is %s: install postgresql-client-%d "
            "(pg_dump must be at least the server's major version)" % (have, server_version, need)
        )


def pg_restore_problem(dumped_with):
    """pg_restore cannot read an archive written by a newer pg_dump."""
    tool = tool_version(["pg_restore", "--version"])
    have, need = major_version(tool), major_version(dumped_with)
    if have is not None and need is not None and have < need:
        return (
            "this server's pg_restore is %s but the backup was written by %s: "
            "install postgresql-client-%d or later here" % (have, dumped_with, need)
        )
    return None


def require_pg_restore_for(dumped_with):
    problem = pg_restore_problem(dumped_with)
    if problem:
        raise AgentError(problem)


def free_bytes(path):
    """Bytes an unprivileged writer may still use on the filesystem holding `path` (or its
    nearest existing parent)."""
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    info = os.statvfs(path or "/")
    return info.f_bavail * info.f_frsize


def gib(count):
    return (
        "%.1f GiB" % (count / float(1 << 30)) if count >= 1 << 27 else "%.1f MiB" % (count / float(1 << 20))
    )


def room_problem(where, needs):
    """Whether a filesystem cannot hold what goes there. `needs` is a list of (path, bytes);
    paths on one filesystem add up. A path that is not absolute (a database whose server
    runs elsewhere) is not checked here."""
    by_device = {}
    for path, need in needs:
        if not need or not path or not os.path.isabs(path):
            continue
        while not os.path.exists(path):
            path = os.path.dirname(path)
        entry = by_device.setdefault(os.stat(path).st_dev, [path, 0])
        entry[1] += int(need)
    for path, need in by_device.values():
        have = free_bytes(path)
        if have < need:
            return (
                "not enough room for the %s: %s free at %s, it needs about %s (the backup's size at "
                "dump time plus pulih_common_space_margin_percent); free space there first"
                % (where, gib(have), path, gib(need))
            )
    return None


def require_room(where, needs):
    problem = room_problem(where, needs)
    if problem:
        raise AgentError(problem + ", nothing was touched")


def database_directory(cur, query):
    """The server's data directory when this agent can see it (the server runs here)."""
    try:
        cur.execute(query)
        row = cur.fetchone()
    except Exception:  # a backup account that may not read it: the room is not checked
        return None
    path = row[0] if row else None
    return path if path and os.path.isdir(path) else None

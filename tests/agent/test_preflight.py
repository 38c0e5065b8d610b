"""The agent's preflight, run as it runs on a server (python3 pulih_agent.pyz, a request on
standard input): before a dump, verification or stage reads or writes a byte, it names
everything the server lacks, with the Debian package, and writes nothing to standard output.

The server's PATH is a folder holding links to the real tools the case keeps, so "missing"
is real: the agent finds no such program."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.agentkit import ensure_built, package, request_line


def load_agent():
    return package("preflight")


def server_path(tmp_path: Path, keep: list[str]) -> str:
    """A PATH holding only the real tools named in `keep`."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in keep:
        real = shutil.which(tool)
        assert real, f"{tool} is installed on the machine that runs the tests"
        (folder / tool).symlink_to(real)
    return str(folder)


def run_agent(request: dict, path: str, tool_path: list[str] | None = None) -> subprocess.CompletedProcess:
    if tool_path is not None:
        request = {**request, "tool_path": tool_path}
    return subprocess.run(
        # As on a server: the system's Python, with its psycopg2 and PyMySQL.
        ["/usr/bin/python3", str(ensure_built())],
        input=request_line(request),
        capture_output=True,
        env={"PATH": path, "HOME": os.environ.get("HOME", "/root")},
        timeout=60,
        check=False,
    )


def message(run: subprocess.CompletedProcess) -> str:
    lines = [line for line in run.stderr.decode().splitlines() if line.startswith("pulih agent: ")]
    assert len(lines) == 1, run.stderr.decode()
    return lines[0]


RESTORE_IDS = {"live": "x", "token": "t0", "nonce": "n0"}
DUMP_PG = {"mode": "dump", "engine": "postgresql", "conn": {"database": "nowhere", "host": "127.0.0.254"}}


def test_a_dump_names_every_missing_tool_and_its_package_before_it_connects(tmp_path):
    run = run_agent({**DUMP_PG, "recipients": ["age1" + "q" * 58]}, server_path(tmp_path, []))
    assert run.returncode == 3
    assert run.stdout == b"", "nothing streamed"
    text = message(run)
    assert "missing on this server: zstd, pg_dump, age" in text
    assert "Debian packages: age postgresql-client zstd" in text
    assert "cannot connect" not in text, "the tools are checked before the database is asked"


def test_age_is_needed_only_when_encrypting(tmp_path):
    run = run_agent(DUMP_PG, server_path(tmp_path, ["pg_dump"]))
    assert "missing on this server: zstd (" in message(run)


@pytest.mark.parametrize(
    ("request_", "keep", "missing"),
    [
        ({"mode": "dump", "engine": "mariadb", "conn": {"database": "x"}}, ["zstd"], "mariadb-dump"),
        (
            {"mode": "verify", "engine": "mariadb", "conn": {"database": "x"}, "scratch_database": "s"},
            ["zstd"],
            "mariadb",
        ),
        (
            {"mode": "verify", "engine": "postgresql", "conn": {"database": "x"}, "scratch_database": "s"},
            ["zstd"],
            "pg_restore",
        ),
        (
            {
                "mode": "stage",
                "engine": "postgresql",
                "conn": {"database": "x"},
                "encrypted": True,
                **RESTORE_IDS,
            },
            ["zstd", "pg_restore"],
            "age",
        ),
        ({"mode": "dump", "engine": "files", "path": "/srv"}, ["zstd"], "tar"),
        ({"mode": "dump", "engine": "pg_globals", "conn": {"database": "x"}}, ["zstd"], "pg_dumpall"),
    ],
)
def test_each_mode_and_engine_names_what_it_runs(tmp_path, request_, keep, missing):
    text = message(run_agent(request_, server_path(tmp_path, keep)))
    assert f"missing on this server: {missing} (" in text


def test_tool_path_is_searched_first(tmp_path):
    """A tool found only in pulih_common_tool_path counts as present (an empty PATH
    otherwise): the dump gets past preflight to the database, which is not there."""
    tools = Path(server_path(tmp_path, ["zstd", "pg_dump"]))
    empty = tmp_path / "empty"
    empty.mkdir()
    text = message(run_agent(DUMP_PG, str(empty), tool_path=[str(tools)]))
    assert "missing" not in text
    assert "cannot connect to PostgreSQL" in text


def test_major_versions_of_tools_and_servers():
    agent = load_agent()
    assert agent.major_version("pg_dump (PostgreSQL) 15.8") == 15
    assert agent.major_version("15.8 (Debian 15.8-0+deb12u1)") == 15
    assert agent.major_version("9.6.24") == 9
    assert agent.major_version(None) is None


def test_room_is_refused_with_what_is_free_and_what_is_needed(tmp_path, monkeypatch):
    agent = load_agent()
    assert agent.free_bytes(str(tmp_path)) > 0
    # What the filesystem has free, held still: the real figure moves with every other test
    # writing or deleting on it (a busy run freed more than the 2 bytes of margin once).
    free = 10 * 2**30
    monkeypatch.setattr(agent, "free_bytes", lambda _path: free)
    assert agent.room_problem("stage", [(str(tmp_path), free // 2)]) is None
    # Two needs on one filesystem add up.
    assert agent.room_problem(
        "stage", [(str(tmp_path), free // 2 + 1), (str(tmp_path / "x" / "y"), free // 2 + 1)]
    )
    text = agent.room_problem("restore's stage", [(str(tmp_path), free * 2)])
    assert text.startswith("not enough room for the restore's stage: ")
    assert str(tmp_path) in text
    # A database whose server runs elsewhere (no local data directory): not checked here.
    assert agent.room_problem("stage", [(None, 10**18)]) is None

"""The PostgreSQL engine against a real server: the connection's secrets, a dump with the row
counts of its own snapshot, a test restore, and a restore's stage, swap and discard, with their
failure paths (a wrong password, a corrupted artifact, a stage that is gone, a target that
must not exist), each leaving the live database as it was."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests import agentkit

pytestmark = pytest.mark.lab
postgresql = agentkit.package("postgresql")
IDS = {"token": "pg1", "nonce": "n1"}


def conn(server, database="agent_pg", **extra):
    host = server["host"]
    return {
        "host": host.address,
        "port": host.pg_port,
        "user": server["user"],
        "password": server["password"],
        "database": database,
        **extra,
    }


def psql(server, sql, database="postgres"):
    return server["state"].psql(server["host"], sql, database).strip()


@pytest.fixture(scope="module")
def backup(server):
    """agent_pg with 3 rows in two tables, and its dump."""
    psql(server, "DROP DATABASE IF EXISTS agent_pg WITH (FORCE); CREATE DATABASE agent_pg;")
    psql(
        server,
        "CREATE TABLE surat (id int PRIMARY KEY, perihal text); INSERT INTO surat VALUES (1, 'a'), (2, 'b');"
        "CREATE SCHEMA arsip; CREATE TABLE arsip.lama (id int); INSERT INTO arsip.lama VALUES (1);",
        "agent_pg",
    )
    run = agentkit.run({"mode": "dump", "engine": "postgresql", "conn": conn(server)})
    assert run.code == 0, run.stderr
    return run


@pytest.fixture(autouse=True)
def live_as_backed_up(server, backup):
    """Each test starts from the live database as it was backed up (2 letters, 1 archive row)."""
    psql(server, "DELETE FROM surat WHERE id > 2", "agent_pg")
    assert counts(server) == "2,1"


def counts(server, database="agent_pg"):
    return psql(
        server, "SELECT (SELECT count(*) FROM surat) || ',' || (SELECT count(*) FROM arsip.lama)", database
    )


def test_the_password_goes_in_a_passfile_in_memory_never_the_environment(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "from-the-environment")
    env = postgresql.pg_env(
        {"host": "db", "port": 5432, "user": "u", "password": "a:b\\c", "database": "simpeg"}
    )
    assert "PGPASSWORD" not in env
    assert env["PGPASSFILE"].startswith("/dev/fd/")
    with Path(env["PGPASSFILE"]).open() as passfile:
        assert passfile.read() == "*:*:*:*:a\\:b\\\\c\n", "':' and '\\' escaped as libpq wants"
    assert (env["PGHOST"], env["PGPORT"], env["PGUSER"], env["PGDATABASE"]) == ("db", "5432", "u", "simpeg")
    assert (
        postgresql.pg_env({"host": "db", "socket": "/run/pg", "database": "x"}, "other")["PGHOST"]
        == "/run/pg"
    )
    assert postgresql.pg_env({"database": "x"}, "a=b dbname=c")["PGDATABASE"] == "a=b dbname=c", "a name only"


def test_a_dump_carries_the_row_counts_of_its_own_snapshot(server, backup):
    result = backup.result
    assert result["row_counts"] == {"public.surat": 2, "arsip.lama": 1}
    assert result["server_version"].split(".")[0].isdigit()
    assert "--snapshot" in result["consistency"]
    assert result["tools"]["pg_dump"].startswith("pg_dump (PostgreSQL)")
    plain = subprocess.run(
        ["zstd", "-q", "-d", "-c"], input=backup.stdout, capture_output=True, check=True
    ).stdout
    assert plain.startswith(b"PGDMP"), "pg_dump's custom format inside zstd"


def test_a_wrong_password_fails_with_the_database_named_and_the_password_nowhere(server):
    run = agentkit.run({"mode": "dump", "engine": "postgresql", "conn": conn(server, password="salah-sandi")})
    assert run.code == 3 and run.stdout == b""
    assert run.message.startswith("cannot connect to PostgreSQL database 'agent_pg': ")
    assert "salah-sandi" not in run.stderr and server["password"] not in run.stderr


def test_the_roles_are_dumped_with_their_passwords_when_the_account_may_read_them(server):
    run = agentkit.run({"mode": "dump", "engine": "pg_globals", "conn": conn(server)})
    assert run.code == 0, run.stderr
    assert run.result["role_passwords"] is True
    sql = subprocess.run(["zstd", "-q", "-d", "-c"], input=run.stdout, capture_output=True, check=True).stdout
    assert b"CREATE ROLE pulih_backup" in sql


def test_a_test_restore_counts_the_rows_and_drops_its_scratch_database(server, backup):
    run = agentkit.run(
        {
            "mode": "verify",
            "engine": "postgresql",
            "conn": conn(server),
            "scratch_database": "pulih_verify_t1",
        },
        backup.stdout,
    )
    assert run.code == 0, run.stderr
    assert run.result["row_counts"] == backup.result["row_counts"]
    assert psql(server, "SELECT count(*) FROM pg_database WHERE datname = 'pulih_verify_t1'") == "0"


def test_a_corrupted_artifact_fails_the_stage_and_leaves_the_live_database(server, backup):
    psql(server, "INSERT INTO surat VALUES (3, 'c')", "agent_pg")
    data = bytearray(backup.stdout)
    data[len(data) // 2] ^= 0xFF
    run = agentkit.run(
        {"mode": "stage", "engine": "postgresql", "conn": conn(server), "live": "agent_pg", **IDS},
        bytes(data),
    )
    assert run.code == 3, run.stderr
    assert "exited" in run.message
    assert counts(server) == "3,1"
    assert psql(server, "SELECT count(*) FROM pg_database WHERE datname LIKE 'pulih_restore_pg1_%'") == "0"


def restore(server, backup, mode, **extra):
    request = {"mode": mode, "engine": "postgresql", "conn": conn(server), "live": "agent_pg", **IDS, **extra}
    return agentkit.run(request, backup.stdout if mode == "stage" else b"")


def test_stage_then_swap_brings_the_backup_back_and_ends_the_live_sessions(server, backup):
    psql(server, "INSERT INTO surat VALUES (9, 'after the backup')", "agent_pg")
    # A leftover of an interrupted attempt (another nonce) goes first.
    psql(server, "CREATE DATABASE pulih_restore_pg1_old")
    staged = restore(server, backup, "stage", jobs=1)
    assert staged.code == 0, staged.stderr
    assert staged.result["stage"] == "pulih_restore_pg1_n1" and staged.result["live_existed"] is True
    assert staged.result["row_counts"] == backup.result["row_counts"]
    assert counts(server) == "3,1", "the stage reads nothing live"
    assert psql(server, "SELECT count(*) FROM pg_database WHERE datname = 'pulih_restore_pg1_old'") == "0"
    session = subprocess.Popen(
        [
            "psql",
            "-X",
            "-h",
            server["state"].pg_socket_dir(server["host"]),
            "-p",
            str(server["host"].pg_port),
            "-U",
            "postgres",
            "-d",
            "agent_pg",
            "-c",
            "SELECT pg_sleep(300)",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        swapped = restore(server, backup, "swap")
    finally:
        session.kill()
        session.wait()
    assert swapped.code == 0, swapped.stderr
    assert swapped.result["replaced"] is True and swapped.result["kept_old"] is None
    assert counts(server) == "2,1"
    assert set(swapped.result["timings"]) == {"swap", "drop_replaced", "count"}
    assert psql(server, "SELECT count(*) FROM pg_database WHERE datname LIKE 'pulih\\_%'") == "0"


def test_keep_old_keeps_the_replaced_database(server, backup):
    psql(server, "INSERT INTO surat VALUES (7, 'x')", "agent_pg")
    assert restore(server, backup, "stage", nonce="n2").code == 0
    swapped = restore(server, backup, "swap", nonce="n2", keep_old=True)
    assert swapped.code == 0 and swapped.result["kept_old"] == "pulih_old_pg1"
    assert counts(server, "pulih_old_pg1") == "3,1" and counts(server) == "2,1"
    psql(server, "DROP DATABASE pulih_old_pg1")


def test_discard_drops_the_stage_and_a_swap_without_it_is_refused(server, backup):
    assert restore(server, backup, "stage", nonce="n3").code == 0
    discarded = restore(server, backup, "discard", nonce="n3")
    assert discarded.code == 0 and discarded.result["discarded"] == "pulih_restore_pg1_n3"
    swap = restore(server, backup, "swap", nonce="n3")
    assert (
        swap.code == 3
        and swap.message == "the restored copy pulih_restore_pg1_n3 is gone: run the restore again"
    )
    assert counts(server) == "2,1"


def test_an_alternate_target_that_exists_is_refused_and_a_new_one_made(server, backup):
    refused = restore(server, backup, "stage", live="postgres", must_not_exist=True)
    assert refused.code == 3 and "postgres already exists on the target" in refused.message
    request = {"live": "agent_pg_copy", "must_not_exist": True, "nonce": "n4"}
    assert restore(server, backup, "stage", **request).code == 0
    swapped = restore(server, backup, "swap", **request)
    assert swapped.code == 0 and swapped.result["replaced"] is False
    assert counts(server, "agent_pg_copy") == "2,1"
    psql(server, "DROP DATABASE agent_pg_copy")

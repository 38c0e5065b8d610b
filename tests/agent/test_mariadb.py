"""The MariaDB engine against a real server: client options in memory (a control character
refused), a dump with row counts from its own moment, a test restore, and a restore's stage,
journaled swap (triggers, views, routines and events brought back with the tables; undone
after a kill mid-way) and discard, each failure leaving the live schema as it was."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests import agentkit

pytestmark = pytest.mark.lab
mariadb = agentkit.package("mariadb")
protocol = agentkit.package("protocol")
IDS = {"token": "my1", "nonce": "n1"}
SCHEMA = """
    DROP DATABASE IF EXISTS agent_my; CREATE DATABASE agent_my; USE agent_my;
    CREATE TABLE pasien (id INT PRIMARY KEY, nama VARCHAR(40)) ENGINE=InnoDB;
    CREATE TABLE jejak (id INT AUTO_INCREMENT PRIMARY KEY, pasien INT) ENGINE=InnoDB;
    INSERT INTO pasien VALUES (1, 'Ani'), (2, 'Budi');
    CREATE TRIGGER catat AFTER INSERT ON pasien FOR EACH ROW INSERT INTO jejak (pasien) VALUES (NEW.id);
    CREATE VIEW semua AS SELECT id, nama FROM pasien;
    CREATE FUNCTION dua(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;
"""


def conn(server, **extra):
    host = server["host"]
    base = {
        "host": host.address,
        "port": host.mariadb_port,
        "user": server["user"],
        "password": server["password"],
    }
    return {**base, "database": "agent_my", **extra}


def sql(server, text):
    return server["state"].mariadb(server["host"], text).strip()


def objects(server, schema="agent_my"):
    return sql(
        server,
        f"SELECT GROUP_CONCAT(n ORDER BY n) FROM ("
        f"SELECT CONCAT('trigger ', TRIGGER_NAME) n FROM information_schema.TRIGGERS "
        f"WHERE TRIGGER_SCHEMA='{schema}' "
        f"UNION ALL SELECT CONCAT('view ', TABLE_NAME) FROM information_schema.VIEWS "
        f"WHERE TABLE_SCHEMA='{schema}' "
        f"UNION ALL SELECT CONCAT('routine ', ROUTINE_NAME) FROM information_schema.ROUTINES "
        f"WHERE ROUTINE_SCHEMA='{schema}') o",
    )


@pytest.fixture(scope="module")
def backup(server):
    sql(server, SCHEMA)
    run = agentkit.run({"mode": "dump", "engine": "mariadb", "conn": conn(server)})
    assert run.code == 0, run.stderr
    return run


@pytest.fixture(autouse=True)
def live_as_backed_up(server, backup):
    sql(server, "DELETE FROM agent_my.pasien WHERE id > 2; DELETE FROM agent_my.jejak")
    assert rows(server) == "2"


def rows(server, schema="agent_my"):
    return sql(server, f"SELECT COUNT(*) FROM {schema}.pasien")


def test_client_options_are_an_in_memory_file_and_refuse_a_line_break():
    path = mariadb.my_defaults_file({"user": "u", "password": 'p"a\\ss', "host": "db", "port": 3307})
    assert path.startswith("/dev/fd/")
    text = Path(path).read_text()
    assert text == '[client]\nuser="u"\npassword="p\\"a\\\\ss"\nhost="db"\nport=3307\nprotocol=TCP\n'
    with pytest.raises(protocol.AgentError, match="control character"):
        mariadb.my_defaults_file({"user": "u", "password": "x\nhost=evil"})


def test_a_dump_has_the_row_counts_and_every_kind_of_object(server, backup):
    assert backup.result["row_counts"] == {"pasien": 2, "jejak": 0}
    plain = subprocess.run(
        ["zstd", "-q", "-d", "-c"], input=backup.stdout, capture_output=True, check=True
    ).stdout
    for word in (b"CREATE TABLE `pasien`", b"TRIGGER", b"VIEW `semua`", b"FUNCTION `dua`"):
        assert word in plain


def test_a_server_that_is_down_fails_the_dump_and_writes_nothing(server):
    run = agentkit.run({"mode": "dump", "engine": "mariadb", "conn": conn(server, port=9)})
    assert run.code == 3 and run.stdout == b""
    assert run.message.startswith("cannot connect to MariaDB/MySQL: ")
    assert server["password"] not in run.stderr


def test_a_test_restore_counts_the_rows_and_drops_its_scratch(server, backup):
    run = agentkit.run(
        {"mode": "verify", "engine": "mariadb", "conn": conn(server), "scratch_database": "pulih_verify_m1"},
        backup.stdout,
    )
    assert run.code == 0, run.stderr
    assert run.result["row_counts"] == backup.result["row_counts"]
    assert sql(server, "SHOW DATABASES LIKE 'pulih_verify_m1'") == ""


def restore(server, backup, mode, **extra):
    request = {"mode": mode, "engine": "mariadb", "conn": conn(server), "live": "agent_my", **IDS, **extra}
    return agentkit.run(request, backup.stdout if mode == "stage" else b"")


def test_a_corrupted_artifact_fails_the_stage_and_drops_it(server, backup):
    data = bytearray(backup.stdout)
    data[len(data) // 2] ^= 0xFF
    run = agentkit.run(
        {"mode": "stage", "engine": "mariadb", "conn": conn(server), "live": "agent_my", **IDS}, bytes(data)
    )
    assert run.code == 3 and "exited" in run.message
    assert sql(server, "SHOW DATABASES LIKE 'pulih\\_restore\\_my1\\_%'") == ""
    assert rows(server) == "2"


def test_stage_then_swap_brings_back_the_tables_and_their_objects(server, backup):
    sql(server, "INSERT INTO agent_my.pasien VALUES (3, 'Citra'); DROP VIEW agent_my.semua")
    staged = restore(server, backup, "stage")
    assert staged.code == 0, staged.stderr
    assert staged.result["stage"] == "pulih_restore_my1_n1" and staged.result["row_counts"]["pasien"] == 2
    assert rows(server) == "3", "the stage reads nothing live"
    swapped = restore(server, backup, "swap")
    assert swapped.code == 0, swapped.stderr
    assert swapped.result["replaced"] is True
    assert rows(server) == "2"
    assert objects(server) == "routine dua,trigger catat,view semua"
    sql(server, "INSERT INTO agent_my.pasien VALUES (4, 'Dewi')")
    assert sql(server, "SELECT COUNT(*) FROM agent_my.jejak") == "1", (
        "the trigger works on the restored table"
    )
    assert sql(server, "SHOW DATABASES LIKE 'pulih\\_%'") == ""


@pytest.mark.parametrize("point", ["mariadb_swap_before_rename", "mariadb_swap_after_rename"])
def test_a_swap_killed_mid_way_is_undone_by_the_next_request(server, backup, point):
    sql(server, "INSERT INTO agent_my.pasien VALUES (5, 'Eka')")
    assert restore(server, backup, "stage", nonce="k1").code == 0
    killed = restore(server, backup, "swap", nonce="k1", fault=point)
    assert killed.code == -9, killed.stderr
    discarded = restore(server, backup, "discard", nonce="k1")
    assert discarded.code == 0, discarded.stderr
    assert rows(server) == "3", "the live schema has its own tables back"
    assert objects(server) == "routine dua,trigger catat,view semua"
    assert sql(server, "SHOW DATABASES LIKE 'pulih\\_%'") == ""


def test_discard_drops_the_stage_and_a_swap_without_it_is_refused(server, backup):
    assert restore(server, backup, "stage", nonce="d1").code == 0
    assert restore(server, backup, "discard", nonce="d1").result["discarded"] == "pulih_restore_my1_d1"
    swap = restore(server, backup, "swap", nonce="d1")
    assert (
        swap.code == 3
        and swap.message == "the restored copy pulih_restore_my1_d1 is gone: run the restore again"
    )
    assert rows(server) == "2"


def test_an_account_that_cannot_read_a_routines_body_fails_the_dump_and_the_swap(server, backup):
    """Without SELECT on mysql.proc, mariadb-dump leaves a routine out without an error and a
    swap would drop the live one with nothing to put back: both refuse, naming the grant."""
    sql(
        server,
        "DROP USER IF EXISTS 'noproc'@'%'; CREATE USER 'noproc'@'%' IDENTIFIED BY 'np-pass';"
        "GRANT RELOAD ON *.* TO 'noproc'@'%';"
        "GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, INSERT, CREATE, DROP, ALTER, CREATE VIEW, CREATE ROUTINE,"
        " ALTER ROUTINE ON agent_my.* TO 'noproc'@'%';"
        "GRANT ALL ON `pulih\\_%`.* TO 'noproc'@'%';",
    )
    limited = conn(server, user="noproc", password="np-pass")
    dump = agentkit.run({"mode": "dump", "engine": "mariadb", "conn": limited})
    assert dump.code == 3 and dump.stdout == b""
    assert dump.message.startswith("cannot read the body of function agent_my.dua: the account needs SELECT")
    assert restore(server, backup, "stage", nonce="p1").code == 0
    swap = agentkit.run(
        {"mode": "swap", "engine": "mariadb", "conn": limited, "live": "agent_my", **IDS, "nonce": "p1"}
    )
    assert swap.code == 3 and "SELECT ON mysql.proc" in swap.message
    assert objects(server) == "routine dua,trigger catat,view semua", "nothing live was lost"
    assert rows(server) == "2"
    assert restore(server, backup, "discard", nonce="p1").code == 0
    sql(server, "DROP USER 'noproc'@'%'")

"""Data with names that break careless quoting, for the backup and restore tests: a database,
a table, a view and a folder with spaces, quotes, `$(...)`, `;` and non-ASCII letters. Any of
them run as a command would create /tmp/pulih-pwned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests import lab as lab_mod

TRICKY_DB = "data \"kantor\" 'lama' $(touch /tmp/pulih-pwned) ; Dinkes ü"
TRICKY_TABLE = "tabel `x` \"y\" 'z' ; ö"
TRICKY_VIEW = "lihat `x` ; ö"
TRICKY_DIR = "arsip 'surat' \"keluar\" $(touch /tmp/pulih-pwned) & ñ"
PWNED = Path("/tmp/pulih-pwned")


def pg_quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def my_quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def make_tricky_data(state: lab_mod.LabState, host: lab_mod.LabHost) -> tuple[Path, list[dict[str, Any]]]:
    """Create the tricky database on both engines (42 and 17 rows, and a MariaDB view) and the
    tricky folder on ``host``; return the folder and the register items naming all three
    (tricky-pg, tricky-mariadb, tricky-files)."""
    PWNED.unlink(missing_ok=True)
    state.psql(host, f"CREATE DATABASE {pg_quote(TRICKY_DB)}")
    state.psql(
        host,
        f'CREATE TABLE {pg_quote(TRICKY_TABLE)} (id int, "nama kolom" text); '
        f"INSERT INTO {pg_quote(TRICKY_TABLE)} SELECT g, 'nilai ' || g FROM generate_series(1, 42) g;",
        TRICKY_DB,
    )
    db, table = my_quote(TRICKY_DB), f"{my_quote(TRICKY_DB)}.{my_quote(TRICKY_TABLE)}"
    state.mariadb(
        host,
        f"CREATE DATABASE {db}; CREATE TABLE {table} (id INT PRIMARY KEY); "
        f"INSERT INTO {table} SELECT seq FROM {db}.seq_1_to_17; "
        f"CREATE VIEW {db}.{my_quote(TRICKY_VIEW)} AS SELECT id FROM {table};",
    )
    tree = Path(state.root) / "hosts" / host.name / "srv" / TRICKY_DIR
    (tree / "sub folder ø").mkdir(parents=True)
    (tree / "sub folder ø" / "berkas 'a' \"b\" $x.txt").write_text("isi\n")
    (tree / "laporan-ß.csv").write_bytes(b"a;b\n1;2\n")
    (tree / "tautan").symlink_to("laporan-ß.csv")
    conn = {"host": host.address, "user": lab_mod.DB_USER, "password_var": lab_mod.PASSWORD_VAR}
    items = [
        {"name": "tricky-pg", "engine": "postgresql", "database": TRICKY_DB, "port": host.pg_port, **conn},
        {
            "name": "tricky-mariadb",
            "engine": "mariadb",
            "database": TRICKY_DB,
            "port": host.mariadb_port,
            **conn,
        },
        {"name": "tricky-files", "engine": "files", "path": str(tree)},
    ]
    return tree, items

"""Benchmark: pulih backup against the plain tools, in one run, on the same data.

Builds, in a lab host's own servers, a ~500 MiB PostgreSQL database of realistic, poorly
compressible rows over several tables and a ~250 MiB MariaDB table, then times:

  PostgreSQL  pg_dump -Fc > file                       (what most scripts and community.postgresql do)
              pg_dump -Fc -Z0 | zstd -T0 > file        (the plain pipeline pulih runs on the server)
              pulih backup, without and with verify
  MariaDB     mariadb-dump | gzip > file
              mariadb-dump | zstd -T0 > file
              pulih backup, without and with verify

pulih's figures are given twice: the whole run (ansible-playbook start-up and every task
included) and its data path alone (the seconds the data server spent dumping the item and
pushing it to the repository's receiver, as agent_push measured them). Ratios are against the
plain pipelines.

    python bench/backup.py [--pg-mib 500] [--mariadb-mib 250] [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import lab as lab_mod
from tests.integration.client import Service  # the tests' service: budi, the operator, has a token

PROJECT = Path(__file__).resolve().parent.parent


def sh(script: str, env: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script], check=True, env={**os.environ, **(env or {})}
    )
    return time.monotonic() - started


def build_postgresql(state: lab_mod.LabState, host: lab_mod.LabHost, mib: int) -> None:
    rows = mib * 1024 * 1024 // 560  # ~560 bytes per citizen row across the tables
    sql = f"""
    CREATE DATABASE bench;
    \\connect bench
    CREATE TABLE penduduk (id bigint PRIMARY KEY, nik text, nama text, alamat text, lahir date, catatan text);
    CREATE TABLE pembayaran (id bigint PRIMARY KEY, penduduk_id bigint, jumlah numeric(14,2),
                             waktu timestamptz, referensi text);
    CREATE TABLE dokumen (id bigint PRIMARY KEY, penduduk_id bigint, isi bytea);
    INSERT INTO penduduk SELECT g, lpad((random()*1e16)::bigint::text, 16, '0'),
        'Nama ' || encode(decode(md5(random()::text), 'hex'), 'base64'),
        'Jl. ' || encode(decode(md5(random()::text) || md5(random()::text), 'hex'), 'base64'),
        date '1940-01-01' + (random()*30000)::int,
        encode(decode(md5(random()::text) || md5(random()::text) || md5(random()::text), 'hex'), 'base64')
      FROM generate_series(1, {rows}) g;
    INSERT INTO pembayaran SELECT g, 1 + (random()*{rows - 1})::bigint, round((random()*5e6)::numeric, 2),
        now() - random() * interval '3 years', md5(random()::text) || md5(random()::text)
      FROM generate_series(1, {rows}) g;
    INSERT INTO dokumen SELECT g, g, decode(repeat(md5(random()::text), 1) || md5(random()::text)
        || md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text), 'hex')
      FROM generate_series(1, {rows}) g;
    ANALYZE;
    """
    state.psql(host, sql, timeout=3600)


def build_mariadb(state: lab_mod.LabState, host: lab_mod.LabHost, mib: int) -> None:
    rows = mib * 1024 * 1024 // 420
    sql = f"""
    CREATE DATABASE bench;
    CREATE TABLE bench.kunjungan (id BIGINT PRIMARY KEY, pasien VARCHAR(64), diagnosa VARCHAR(200),
                                  tanggal DATETIME, rekam VARBINARY(256)) ENGINE=InnoDB;
    INSERT INTO bench.kunjungan SELECT seq, CONCAT('Pasien ', TO_BASE64(RANDOM_BYTES(12))),
        TO_BASE64(RANDOM_BYTES(96)), NOW() - INTERVAL FLOOR(RAND() * 100000000) SECOND, RANDOM_BYTES(160)
      FROM bench.seq_1_to_{rows};
    ANALYZE TABLE bench.kunjungan;
    """
    state.mariadb(host, sql, timeout=3600)


def size_mib(state: lab_mod.LabState, host: lab_mod.LabHost) -> tuple[float, float]:
    pg = state.psql(host, "SELECT pg_database_size('bench')", "bench")
    my = state.mariadb(
        host,
        "SELECT SUM(data_length + index_length) FROM information_schema.TABLES WHERE table_schema = 'bench'",
    )
    return int(pg) / 2**20, int(my) / 2**20


def bench_data(state: lab_mod.LabState, inventory: Path, pg_mib: int, mariadb_mib: int) -> lab_mod.LabHost:
    """Build the bench databases on lab1 and register them; returns lab1."""
    host = state.host("lab1")
    print(f"building ~{pg_mib} MiB PostgreSQL and ~{mariadb_mib} MiB MariaDB data ...", flush=True)
    build_postgresql(state, host, pg_mib)
    build_mariadb(state, host, mariadb_mib)
    pg_size, my_size = size_mib(state, host)
    print(f"PostgreSQL database 'bench': {pg_size:.0f} MiB; MariaDB database 'bench': {my_size:.0f} MiB")
    register_bench_items(inventory, host)
    return host


def register_bench_items(inventory: Path, host: lab_mod.LabHost) -> None:
    """Put the bench databases in the lab's register as items bench-pg and bench-mariadb."""
    register = inventory / lab_mod.REGISTER_FILE
    doc = yaml.safe_load(register.read_text())
    conn = {"host": host.address, "user": lab_mod.DB_USER, "password_var": lab_mod.PASSWORD_VAR}
    doc["assets"][0]["data"] += [
        {"name": "bench-pg", "engine": "postgresql", "database": "bench", "port": host.pg_port, **conn},
        {
            "name": "bench-mariadb",
            "engine": "mariadb",
            "database": "bench",
            "port": host.mariadb_port,
            **conn,
        },
    ]
    register.write_text(yaml.safe_dump(doc, sort_keys=False))


def pulih_backup(service: Service, item: str, verify: bool) -> tuple[float, float]:
    env = {**service.environ(), "PULIH_TOKEN": service.tokens["budi"]}
    started = time.monotonic()
    result = subprocess.run(
        [
            "pulih",
            "backup",
            "--limit",
            "lab1",
            "--item",
            item,
            "--verify" if verify else "--no-verify",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"pulih backup failed: {result.stderr[-2000:]}")
    doc = json.loads(result.stdout)
    return wall, float(doc["items"][0]["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg-mib", type=int, default=500)
    parser.add_argument("--mariadb-mib", type=int, default=250)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pulih-bench-"))
    inventory = work / "inventory"
    lab = lab_mod.Lab(1, inventory_dir=inventory)
    state = lab.up()
    service = Service(inventory)
    try:
        host = bench_data(state, inventory, args.pg_mib, args.mariadb_mib)
        service.init()
        pg_env = {
            "PGHOST": host.address,
            "PGPORT": str(host.pg_port),
            "PGUSER": lab_mod.DB_USER,
            "PGPASSWORD": state.db_password,
            "PGDATABASE": "bench",
        }
        my_env = {"MYSQL_PWD": state.db_password}
        my_args = (
            f"--no-defaults -h {host.address} -P {host.mariadb_port} -u {lab_mod.DB_USER} "
            "--single-transaction --quick --routines --triggers --events --hex-blob bench"
        )
        out = work / "out"
        out.mkdir()

        def median(fn: object) -> float:
            return statistics.median(fn() for _ in range(args.runs))  # type: ignore[operator]

        figures: dict[str, float] = {}
        figures["pg_dump -Fc"] = median(lambda: sh(f"pg_dump -Fc > {out}/a.dump", pg_env))
        figures["pg_dump -Fc -Z0 | zstd -T0"] = median(
            lambda: sh(f"pg_dump -Fc -Z0 | zstd -q -T0 -c > {out}/b.dump.zst", pg_env)
        )
        runs = [pulih_backup(service, "bench-pg", False) for _ in range(args.runs)]
        figures["pulih backup (pg), whole run"] = statistics.median(r[0] for r in runs)
        figures["pulih backup (pg), data path"] = statistics.median(r[1] for r in runs)
        figures["pulih backup --verify (pg), whole run"] = median(
            lambda: pulih_backup(service, "bench-pg", True)[0]
        )
        figures["mariadb-dump | gzip"] = median(
            lambda: sh(f"mariadb-dump {my_args} | gzip > {out}/c.sql.gz", my_env)
        )
        figures["mariadb-dump | zstd -T0"] = median(
            lambda: sh(f"mariadb-dump {my_args} | zstd -q -T0 -c > {out}/d.sql.zst", my_env)
        )
        runs = [pulih_backup(service, "bench-mariadb", False) for _ in range(args.runs)]
        figures["pulih backup (mariadb), whole run"] = statistics.median(r[0] for r in runs)
        figures["pulih backup (mariadb), data path"] = statistics.median(r[1] for r in runs)
        figures["pulih backup --verify (mariadb), whole run"] = median(
            lambda: pulih_backup(service, "bench-mariadb", True)[0]
        )

        sizes = {p.name: p.stat().st_size / 2**20 for p in out.iterdir()}
        print(
            f"\nmachine: {os.cpu_count()} cores; median of {args.runs} run(s); output sizes (MiB): "
            + ", ".join(f"{k} {v:.0f}" for k, v in sorted(sizes.items()))
        )
        print(f"{'what':48} {'seconds':>8}")
        for name, seconds in figures.items():
            print(f"{name:48} {seconds:8.2f}")
        f = figures
        print(
            "\nratios (targets: pulih >= 3x faster than the first tool, within 1.2x of the plain pipeline):"
        )
        for engine, slow, plain in (
            ("pg", "pg_dump -Fc", "pg_dump -Fc -Z0 | zstd -T0"),
            ("mariadb", "mariadb-dump | gzip", "mariadb-dump | zstd -T0"),
        ):
            for part in ("data path", "whole run"):
                mine = f[f"pulih backup ({engine}), {part}"]
                print(
                    f"  {slow} / pulih ({engine}, {part}): {f[slow] / mine:.2f}x faster; "
                    f"pulih / {plain}: {mine / f[plain]:.2f}x"
                )
    finally:
        service.remove()
        lab.down()
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()

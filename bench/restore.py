"""Benchmark: pulih restore in place against the plain tools, in one run, on the same backups.

Builds the same bench databases as bench/backup.py in a lab host's own servers (PostgreSQL:
three tables of poorly compressible rows with primary keys; MariaDB: one table), backs them
up once with pulih, then restores each backup:

  PostgreSQL  zstd -dc dump | pg_restore -d fresh_db     (plain, single job: what a script does)
              pulih restore, in place                    (checks, stage with pg_restore -j,
                                                          row counts, pre-restore backup, swap,
                                                          row counts again)
  MariaDB     zstd -dc dump | mariadb fresh_db
              pulih restore, in place

pulih's figures are given as the whole run (through pulih serve: the approval gate,
ansible-playbook start-up and every task included), its data path (stage and swap with both
verifications, as the agent streams measured them) and the pre-restore backup it took first.
Ratios are against the plain restores.

    python bench/restore.py [--pg-mib 500] [--mariadb-mib 250] [--runs 1]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import lab as lab_mod
from tests.integration.client import Service  # the tests' service: ani, sri, budi with tokens

from backup import bench_data, sh

SERVICE: Service | None = None


def pulih(env: dict[str, str], actor: str, *args: str) -> dict[str, object]:
    assert SERVICE is not None
    result = subprocess.run(
        ["pulih", *args, "--json"],
        capture_output=True,
        text=True,
        env={**env, "PULIH_TOKEN": SERVICE.tokens[actor]},
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"pulih {' '.join(args)} failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def planned_request(env: dict[str, str], key: str, backup_id: str) -> str:
    rid = str(
        pulih(
            env,
            "ani",
            "request",
            "new",
            "--item",
            key,
            "--skpd",
            "dinkes",
            "--contact",
            "-",
            "--reason",
            "error",
        )["id"]
    )
    pulih(env, "sri", "request", "receive", rid)
    pulih(env, "sri", "request", "approve", rid)
    pulih(env, "budi", "request", "assess", rid, "--damage", "error")
    pulih(env, "budi", "request", "check-backups", rid, "--no-query")
    # The benchmark's backup is taken with --no-verify (to keep the run short), so the plan
    # says so on the record, as any unverified plan must.
    why = "benchmark: backup taken seconds ago without its test restore"
    pulih(env, "budi", "request", "plan", rid, "--backup", f"{key}={backup_id}", "--unverified", why)
    return rid


def pulih_restore(env: dict[str, str], rid: str, phases: dict[str, object]) -> tuple[float, float, float]:
    started = time.monotonic()
    doc = pulih(env, "budi", "restore", "--request", rid)
    wall = time.monotonic() - started
    item = doc["items"][0]  # type: ignore[index]
    phases[rid] = item["restore"]["timings"]
    return wall, float(item["seconds"]), float(item["restore"]["pre_restore_seconds"])


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
    global SERVICE
    SERVICE = Service(inventory)
    try:
        host = bench_data(state, inventory, args.pg_mib, args.mariadb_mib)
        env = SERVICE.init().environ()
        made = pulih(
            env,
            "budi",
            "backup",
            "--limit",
            "lab1",
            "--item",
            "bench-pg",
            "--item",
            "bench-mariadb",
            "--no-verify",
        )
        backups = {i["item"]: (i["backup_id"], i["asset_id"]) for i in made["items"]}  # type: ignore[index,union-attr]
        repo = Path(state.host("labrepo").repository_path)
        pg_dump = repo / "LAB-001" / "bench-pg" / backups["bench-pg"][0] / "database.pgdump.zst"
        my_dump = repo / "LAB-001" / "bench-mariadb" / backups["bench-mariadb"][0] / "database.sql.zst"
        pg_env = {
            "PGHOST": host.address,
            "PGPORT": str(host.pg_port),
            "PGUSER": lab_mod.DB_USER,
            "PGPASSWORD": state.db_password,
        }
        my_env = {"MYSQL_PWD": state.db_password}
        my_args = f"--no-defaults -h {host.address} -P {host.mariadb_port} -u {lab_mod.DB_USER}"

        def plain_pg() -> float:
            sh("dropdb --if-exists plain_pg && createdb plain_pg", pg_env)
            return sh(f"zstd -q -dc {pg_dump} | pg_restore --exit-on-error -d plain_pg", pg_env)

        def plain_mariadb() -> float:
            sh(f"mariadb {my_args} -e 'DROP DATABASE IF EXISTS plain_my; CREATE DATABASE plain_my'", my_env)
            return sh(f"zstd -q -dc {my_dump} | mariadb {my_args} plain_my", my_env)

        figures: dict[str, float] = {}
        phases: dict[str, object] = {}  # the agent's own timings of the last run of each
        figures["zstd -dc | pg_restore (single job)"] = statistics.median(
            plain_pg() for _ in range(args.runs)
        )
        rid = planned_request(env, "LAB-001:bench-pg", backups["bench-pg"][0])
        runs = [pulih_restore(env, rid, phases) for _ in range(args.runs)]
        figures["pulih restore (pg), whole run"] = statistics.median(r[0] for r in runs)
        figures["pulih restore (pg), data path"] = statistics.median(r[1] for r in runs)
        figures["  of which the pre-restore backup (pg)"] = statistics.median(r[2] for r in runs)
        figures["zstd -dc | mariadb"] = statistics.median(plain_mariadb() for _ in range(args.runs))
        rid = planned_request(env, "LAB-001:bench-mariadb", backups["bench-mariadb"][0])
        runs = [pulih_restore(env, rid, phases) for _ in range(args.runs)]
        figures["pulih restore (mariadb), whole run"] = statistics.median(r[0] for r in runs)
        figures["pulih restore (mariadb), data path"] = statistics.median(r[1] for r in runs)
        figures["  of which the pre-restore backup (mariadb)"] = statistics.median(r[2] for r in runs)

        print(f"\nmachine: {os.cpu_count()} cores; median of {args.runs} run(s)")
        print(f"{'what':48} {'seconds':>8}")
        for name, seconds in figures.items():
            print(f"{name:48} {seconds:8.2f}")
        print("\nwhere pulih's data path went (seconds, the agent's timings of the last run):")
        for rid, timings in phases.items():
            print(f"  {rid}: {json.dumps(timings)}")
        f = figures
        print(
            "\nratios, pulih / plain (targets: in place with verification <= 1.5x; pg faster than one job):"
        )
        for engine, plain in (
            ("pg", "zstd -dc | pg_restore (single job)"),
            ("mariadb", "zstd -dc | mariadb"),
        ):
            whole, path = f[f"pulih restore ({engine}), whole run"], f[f"pulih restore ({engine}), data path"]
            pre = f[f"  of which the pre-restore backup ({engine})"]
            print(
                f"  {engine}: whole run {whole / f[plain]:.2f}x; data path {path / f[plain]:.2f}x; "
                f"data path and pre-restore backup {(path + pre) / f[plain]:.2f}x"
            )
    finally:
        SERVICE.remove()
        lab.down()
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()

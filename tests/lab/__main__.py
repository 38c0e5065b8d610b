"""The lab's command line: `python -m tests.lab up|down|sql ...` from the project's folder (or
with it on PYTHONPATH), as `make lab-up`/`lab-down`, molecule's create/destroy, the demo and
the benches run it."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import yaml

from tests.lab import LAB_VARS_FILE, Lab, LabError, LabState, stop

PROG = "python -m tests.lab"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description="The test lab: SSH hosts with PostgreSQL and MariaDB, on loopback."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a lab and write its inventory")
    up.add_argument("--hosts", type=int, default=2, help="database hosts (a repository host is added)")
    up.add_argument("--inventory-dir", type=Path, default=Path("inventories/lab"))
    up.add_argument("--no-databases", action="store_true", help="sshd only, no PostgreSQL/MariaDB")
    down = sub.add_parser("down", help="stop the lab of an inventory folder and remove its files")
    down.add_argument("--inventory-dir", type=Path, default=Path("inventories/lab"))
    sql = sub.add_parser("sql", help="run SQL on a lab host's own server as its superuser (demo, benches)")
    sql.add_argument("--inventory-dir", type=Path, default=Path("inventories/lab"))
    sql.add_argument("host", help="lab1, lab2, ...")
    sql.add_argument("engine", choices=("pg", "mariadb"))
    sql.add_argument("statement")
    sql.add_argument("database", nargs="?", default="postgres", help="PostgreSQL database (default postgres)")
    args = parser.parse_args(argv)
    try:
        if args.command == "sql":
            lab_vars = args.inventory_dir / LAB_VARS_FILE
            if not lab_vars.exists():
                print(f"{PROG}: no lab recorded in {args.inventory_dir}", file=sys.stderr)
                return 1
            state = LabState.load(Path((yaml.safe_load(lab_vars.read_text()) or {})["pulih_lab_root"]))
            if args.host not in {h.name for h in state.hosts}:
                print(f"{PROG}: no host {args.host} in this lab", file=sys.stderr)
                return 1
            host = state.host(args.host)
            out = (
                state.psql(host, args.statement, args.database)
                if args.engine == "pg"
                else state.mariadb(host, args.statement)
            )
            print(out, end="")
            return 0
        if args.command == "up":
            state = Lab(args.hosts, inventory_dir=args.inventory_dir, databases=not args.no_databases).up()
            print(
                f"lab up in {state.seconds_to_start:.1f}s, inventory {args.inventory_dir}:", file=sys.stderr
            )
            for host in state.hosts:
                what = (
                    f"PostgreSQL :{host.pg_port}, MariaDB :{host.mariadb_port}"
                    if host.pg_port
                    else f"backup repository {host.repository_path}"
                    if host.is_repository
                    else "sshd only"
                )
                print(f"  {host.name}: ssh {host.address}:{host.ssh_port}, {what}", file=sys.stderr)
            summary = {
                "root": state.root,
                "seconds_to_start": state.seconds_to_start,
                "hosts": [asdict(h) for h in state.hosts],
                "inventory": str(args.inventory_dir),
            }
            print(json.dumps(summary, indent=2))
            return 0
        lab_vars = args.inventory_dir / LAB_VARS_FILE
        if not lab_vars.exists():
            print(f"{PROG}: no lab recorded in {args.inventory_dir}; nothing to stop", file=sys.stderr)
            return 0
        root = Path((yaml.safe_load(lab_vars.read_text()) or {})["pulih_lab_root"])
        for line in stop(root, args.inventory_dir):
            print(f"stopped {line}", file=sys.stderr)
        return 0
    except LabError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

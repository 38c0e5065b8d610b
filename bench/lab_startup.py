"""Benchmark: how long the test lab takes to come up, against the bare tools.

In one run, median of --runs each:
  plain     one host's databases by hand, in sequence: initdb + pg_ctl start, then
            mariadb-install-db + mariadbd until it listens (what a shell script would do);
  lab N     tests.lab bringing up N hosts (each: sshd with its own host key, PostgreSQL,
            MariaDB, users and sample rows) plus a repository host, hosts in parallel.

Prints seconds and the ratio lab/plain. Run: make bench  (or python bench/lab_startup.py)
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import lab


def plain_one_host() -> float:
    """initdb/pg_ctl and mariadb-install-db/mariadbd for one host, timed; all stopped after."""
    root = Path(tempfile.mkdtemp(prefix="pulih-bench-", dir="/tmp"))
    root.chmod(0o711)
    pg_user, my_user = lab._service_user("postgres"), lab._service_user("mysql")
    as_pg = lab._as_user(pg_user)
    bindir = lab._pg_bindir()
    pgdata, mydata, mytmp, run = root / "pg", root / "my", root / "mytmp", root / "run"
    run.mkdir(mode=0o777)
    run.chmod(0o777)  # both service accounts put their sockets here
    for folder, owner in ((pgdata, pg_user), (mydata, my_user), (mytmp, my_user)):
        folder.mkdir(mode=0o700)
        lab._chown(folder, owner)
    pg_port, my_port = lab._free_port("127.0.0.1"), lab._free_port("127.0.0.1")
    log = root / "pg.log"
    log.touch()
    lab._chown(log, pg_user)
    cnf = root / "my.cnf"
    cnf.write_text(
        f"[mariadbd]\ndatadir={mydata}\ntmpdir={mytmp}\nuser={my_user}\nport={my_port}\n"
        f"bind-address=127.0.0.1\nsocket={run}/my.sock\nskip-log-bin\n"
    )
    started = time.monotonic()
    subprocess.run(
        [*as_pg, str(bindir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--no-sync", "-A", "trust"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_pg,
            str(bindir / "pg_ctl"),
            "-D",
            str(pgdata),
            "-l",
            str(log),
            "-w",
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {pg_port} -k {run}",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["mariadb-install-db", f"--defaults-file={cnf}", "--skip-test-db"], check=True, capture_output=True
    )
    server = subprocess.Popen(
        ["mariadbd", f"--defaults-file={cnf}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    while True:
        try:
            socket.create_connection(("127.0.0.1", my_port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    elapsed = time.monotonic() - started
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    lab.stop_pid(postmaster, "postgres")
    lab.stop_pid(server.pid, "mariadbd")
    server.wait()
    subprocess.run(["rm", "-rf", str(root)], check=True)
    return elapsed


def lab_up(hosts: int) -> float:
    lab_run = lab.Lab(hosts)
    started = time.monotonic()
    lab_run.up()
    elapsed = time.monotonic() - started
    lab_run.down()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; median of {args.runs} runs")
    plain = statistics.median(plain_one_host() for _ in range(args.runs))
    print(f"plain tools, one host's PostgreSQL + MariaDB in sequence: {plain:6.2f}s  (1.00x)")
    for hosts in args.hosts:
        took = statistics.median(lab_up(hosts) for _ in range(args.runs))
        print(
            f"tests.lab up, {hosts} host(s) + repository (sshd, both databases, seeded): "
            f"{took:6.2f}s  ({took / plain:.2f}x plain)"
        )


if __name__ == "__main__":
    main()

"""The lab waits for a server to answer with retries until a deadline, never one attempt,
and stops waiting at once when the server is gone (a fresh-clone CI on a busy machine went
red on `ERROR 2002 ... (111)`: MariaDB's port listened before its socket accepted). Every wait
of the lab (PID files, ports, logins, queries) has a deadline generous for a busy machine and
says, when it fails, what the server's log says."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import types

import pytest

from tests import lab as lab_mod


def test_a_server_that_answers_late_is_waited_for():
    tries = []

    def attempt():
        tries.append(time.monotonic())
        if len(tries) < 4:
            raise lab_mod.LabError("ERROR 2002 (HY000): Can't connect to local server through socket (111)")
        return "1"

    assert lab_mod._retry_until("lab1: MariaDB", attempt, timeout=10, every=0.01) == "1"
    assert len(tries) == 4


def refused():
    raise lab_mod.LabError("refused")


def test_a_server_that_never_answers_fails_at_the_deadline_with_its_last_error():
    started = time.monotonic()
    with pytest.raises(lab_mod.LabError) as caught:
        lab_mod._retry_until(
            "lab1: MariaDB",
            lambda: (_ for _ in ()).throw(lab_mod.LabError("refused")),
            timeout=0.5,
            every=0.05,
        )
    assert 0.4 <= time.monotonic() - started < 5
    assert "not ready within" in str(caught.value) and str(caught.value).endswith("last: refused")


def test_a_server_that_exited_ends_the_wait_at_once():
    started = time.monotonic()
    with pytest.raises(lab_mod.LabError) as caught:
        lab_mod._retry_until(
            "lab1: MariaDB",
            refused,
            timeout=60,
            gone=lambda: "mariadbd exited (1): InnoDB: cannot allocate memory",
        )
    assert time.monotonic() - started < 5
    assert str(caught.value) == "lab1: MariaDB: mariadbd exited (1): InnoDB: cannot allocate memory"


# --------------------------------------------------------------------------- every wait, a deadline


class Clock:
    """The lab's `time`, faked: sleeping moves the clock on at once, and `at` runs a step of the
    test when the clock passes a second (a server that is slow to start on a busy machine)."""

    def __init__(self):
        self.now = 0.0
        self.at: dict[float, object] = {}

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds
        for second in [s for s in self.at if s <= self.now]:
            self.at.pop(second)()


def test_a_pid_file_written_late_on_a_busy_machine_is_still_waited_for(monkeypatch, tmp_path):
    clock = Clock()
    monkeypatch.setattr(lab_mod, "time", clock)
    pid_file = tmp_path / "sshd.pid"
    clock.at[100.0] = lambda: pid_file.write_text("4242\n")
    assert lab_mod._read_pid(pid_file, "lab1: sshd") == 4242
    assert clock.now >= 100


def test_a_pid_file_that_never_comes_fails_at_the_deadline_with_the_servers_log(monkeypatch, tmp_path):
    clock = Clock()
    monkeypatch.setattr(lab_mod, "time", clock)
    log = tmp_path / "sshd.log"
    log.write_text("Bind to port 2222 on 127.0.50.10 failed: Address already in use.\n")
    with pytest.raises(lab_mod.LabError) as caught:
        lab_mod._read_pid(tmp_path / "sshd.pid", "lab1: sshd", log=log)
    assert lab_mod.READY_TIMEOUT - 1 <= clock.now <= lab_mod.READY_TIMEOUT + 1
    assert str(caught.value).startswith("lab1: sshd: not ready within 120s; last: no PID in ")
    assert str(caught.value).endswith("log: Bind to port 2222 on 127.0.50.10 failed: Address already in use.")


def test_a_port_that_listens_late_on_a_busy_machine_is_still_waited_for(monkeypatch, tmp_path):
    clock = Clock()
    monkeypatch.setattr(lab_mod, "time", clock)
    tries = []

    def create_connection(address, timeout):
        tries.append(address)
        if clock.now < 90:
            raise ConnectionRefusedError(111, "Connection refused")
        return contextlib.nullcontext()

    monkeypatch.setattr(lab_mod, "socket", types.SimpleNamespace(create_connection=create_connection))
    lab_mod._wait_for_port("127.0.50.10", 3306, "lab1: MariaDB", tmp_path / "mariadb.log")
    assert clock.now >= 90 and tries[-1] == ("127.0.50.10", 3306)


def test_a_port_wait_ends_at_once_when_the_server_exited_and_shows_its_log(tmp_path):
    log = tmp_path / "mariadb.log"
    server = subprocess.Popen(["sh", "-c", f"echo '[ERROR] InnoDB: Cannot allocate memory' >> {log}; exit 1"])
    deadline = time.monotonic() + 30
    while not log.exists() or not log.read_text():  # exited, not reaped: a zombie, still our child
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(lab_mod.LabError) as caught:
        lab_mod._wait_for_port(
            "127.0.0.1", unused_port(), "lab1: MariaDB", log, gone=lab_mod._exited(server.pid, "sh", log)
        )
    assert time.monotonic() - started < 10
    assert str(caught.value) == (
        f"lab1: MariaDB: sh (pid {server.pid}) exited: [ERROR] InnoDB: Cannot allocate memory"
    )


def test_a_server_that_runs_is_not_gone(tmp_path):
    server = subprocess.Popen(["sleep", "30"])
    try:
        assert lab_mod._exited(server.pid, "sleep", tmp_path / "log")() is None
        # A PID that now names another program is not our server.
        assert lab_mod._exited(server.pid, "mariadbd", None)() == f"mariadbd (pid {server.pid}) exited"
    finally:
        lab_mod.stop_pid(server.pid, "sleep")


def test_a_server_that_has_just_started_is_neither_gone_nor_left_running(monkeypatch):
    """Right after Popen returns, the new program's cmdline can still read empty (the kernel
    fills it in a moment later; a suite run hit it): the process runs, a wait for it goes on,
    and stopping it stops it. Its comm names it then."""
    server = subprocess.Popen(["sleep", "30"])
    try:
        monkeypatch.setattr(lab_mod, "_cmdline", lambda pid: "")  # that moment, held
        assert lab_mod._exited(server.pid, "sleep", None)() is None
        assert lab_mod._exited(server.pid, "mariadbd", None)() == f"mariadbd (pid {server.pid}) exited"
        assert lab_mod.stop_pid(server.pid, "sleep") is True
        assert server.wait(timeout=30) is not None
    finally:
        server.kill()
        server.wait()


def test_a_postgresql_still_starting_at_pg_ctls_deadline_is_recorded_for_down(monkeypatch, tmp_path):
    """pg_ctl gives up at its deadline and leaves the server running: the lab records its PID
    (so that 'down' stops it) and says what the server's log says."""
    server = subprocess.Popen(["sleep", "60"])
    try:

        def run(argv, *, what, input_text=None, timeout=120):
            if any(a.endswith("pg_ctl") for a in argv):
                (tmp_path / "hosts" / "lab1" / "pgdata" / "postmaster.pid").write_text(f"{server.pid}\n")
                (tmp_path / "hosts" / "lab1" / "postgresql.log").write_text("LOG:  redo in progress\n")
                assert timeout > lab_mod.READY_TIMEOUT and str(int(lab_mod.READY_TIMEOUT)) in argv
                raise lab_mod.LabError(f"{what} failed (exit 1): pg_ctl: server did not start in time")
            return ""

        monkeypatch.setattr(lab_mod, "_run", run)
        monkeypatch.setattr(lab_mod, "_pg_bindir", lambda: tmp_path / "bin")
        monkeypatch.setattr(lab_mod, "_chown", lambda path, user: None)
        monkeypatch.setattr(lab_mod, "_service_user", lambda name: "postgres")
        host = lab_mod.LabHost(name="lab1", address="127.0.0.1", ssh_port=0)
        state = lab_mod.LabState(root=str(tmp_path), user="root", hosts=[host])
        base = tmp_path / "hosts" / "lab1"
        (base / "run").mkdir(parents=True)
        with pytest.raises(lab_mod.LabError) as caught:
            lab_mod.Lab(1, repository=False)._start_postgresql(state, host, base)
        assert str(caught.value) == (
            "lab1: starting PostgreSQL failed (exit 1): pg_ctl: server did not start in time; "
            "log: LOG:  redo in progress"
        )
        recorded = [(p.name, p.pid, p.program) for p in state.procs]
        assert recorded == [("lab1/postgresql", server.pid, "postgres")]
        assert lab_mod.LabState.load(tmp_path).procs == state.procs  # on disk, where 'down' reads it
    finally:
        lab_mod.stop_pid(server.pid, "sleep")


def test_down_goes_on_when_a_control_master_is_too_busy_to_answer(monkeypatch, tmp_path):
    (tmp_path / "cp").mkdir()
    (tmp_path / "cp" / "0123abcd").touch()

    def run(argv, **kwargs):
        raise subprocess.TimeoutExpired(argv, kwargs.get("timeout", 0))

    monkeypatch.setattr(lab_mod.subprocess, "run", run)
    assert list(lab_mod._control_masters(tmp_path / "cp")) == []


def unused_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

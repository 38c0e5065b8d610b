"""The lab waits for a server to answer with retries until a deadline, never one attempt,
and stops waiting at once when the server is gone (a fresh-clone CI on a busy machine went
red on `ERROR 2002 ... (111)`: MariaDB's port listened before its socket accepted)."""

from __future__ import annotations

import time

import pytest

from pulih import lab as lab_mod


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

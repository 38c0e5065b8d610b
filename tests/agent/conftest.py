"""A lab host's PostgreSQL and MariaDB for the agent's engine tests: the agent runs here, as it
runs on a data server, against real servers (over TCP with the backup account's password)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests import lab as lab_mod


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, Any]]:
    lab = lab_mod.Lab(1, repository=False)
    state = lab.up()
    try:
        host = state.host("lab1")
        yield {"state": state, "host": host, "password": state.db_password, "user": lab_mod.DB_USER}
    finally:
        lab.down()

"""What a restore's three requests share: names unique to the attempt (so a killed attempt's
agent never removes the next attempt's stage), the refusal of an alternate target that
exists, the timing of each phase, and the swap's result."""

from __future__ import annotations

import io
import json
import sys

import pytest

from tests import agentkit

restore = agentkit.package("restore")
protocol = agentkit.package("protocol")


def test_stage_names_are_unique_to_the_attempt_and_share_a_prefix_per_target():
    first = restore.stage_names({"engine": "postgresql", "token": "ab12", "nonce": "01"})
    second = restore.stage_names({"engine": "postgresql", "token": "ab12", "nonce": "02"})
    assert first == {
        "stage": "pulih_restore_ab12_01",
        "prefix": "pulih_restore_ab12_",
        "old": "pulih_old_ab12",
    }
    assert second["stage"] != first["stage"] and second["prefix"] == first["prefix"]
    files = restore.stage_names({"engine": "files", "token": "ab12", "nonce": "01"})
    assert files == {
        "stage": ".pulih-restore-ab12-01",
        "prefix": ".pulih-restore-ab12-",
        "old": ".pulih-old-ab12",
    }


def test_an_alternate_target_that_exists_is_refused_in_the_engines_words():
    restore.refuse_existing({"must_not_exist": False, "live": "x", "engine": "files"}, True)
    restore.refuse_existing({"must_not_exist": True, "live": "x", "engine": "files"}, False)
    with pytest.raises(protocol.AgentError, match="only into a new folder"):
        restore.refuse_existing({"must_not_exist": True, "live": "/srv/x", "engine": "files"}, True)
    with pytest.raises(protocol.AgentError, match="only into a new database"):
        restore.refuse_existing({"must_not_exist": True, "live": "simpeg", "engine": "mariadb"}, ("utf8mb4",))


def test_the_stopwatch_times_each_phase_from_the_last(monkeypatch):
    clock = iter([100.0, 101.5, 104.0])
    monkeypatch.setattr(restore.time, "monotonic", lambda: next(clock))
    watch = restore.Stopwatch()
    watch.mark("swap")
    watch.mark("count")
    assert watch.marks == {"swap": 1.5, "count": 2.5}


def test_a_swap_result_names_the_kept_copy_only_when_one_was_replaced(monkeypatch):
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    request = {"engine": "postgresql", "token": "t", "nonce": "n", "live": "simpeg", "keep_old": True}
    restore.emit_swapped("postgresql", request, {"public.a": 1}, True, restore.Stopwatch())
    restore.emit_swapped("postgresql", request, {"public.a": 1}, False, restore.Stopwatch())
    kept, new = (json.loads(line[8:]) for line in stderr.getvalue().splitlines())
    assert kept["kept_old"] == "pulih_old_t" and kept["replaced"] is True
    assert new["kept_old"] is None and new["replaced"] is False

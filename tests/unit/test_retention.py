"""pulih.core.retention_plan: what retention keeps, and that it never prunes what it must keep."""

from __future__ import annotations

import datetime as dt

import pytest


@pytest.fixture(scope="module")
def plan(ansible_plugins):
    return ansible_plugins.filter_loader.get("pulih.core.retention_plan").j2_function


def backup(when: dt.datetime, verified=False, kind="scheduled", manifest=True):
    bid = when.strftime("%Y%m%dT%H%M%SZ") + "-0000"
    return {"backup_id": bid, "verified": verified, "manifest": {"kind": kind} if manifest else None}


START = dt.datetime(2026, 1, 1, 2, 0)


def daily(days, **kw):
    return [backup(START + dt.timedelta(days=d), **kw) for d in range(days)]


def test_keep_last_only(plan):
    backups = daily(10)
    result = plan(backups, keep_last=3, keep_daily=0, keep_weekly=0, keep_monthly=0)
    assert result["keep"] == [b["backup_id"] for b in backups[-3:]][::-1]
    assert len(result["prune"]) == 7


def test_daily_keeps_the_newest_of_each_day(plan):
    backups = [backup(START + dt.timedelta(hours=h)) for h in range(0, 72, 6)]  # 4 a day, 3 days
    result = plan(backups, keep_last=0, keep_daily=2, keep_weekly=0, keep_monthly=0)
    assert result["keep"] == [backups[-1]["backup_id"], backups[-5]["backup_id"]]


def test_weekly_and_monthly_buckets(plan):
    backups = daily(120)
    result = plan(backups, keep_last=0, keep_daily=0, keep_weekly=4, keep_monthly=4)
    kept_months = {bid[:6] for bid in result["keep"]}
    assert kept_months == {"202601", "202602", "202603", "202604"}
    assert len(result["keep"]) <= 8


def test_newest_verified_protected_and_pre_restore_are_never_pruned(plan):
    backups = daily(20)
    backups[2]["verified"] = True
    backups[3] = backup(START + dt.timedelta(days=3), kind="pre_restore")
    backups[4]["manifest"] = None
    protect = [backups[5]["backup_id"]]
    result = plan(backups, keep_last=1, keep_daily=0, keep_weekly=0, keep_monthly=0, protect=protect)
    for index in (2, 3, 4, 5, 19):
        assert backups[index]["backup_id"] in result["keep"], index
    assert "the newest verified backup" in result["reasons"][backups[2]["backup_id"]]
    assert len(result["prune"]) == 15


def test_keep_and_prune_partition_the_input(plan):
    backups = daily(40)
    result = plan(backups, keep_last=2, keep_daily=5, keep_weekly=3, keep_monthly=2)
    assert sorted(result["keep"] + result["prune"]) == sorted(b["backup_id"] for b in backups)
    assert not set(result["keep"]) & set(result["prune"])


def test_checksum_mismatches(ansible_plugins):
    mismatches = ansible_plugins.filter_loader.get("pulih.core.checksum_mismatches").j2_function
    artifacts = [
        {"name": "a", "sha256": "11", "size": 5},
        {"name": "b", "sha256": "22", "size": 5},
        {"name": "c", "sha256": "33", "size": 5},
        {"name": "d", "sha256": "44", "size": 5},
    ]
    found = {
        "a": {"sha256": "11", "size": 5},
        "b": {"sha256": "23", "size": 5},
        "d": {"sha256": "44", "size": 6},
    }
    assert mismatches(artifacts, found) == ["b", "c (missing)", "d"]

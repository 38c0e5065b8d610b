"""The register-audit filters of pulih.core, on results shaped like the community modules' own."""

from __future__ import annotations

import pytest

PG = {"name": "app", "engine": "postgresql", "database": "simpeg", "host": "10.0.0.5", "port": 5432}
SYSTEM = ["postgres", "template0", "template1"]


@pytest.fixture(scope="module")
def drift(ansible_plugins):
    return ansible_plugins.filter_loader.get("pulih.core.database_drift").j2_function


def test_no_drift_when_declared_database_present(drift):
    results = [{"item": PG, "databases": {"simpeg": {}, "postgres": {}, "template0": {}, "template1": {}}}]
    assert drift(results, SYSTEM) == []


def test_missing_and_undeclared_databases(drift):
    results = [{"item": PG, "databases": {"simpeg_old": {}, "postgres": {}}}]
    found = drift(results, SYSTEM)
    assert [f["kind"] for f in found] == ["database_missing", "database_undeclared"]
    assert "'simpeg' is not on postgresql at 10.0.0.5:5432" in found[0]["message"]
    assert drift(results, SYSTEM, False) == found[:1]


def test_unreachable_server(drift):
    results = [{"item": PG, "failed": True, "msg": "connection refused"}]
    assert drift(results, SYSTEM) == [
        {
            "kind": "engine_unreachable",
            "item": "app",
            "message": "cannot query postgresql at 10.0.0.5:5432: connection refused",
        }
    ]


def test_two_items_on_one_server_declare_each_other(drift):
    other = {**PG, "name": "arsip", "database": "arsip"}
    dbs = {"simpeg": {}, "arsip": {}, "postgres": {}}
    assert drift([{"item": PG, "databases": dbs}, {"item": other, "databases": dbs}], SYSTEM) == []


@pytest.fixture(scope="module")
def choice(ansible_plugins):
    return ansible_plugins.filter_loader.get("pulih.core.restore_choice").j2_function


def _listed(backup_id, started, verified):
    manifest = {"kind": "scheduled", "started_at": started}
    return {"item": "app", "backup_id": backup_id, "verified": verified, "manifest": manifest}


def test_under_the_service_only_the_record_says_a_backup_is_verified(choice):
    """A line forged into the repository's verifications.jsonl makes the listing say verified;
    with the service's record given, the choice goes by the record alone."""
    listed = [_listed("B1", "2026-12-01T01:00:00Z", False), _listed("B2", "2026-12-02T01:00:00Z", True)]
    record = {
        "A-1:app:B1": {"manifest_sha256": "x", "verified": True},
        "A-1:app:B2": {"manifest_sha256": "y"},
    }
    assert choice(listed, "app")["backup_id"] == "B2"  # plain Ansible: the repository is trusted
    assert choice(listed, "app", recorded=record, asset_id="A-1")["backup_id"] == "B1"
    refused = choice(listed, "app", recorded={}, asset_id="A-1")
    assert (
        refused["error"].startswith("no verified backup of app")
        and "2 published, 0 verified" in refused["error"]
    )

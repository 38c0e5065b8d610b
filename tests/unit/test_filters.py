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

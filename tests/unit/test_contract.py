"""The role-wrapper contract: what the roles publish is checked against
schemas/role_results.schema.json before the wrapper reads it; a role that publishes something
else fails its host with the field named (a report never silently lacks a field)."""

from __future__ import annotations

import pytest

from pulih import contract, runner

BACKUP = {
    "item": "simpeg",
    "engine": "postgresql",
    "ok": True,
    "backup_id": "20261202T010203Z-0a1b",
    "bytes": 1234,
    "seconds": 1.5,
    "pruned": [],
    "kind": "scheduled",
    "request_id": None,
    "manifest_sha256": "a" * 64,
    "artifacts": [{"name": "database.pgdump.zst", "role": "data", "size": 1234, "sha256": "b" * 64}],
    "check_mode": False,
}
VERIFY = {"backup_id": "20261202T010203Z-0a1b", "item": "simpeg", "ok": True, "status": "verified"}
RESTORE = {
    "item": "simpeg",
    "engine": "postgresql",
    "ok": True,
    "phase": "done",
    "target_host": "simpeg-db01",
    "target": "simpeg",
    "backup_id": "20261202T010203Z-0a1b",
}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("pulih_backup_results", [BACKUP]),
        (
            "pulih_backup_results",
            [{"item": "x", "engine": "files", "ok": False, "backup_id": None, "error": "down"}],
        ),
        (
            "pulih_verify_results",
            [VERIFY, {**VERIFY, "ok": False, "status": "refused", "error": "x", "verified_on": None}],
        ),
        ("pulih_restore_results", [RESTORE, {**RESTORE, "ok": False, "phase": "gate", "error": "expired"}]),
        ("pulih_register_drift", [{"kind": "path_missing", "item": "x", "message": "m"}]),
    ],
)
def test_what_the_roles_publish_keeps_the_contract(key, value):
    assert contract.problems(key, value) == []


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        (
            "pulih_backup_results",
            [{**BACKUP, "ok": "yes"}],
            "pulih_backup_results[0].ok: 'yes' is not of type 'boolean'",
        ),
        (
            "pulih_backup_results",
            [{**BACKUP, "engine": "oracle"}],
            "pulih_backup_results[0].engine: 'oracle' is not one of",
        ),
        (
            "pulih_backup_results",
            [{**BACKUP, "backup_id": None}],
            "pulih_backup_results[0].backup_id: None is not of type",
        ),
        (
            "pulih_backup_results",
            [{**BACKUP, "ok": False, "backup_id": None}],
            "'error' is a required property",
        ),
        (
            "pulih_verify_results",
            [{**VERIFY, "status": "passed"}],
            "pulih_verify_results[0].status: 'passed' is not one of",
        ),
        ("pulih_verify_results", [{**VERIFY, "ok": False}], "pulih_verify_results[0].ok: True was expected"),
        (
            "pulih_restore_results",
            [{**RESTORE, "phase": "swapping"}],
            "pulih_restore_results[0].phase: 'swapping'",
        ),
        ("pulih_restore_results", [{**RESTORE, "ok": False, "error": "x"}], "pulih_restore_results[0].phase"),
        (
            "pulih_restore_results",
            [{k: v for k, v in RESTORE.items() if k != "target"}],
            "'target' is a required",
        ),
    ],
)
def test_a_broken_result_is_named_field_by_field(key, value, says):
    found = contract.problems(key, value)
    assert any(says in problem for problem in found), found


def test_a_host_whose_role_breaks_the_contract_fails_with_the_field_named():
    watcher = runner._Watcher(None)
    facts = {"pulih_restore_results": [{**RESTORE, "phase": "swapping"}], "pulih_backup_results": [BACKUP]}
    watcher({"event": "runner_on_ok", "event_data": {"host": "simpeg-db01", "res": {"ansible_facts": facts}}})
    host = watcher.hosts["simpeg-db01"]
    assert host.status == "failed"
    assert "pulih_restore_results" not in host.facts, "never read by the report"
    assert host.facts["pulih_backup_results"] == [BACKUP], "what keeps the contract is kept"
    assert "breaks the role-wrapper contract (schemas/role_results.schema.json)" in host.errors[0]
    assert "pulih_restore_results[0].phase: 'swapping' is not one of" in host.errors[0]

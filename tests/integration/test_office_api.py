"""SOP B's backup requests, their letters and acting approvers through the service's API (the
app itself on a real SQLite store and the example register, over HTTP by Starlette's test
client): what each route takes, refuses and puts on the record. The backup run itself, on real
servers, is in test_service_jobs.py."""

from __future__ import annotations

import datetime as dt
import hashlib
import time

import pytest
from fastapi.testclient import TestClient

from pulih.requests import Config
from pulih.service.accounts import Accounts
from pulih.service.app import create_app
from pulih.store import Store
from tests.conftest import PROJECT

PEOPLE = {
    "ani": (["requester"], ["bkpsdm"], ["request", "read"]),
    "sri": (["receiver"], [], ["approve", "read"]),
    "kabid": (["approver"], [], ["approve", "read"]),
    "tono": (["operator"], [], ["approve", "backup", "restore", "read"]),
    "ana": (["admin"], [], ["admin", "read"]),
}
PDF = b"%PDF-1.7\n% surat permohonan\n%%EOF\n"


@pytest.fixture
def api(tmp_path, monkeypatch):
    monkeypatch.setenv("PULIH_STATE_DIR", str(tmp_path / "state"))
    store = Store.at_path(tmp_path / "pulih.db")
    accounts = Accounts(store)
    accounts.add("test", "root", roles=["admin"])
    tokens = {}
    for name, (roles, skpds, scopes) in PEOPLE.items():
        accounts.add("root", name, roles=roles, skpds=skpds)
        tokens[name] = accounts.create_token("root", name, scopes=scopes, expires_in=dt.timedelta(days=1))[0]
    app = create_app(store, register=PROJECT / "inventories" / "example", config=Config())
    client = TestClient(app)

    def call(actor, method, path, **kw):
        return client.request(
            method, f"/v1{path}", headers={"Authorization": f"Bearer {tokens[actor]}"}, **kw
        )

    return call


def file_backup(api) -> str:
    body = {
        "procedure": "backup_restore",
        "kind": "backup",
        "skpd": "bkpsdm",
        "contact": "ani@bkpsdm.go.id",
        "scope": [{"asset_id": "DC-SRV-2023-001", "item": "simpeg"}],
        "reason": "migration",
    }
    filed = api("ani", "POST", "/requests", json=body)
    assert filed.status_code == 201, filed.text
    return str(filed.json()["id"])


def test_a_letter_goes_in_as_bytes_comes_back_held_to_its_hash_and_a_bad_one_is_refused(api):
    rid = file_backup(api)
    attached = api("ani", "POST", f"/requests/{rid}/letter?filename=surat.pdf", content=PDF)
    assert attached.status_code == 201, attached.text
    assert attached.json()["letters"][0]["sha256"] == hashlib.sha256(PDF).hexdigest()
    served = api("ani", "GET", f"/requests/{rid}/letter")
    assert served.content == PDF and served.headers["x-pulih-sha256"] == hashlib.sha256(PDF).hexdigest()
    assert (
        served.headers["content-type"] == "application/pdf"
        and "sandbox" in served.headers["content-security-policy"]
    )
    html = api("ani", "POST", f"/requests/{rid}/letter?filename=x.pdf", content=b"<html>")
    assert html.status_code == 400 and html.json()["error"]["code"] == 2
    big = api("ani", "POST", f"/requests/{rid}/letter", content=b"%PDF-" + b"0" * (10 * 1024 * 1024))
    assert big.status_code == 413 and big.json()["error"]["id"] == "letter.size"
    hidden = api("ani", "GET", "/requests/REQ-2099-0001/letter")
    assert hidden.status_code == 403  # to a requester, another's request and none look the same
    unlettered = api("ana", "GET", f"/requests/{file_backup(api)}/letter")
    assert unlettered.status_code == 404 and unlettered.json()["error"]["id"] == "letter.none"


def test_a_delegation_through_the_api_lets_its_delegate_approve_and_the_backup_run_is_gated(api):
    rid = file_backup(api)
    assert api("sri", "POST", f"/requests/{rid}/receive", json={}).status_code == 200
    refused = api("tono", "POST", f"/requests/{rid}/approve", json={})
    assert refused.status_code == 403 and "needs the role 'approver'" in refused.text
    by_approver = api(
        "kabid",
        "POST",
        "/delegations",
        json={
            "delegator": "kabid",
            "delegate": "tono",
            "ends": (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat(),
            "reason": "x",
        },
    )
    assert by_approver.status_code == 403 and "only an admin" in by_approver.text
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).isoformat()
    granted = api(
        "ana",
        "POST",
        "/delegations",
        json={"delegator": "kabid", "delegate": "tono", "ends": until, "reason": "SPT 1"},
    )
    assert granted.status_code == 201, granted.text
    assert api("tono", "GET", "/whoami").json()["acting"][0]["delegator"] == "kabid"
    approved = api("tono", "POST", f"/requests/{rid}/approve", json={})
    assert approved.status_code == 200, approved.text
    assert approved.json()["approvals"][-1]["acting_for"] == "kabid"
    # Before its plan, a backup request's run is refused by the gate; a restore of it always is.
    early = api("tono", "POST", f"/requests/{rid}/backup", json={"check": True})
    job = early.json()
    for _ in range(200):
        job = api("tono", "GET", f"/jobs/{job['id']}").json()
        if job["status"] != "running":
            break
        time.sleep(0.05)
    assert (
        job["status"] == "refused" and "a backup runs only once it is approved and planned" in job["message"]
    )
    planned = api("tono", "POST", f"/requests/{rid}/plan", json={"backups": {}, "window": "malam"})
    assert planned.status_code == 200, planned.text
    restore = api("tono", "POST", "/restores", json={"request": rid, "check": True}).json()
    for _ in range(200):
        restore = api("tono", "GET", f"/jobs/{restore['id']}").json()
        if restore["status"] != "running":
            break
        time.sleep(0.05)
    assert restore["status"] == "refused" and "asks for a backup, not a restore" in restore["message"]
    ended = api("ana", "POST", f"/delegations/{granted.json()['id']}/end")
    assert ended.status_code == 200 and ended.json()["active"] is False
    assert api("tono", "GET", "/whoami").json()["acting"] == []

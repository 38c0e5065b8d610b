"""A property test of the gate through the service's API, on both stores: random sequences of
steps by random accounts (with tokens that each hold every scope their roles need), time
passing, approvals revoked, and restores asked for (`POST /v1/restores` with `check`); no
sequence gets a restore past the gate unless the record allows it.

The app is the service's own (create_app on a real store, the example register), driven
in-process over HTTP by Starlette's test client, so that a few hundred steps take seconds."""

from __future__ import annotations

import datetime as dt
import json
import time

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from pulih.requests import Config
from pulih.service.accounts import Accounts
from pulih.service.app import create_app
from pulih.store import parse_iso
from tests.conftest import PROJECT
from tests.integration import test_record as record_tests

Clock = record_tests.Clock
make_store = record_tests.make_store  # the same fixtures: a SQLite store, and a PostgreSQL one
postgres_url = record_tests.postgres_url

PEOPLE = {
    "ani": (["requester"], ["bkpsdm"], ["request", "read"]),
    "dina": (["requester", "approver"], ["dinkes"], ["request", "approve", "read"]),
    "sri": (["receiver", "approver"], [], ["approve", "read"]),
    "budi": (["operator"], [], ["restore", "read"]),
    "eko": (["operator", "approver"], [], ["restore", "approve", "read"]),
    "rita": (["auditor"], [], ["read"]),
}
ITEMS = [("DC-SRV-2023-001", "simpeg"), ("DC-SRV-2023-001", "simpeg-dokumen"), ("DC-SRV-2023-002", "simpus")]
SKPD = {"DC-SRV-2023-001": "bkpsdm", "DC-SRV-2023-002": "dinkes"}
STEPS = {  # step: (path, body)
    "receive": ("receive", {}),
    "approve": ("approve", {"valid_hours": 12}),
    "reject": ("reject", {"reason": "tidak"}),
    "revoke": ("revoke", {"reason": "dicabut"}),
    "assess": ("assess", {"data_exists": True, "damage": "error"}),
    "check": ("check-backups", {"query": False}),
    "plan": ("plan", {"backups": {}, "query": False, "unverified": "property test: no repository"}),
    "confirm": ("confirm", {}),
    "not_restored": ("not-restored", {"note": "belum"}),
    "close": ("close", {}),
}


class ApiGateMachine(RuleBasedStateMachine):
    store_factory = None
    allowed = 0  # restores the gate let through, over all examples: the invariants were tried

    @initialize()
    def setup(self):
        self.clock = Clock()
        self.store = type(self).store_factory()
        accounts = Accounts(self.store)
        accounts.add("test", "root", roles=["admin"])
        self.tokens = {}
        for name, (roles, skpds, scopes) in PEOPLE.items():
            accounts.add("root", name, roles=roles, skpds=skpds)
            self.tokens[name] = accounts.create_token(
                "root", name, scopes=scopes, expires_in=dt.timedelta(days=366)
            )[0]
        app = create_app(
            self.store,
            register=PROJECT / "inventories" / "example",
            config=Config(approval_validity_hours=24),
            clock=self.clock,
        )
        self.client = TestClient(app)
        self.ids: list[str] = []
        self.planned: list[str] = []  # the SOP rule's, which a restore is then asked for more often
        self.the_sop_to_its_plan("sri", ITEMS[:1])  # every sequence starts with one planned request

    def call(self, actor, method, path, body=None):
        headers = {"Authorization": f"Bearer {self.tokens[actor]}"}
        response = self.client.request(method, f"/v1{path}", json=body, headers=headers)
        if not response.is_success:  # every refusal is the envelope, with an exit code of the CLI's
            error = response.json()["error"]
            assert error["code"] in (2, 3, 4, 5) and error["message"], error
        return response

    @rule(
        actor=st.sampled_from(sorted(PEOPLE)),
        items=st.lists(st.sampled_from(ITEMS), min_size=1, max_size=2, unique=True),
    )
    def file(self, actor, items):
        body = {
            "skpd": SKPD[items[0][0]],
            "contact": "c",
            "reason": "error",
            "scope": [{"asset_id": a, "item": i} for a, i in items],
        }
        response = self.call(actor, "POST", "/requests", body)
        if response.status_code == 201:
            self.ids.append(response.json()["id"])
            assert "requester" in PEOPLE[actor][0]
            assert all(SKPD[a] in PEOPLE[actor][1] for a, _ in items), "filed for another SKPD's item"

    @rule(data=st.data(), actor=st.sampled_from(sorted(PEOPLE)), step=st.sampled_from(sorted(STEPS)))
    def act(self, data, actor, step):
        if not self.ids:
            return
        rid = data.draw(st.sampled_from(self.ids))
        path, body = STEPS[step]
        self.call(actor, "POST", f"/requests/{rid}/{path}", body)

    @rule(approver=st.sampled_from(["sri", "eko", "dina"]), items=st.sampled_from([ITEMS[:1], ITEMS[:2]]))
    def the_sop_to_its_plan(self, approver, items):
        """A request filed by Ani and taken through every step by the right people, so that
        restores are allowed often enough for the invariants below to be tried."""
        body = {"skpd": "bkpsdm", "contact": "c", "reason": "error", "scope": []}
        body["scope"] = [{"asset_id": a, "item": i} for a, i in items]
        self.ids.append(self.call("ani", "POST", "/requests", body).json()["id"])
        rid = self.ids[-1]
        for actor, step in (("sri", "receive"), (approver, "approve"), ("budi", "assess")):
            self.call(actor, "POST", f"/requests/{rid}/{STEPS[step][0]}", STEPS[step][1])
        for step in ("check", "plan"):
            done = self.call("budi", "POST", f"/requests/{rid}/{STEPS[step][0]}", STEPS[step][1])
        if done.status_code == 200:
            self.planned.append(rid)

    @rule(hours=st.integers(0, 8))
    def time_passes(self, hours):
        self.clock.at += dt.timedelta(hours=hours)

    @rule(
        data=st.data(),
        # Operators more often than the others, who are refused at once.
        actor=st.sampled_from(["budi", "eko"] * 3 + sorted(PEOPLE)),
        items=st.lists(st.sampled_from(ITEMS), max_size=2, unique=True),
        where=st.sampled_from([None, {"kind": "in_place"}, {"kind": "alternate", "host": "simpus-db01"}]),
    )
    def restore(self, data, actor, items, where):
        # Planned requests more often (whatever happened to them since), any other, or none.
        rid = data.draw(st.sampled_from([*self.ids, *self.planned * 3, "PPD-2026-9999"]))
        body = {"request": rid, "items": [f"{a}:{i}" for a, i in items], "target": where, "check": True}
        response = self.call(actor, "POST", "/restores", body)
        if response.status_code != 202:
            return
        job = response.json()
        deadline = time.monotonic() + 30
        while job["finished_at"] is None and time.monotonic() < deadline:
            time.sleep(0.02)
            job = self.call("budi", "GET", f"/jobs/{job['id']}").json()
        assert job["finished_at"] is not None, "a gate check did not end"
        if job["exit_code"] != 0:
            return
        ApiGateMachine.allowed += 1
        record = self.call("rita", "GET", f"/requests/{rid}").json()
        scope = {(s["asset_id"], s["item"]) for s in record["scope"]}
        assert "operator" in PEOPLE[actor][0]
        assert record["approved_by"] and record["approved_by"] != record["requester"]
        assert "approver" in PEOPLE[record["approved_by"]][0]
        assert self.clock.at <= parse_iso(record["approval_expires_at"])
        assert set(items) <= scope if items else True
        assert where is None or where == record["target"]
        assert record["status"] in ("planned", "executed", "not_restored")
        steps = [s["step"] for s in record["steps"]]
        last_approval = len(steps) - 1 - steps[::-1].index("approved")
        assert steps[last_approval:][:4] == ["approved", "assessed", "backups_checked", "planned"]
        assert "revoked" not in steps[last_approval:], "a revoked approval let a restore through"

    @invariant()
    def audit_chain_holds(self):
        if hasattr(self, "store"):
            assert self.store.verify_audit() == []

    def teardown(self):
        if hasattr(self, "client"):
            self.client.close()
            self.store.engine.dispose()


def test_no_sequence_of_api_calls_gets_an_unapproved_restore_past_the_gate(make_store, tmp_path, monkeypatch):
    monkeypatch.setenv("PULIH_STATE_DIR", str(tmp_path / "state"))  # the restore checks' reports
    ApiGateMachine.store_factory = staticmethod(make_store)
    ApiGateMachine.allowed = 0
    runner = ApiGateMachine.TestCase
    runner.settings = settings(
        max_examples=15,
        stateful_step_count=30,
        deadline=None,
        derandomize=True,  # the same sequences on every run: a failure is reproduced, never flaky
        suppress_health_check=list(HealthCheck),
    )
    runner().runTest()
    print(f"restores allowed: {ApiGateMachine.allowed}")
    assert ApiGateMachine.allowed >= 3, "too few sequences reached an allowed restore: little was tried"


def test_the_api_answers_json_for_every_request_it_refuses(make_store, tmp_path, monkeypatch):
    """A sanity check of the machine's own ground: a refusal is the envelope, never a bare 500."""
    monkeypatch.setenv("PULIH_STATE_DIR", str(tmp_path / "state"))
    machine = ApiGateMachine.__new__(ApiGateMachine)
    ApiGateMachine.store_factory = staticmethod(make_store)
    RuleBasedStateMachine.__init__(machine)
    machine.setup()
    try:
        response = machine.call("ani", "POST", "/requests/PPD-2026-0404/approve", {})
        assert response.status_code == 403 and "token may" in json.dumps(response.json())
        response = machine.call("sri", "POST", "/restores", {"request": "PPD-2026-0404", "check": True})
        assert response.status_code == 403 and response.json()["error"]["id"] == "auth.scope"
        # A restore's check run is cancelled only with a restore token, never a backup-only one.
        job = machine.call("budi", "POST", "/restores", {"request": machine.planned[0], "check": True}).json()
        machine.tokens["budi-backup"] = Accounts(machine.store).create_token(
            "root", "budi", scopes=["backup", "read"], expires_in=dt.timedelta(hours=1)
        )[0]
        response = machine.call("budi-backup", "POST", f"/jobs/{job['id']}/cancel", {"reason": "x"})
        assert job["kind"] == "restore_check" and response.status_code == 403, response.json()
        assert response.json()["error"]["id"] == "auth.scope"
        # The SOP's steps as the service runs them, with its configured standard times.
        sop = machine.call("rita", "GET", "/sop").json()
        step = {s["name"]: s for s in sop["steps"]}
        assert step["approved"]["role"] == "approver" and step["executed"]["next"][0] == "executed"
        assert step["planned"]["standard_minutes"] == {"recovery": 10, "backup_restore": 60}
        assert step["revoked"]["label"]["id"] == "persetujuan dicabut" and step["closed"]["form"] == "pd"
        assert machine.client.get("/v1/sop").status_code == 401
    finally:
        machine.teardown()


def test_a_flood_of_refused_tokens_fills_the_audit_log_only_so_far(make_store, tmp_path, monkeypatch):
    """Anyone who reaches the service can send wrong tokens: 30 refusals a minute are logged one
    by one, then one entry says the rest are not, and the next minute's first counts them."""
    monkeypatch.setenv("PULIH_STATE_DIR", str(tmp_path / "state"))
    machine = ApiGateMachine.__new__(ApiGateMachine)
    ApiGateMachine.store_factory = staticmethod(make_store)
    RuleBasedStateMachine.__init__(machine)
    machine.setup()

    def refused_entries():
        return [e for e in machine.store.audit_entries() if e["action"] in ("auth_failed", "auth_flood")]

    try:
        before = len(refused_entries())
        for n in range(45):
            bad = {"Authorization": f"Bearer pulih_wrong{n}"}
            assert machine.client.get("/v1/whoami", headers=bad).status_code == 403
        entries = refused_entries()[before:]
        assert [e["action"] for e in entries] == ["auth_failed"] * 30 + ["auth_flood"]
        # A valid token is not locked out by the flood.
        assert machine.call("rita", "GET", "/whoami").json()["name"] == "rita"
        machine.clock.at += dt.timedelta(seconds=61)
        assert machine.client.get("/v1/whoami", headers={"Authorization": "Bearer x"}).status_code == 403
        last = refused_entries()[-1]
        assert last["action"] == "auth_failed" and json.loads(last["payload"])["not_logged_before"] == 14
        assert machine.store.verify_audit() == []
    finally:
        machine.teardown()

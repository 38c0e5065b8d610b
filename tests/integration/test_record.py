"""The record: requests, the restore gate and the audit chain, on SQLite and on a real
PostgreSQL server started by the lab. The property test drives random sequences of request
commands by random actors and checks that no sequence gets a restore past the gate without a
valid, unexpired approval by someone other than the requester, covering the run."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import subprocess
import threading

import jsonschema
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from pulih import anchors as anchors_mod
from pulih import approvals
from pulih.anchors import AuditKey, FileAnchor, signed_text
from pulih.report import RunReport
from pulih.requests import BadRequestInput, Config, Refused, Requests
from pulih.service.accounts import AccountError, Accounts
from pulih.store import GENESIS, SCHEMA_VERSION, Store, _entry_hash, audit_table, iso, parse_iso
from tests import lab as lab_mod
from tests.conftest import PROJECT

ACTORS = {
    "ani": {"requester"},
    "budi": {"requester", "receiver"},
    "citra": {"receiver", "approver"},
    "dewi": {"approver", "operator"},
    "eko": {"operator"},
    "fajar": {"requester", "approver", "operator", "receiver"},
}
ITEMS = [("DC-1", "simpeg"), ("DC-1", "dokumen"), ("DC-2", "simpus")]


@pytest.fixture(scope="module")
def postgres_url():
    lab = lab_mod.Lab(1, repository=False)
    state = lab.up()
    host = state.host("lab1")
    yield (
        f"postgresql+psycopg://{lab_mod.DB_USER}:{state.db_password}@{host.address}:{host.pg_port}/",
        state,
        host,
    )
    lab.down()


_counter = iter(range(10**6))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.lab)])
def make_store(request, tmp_path):
    """A factory of fresh stores of the parametrized kind."""

    def make() -> Store:
        if request.param == "sqlite":
            return Store.at_path(tmp_path / f"store-{next(_counter)}.db")
        base = request.getfixturevalue("postgres_url")[0]
        name = f"record_{next(_counter)}"
        admin = sa.create_engine(base + "postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return Store(base + name)

    return make


class Clock:
    def __init__(self) -> None:
        self.at = dt.datetime(2026, 11, 21, 8, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.at


def make_requests(store: Store, clock: Clock | None = None) -> Requests:
    return Requests(
        store,
        Config(approval_validity_hours=24),
        clock or Clock(),
        roles_of=lambda actor: set(ACTORS.get(actor, ())),
    )


def planned_request(requests: Requests, *, plan: bool = True) -> str:
    rid = requests.new(
        "ani",
        procedure="recovery",
        skpd="bkpsdm",
        contact="ani@example.go.id",
        scope=[{"asset_id": "DC-1", "item": "simpeg"}],
        reason="error",
        reason_text="rows deleted by a faulty import",
    )["id"]
    requests.receive("citra", rid)
    requests.approve("dewi", rid)
    requests.assess("eko", rid, data_exists=True, damage="error")
    requests.check_backups("eko", rid, [{"item": "simpeg", "backup_id": "20261120T020000Z-0000"}])
    if plan:
        requests.plan("eko", rid, backups={"DC-1:simpeg": "20261120T020000Z-0000"}, window="tonight")
    return rid


# --------------------------------------------------------------------------- refusals


def test_the_whole_sop_is_recorded_with_who_when_and_standard_times(make_store):
    clock = Clock()
    requests = make_requests(make_store(), clock)
    rid = requests.new(
        "ani",
        procedure="recovery",
        skpd="bkpsdm",
        contact="0812",
        reason="error",
        scope=[{"asset_id": "DC-1", "item": "simpeg"}],
    )["id"]
    for actor, action in (("citra", "receive"), ("dewi", "approve")):
        clock.at += dt.timedelta(minutes=3)
        getattr(requests, action)(actor, rid)
    requests.assess("eko", rid, data_exists=True, damage="accidental_deletion", note="table emptied")
    requests.check_backups("eko", rid, [])
    requests.plan("eko", rid, backups={"DC-1:simpeg": "x"})
    assert requests.gate("eko", rid, run_scope=[{"asset_id": "DC-1", "item": "simpeg"}])["allowed"]
    requests.executed("eko", rid, outcome="failed", note="server down")
    requests.executed("eko", rid, outcome="succeeded")
    requests.confirm("ani", rid, note="data is back")
    record = requests.close("citra", rid)
    assert record["status"] == "closed"
    assert [s["step"] for s in record["steps"]] == [
        "filed",
        "received",
        "approved",
        "assessed",
        "backups_checked",
        "planned",
        "executed",
        "executed",
        "confirmed",
        "closed",
    ]
    timing = {t["step"]: t for t in record["timing"]}
    assert timing["received"]["standard_minutes"] == 1 and timing["received"]["actual_minutes"] == 3.0
    assert timing["received"]["overrun"] is True
    assert timing["approved"]["standard_minutes"] == 2 and timing["approved"]["overrun"] is True
    assert record["assessment"]["damage"] == "accidental_deletion"


def test_self_approval_is_refused(make_store):
    requests = make_requests(make_store())
    rid = requests.new(
        "fajar",
        procedure="backup_restore",
        skpd="dinkes",
        contact="x",
        reason="disaster",
        scope=[{"asset_id": "DC-2", "item": "simpus"}],
    )["id"]
    requests.receive("citra", rid)
    with pytest.raises(Refused, match="may not approve it: the approver is never the requester"):
        requests.approve("fajar", rid)


def test_wrong_order_is_refused(make_store):
    requests = make_requests(make_store())
    rid = requests.new(
        "ani",
        procedure="recovery",
        skpd="b",
        contact="x",
        reason="error",
        scope=[{"asset_id": "DC-1", "item": "simpeg"}],
    )["id"]
    with pytest.raises(Refused, match=r"is 'filed': 'approved' is out of order \(next: received\)"):
        requests.approve("dewi", rid)


def test_a_role_the_actor_does_not_hold_is_refused(make_store):
    requests = make_requests(make_store())
    with pytest.raises(Refused, match="needs the role 'requester'"):
        requests.new(
            "eko",
            procedure="recovery",
            skpd="b",
            contact="x",
            reason="error",
            scope=[{"asset_id": "DC-1", "item": "simpeg"}],
        )


def test_a_rejected_request_goes_nowhere_and_its_reason_is_kept(make_store):
    requests = make_requests(make_store())
    rid = requests.new(
        "ani",
        procedure="recovery",
        skpd="b",
        contact="x",
        reason="error",
        scope=[{"asset_id": "DC-1", "item": "simpeg"}],
    )["id"]
    requests.receive("citra", rid)
    assert (
        requests.reject("citra", rid, "no backup of that period exists")["rejected_reason"]
        == "no backup of that period exists"
    )
    with pytest.raises(Refused, match="was rejected \\(no backup of that period exists\\)"):
        requests.assess("eko", rid, data_exists=True, damage="error")
    with pytest.raises(Refused, match="was rejected"):
        requests.gate("eko", rid, run_scope=[{"asset_id": "DC-1", "item": "simpeg"}])


def test_an_expired_approval_is_refused(make_store):
    clock = Clock()
    requests = make_requests(make_store(), clock)
    rid = planned_request(requests)
    clock.at += dt.timedelta(hours=25)
    with pytest.raises(Refused, match="expired at 2026-11-22T08:00:00Z"):
        requests.gate("eko", rid, run_scope=[{"asset_id": "DC-1", "item": "simpeg"}])


def test_out_of_scope_and_other_target_are_refused(make_store):
    requests = make_requests(make_store())
    rid = planned_request(requests)
    with pytest.raises(Refused, match="DC-2:simpus is outside the approved scope"):
        requests.gate("eko", rid, run_scope=[{"asset_id": "DC-2", "item": "simpus"}])
    with pytest.raises(Refused, match="differs from the approved target"):
        requests.gate(
            "eko",
            rid,
            run_scope=[{"asset_id": "DC-1", "item": "simpeg"}],
            target={"kind": "alternate", "host": "other", "database": "x"},
        )
    unplanned = planned_request(requests, plan=False)
    with pytest.raises(Refused, match=r"outside request .* scope .* a request is never stretched"):
        requests.plan("eko", unplanned, backups={"DC-2:simpus": "y"})


def test_an_unknown_request_is_refused(make_store):
    requests = make_requests(make_store())
    with pytest.raises(Refused, match="there is no request 'PPD-2026-9999'"):
        requests.gate("eko", "PPD-2026-9999", run_scope=[{"asset_id": "DC-1", "item": "simpeg"}])
    with pytest.raises(Refused, match="there is no request"):
        requests.receive("citra", "nope")


# --------------------------------------------------------------------------- audit


def tamper(store: Store, statement: str, **params) -> None:
    with store.transaction() as conn:
        conn.execute(sa.text(statement), params)


@pytest.mark.parametrize(
    ("how", "statement", "named"),
    [
        ("edited", 'UPDATE pulih_audit SET payload = \'{"role": "approver"}\' WHERE seq = 3', 3),
        ("deleted", "DELETE FROM pulih_audit WHERE seq = 3", 4),
        (
            "reordered",
            "UPDATE pulih_audit SET seq = seq + 100 WHERE seq IN (3, 4); "
            "UPDATE pulih_audit SET seq = 4 WHERE seq = 103; UPDATE pulih_audit SET seq = 3 WHERE seq = 104",
            3,
        ),
    ],
)
def test_audit_verify_detects_and_names_tampering(make_store, how, statement, named):
    store = make_store()
    requests = make_requests(store)
    planned_request(requests)
    assert store.verify_audit() == []
    for part in statement.split("; "):
        tamper(store, part)
    problems = store.verify_audit()
    assert problems, how
    assert problems[0].seq == named, [str(p) for p in problems]


SIMPEG = [{"asset_id": "DC-1", "item": "simpeg"}]
LATER = "2099-01-01T00:00:00Z"
REVIVED = (
    f"UPDATE pulih_requests SET status = 'planned', approved_by = 'dewi', approval_expires_at = '{LATER}'"
)


def rejected_request(requests: Requests) -> str:
    rid = requests.new("ani", procedure="recovery", skpd="bkpsdm", contact="a", scope=SIMPEG, reason="error")[
        "id"
    ]
    requests.receive("citra", rid)
    requests.reject("dewi", rid, "not needed")
    return rid


def closed_request(requests: Requests) -> str:
    rid = planned_request(requests)
    requests.executed("eko", rid, outcome="succeeded")
    requests.confirm("ani", rid)
    requests.close("citra", rid)
    return rid


def filed_request(requests: Requests) -> str:
    rid = requests.new("ani", procedure="recovery", skpd="bkpsdm", contact="a", scope=SIMPEG, reason="error")[
        "id"
    ]
    requests.receive("citra", rid)
    return rid


# Edits of a request's row that anyone holding the store file can make, each of which the gate
# let through while `pulih audit verify` said "intact" (the log itself is untouched).
ROW_EDITS = {
    "a forged approval": (
        filed_request,
        REVIVED,
        {},
        "status",
    ),
    "a widened scope": (
        planned_request,
        'UPDATE pulih_requests SET scope = \'[{"asset_id": "DC-1", "item": "simpeg"}, '
        '{"asset_id": "DC-2", "item": "simpus"}]\'',
        {"run_scope": [{"asset_id": "DC-2", "item": "simpus"}]},
        "scope",
    ),
    "a changed target": (
        planned_request,
        'UPDATE pulih_requests SET target = \'{"kind": "alternate", "host": "x", "name": "y"}\'',
        {"target": {"kind": "alternate", "host": "x", "name": "y"}},
        "target",
    ),
    "an extended expiry": (
        planned_request,
        f"UPDATE pulih_requests SET approval_expires_at = '{LATER}'",
        {},
        "approval_expires_at",
    ),
    "a rejected request revived": (
        rejected_request,
        REVIVED,
        {},
        "status",
    ),
    "a closed request revived": (
        closed_request,
        "UPDATE pulih_requests SET status = 'executed'",
        {},
        "status",
    ),
    "an approver with no approver role": (
        planned_request,
        "UPDATE pulih_requests SET approved_by = 'eko'",
        {},
        "approved_by",
    ),
    "another requester": (planned_request, "UPDATE pulih_requests SET requester = 'budi'", {}, "requester"),
    "another planned backup": (
        planned_request,
        'UPDATE pulih_requests SET plan = \'{"backups": {"DC-1:simpeg": "20261121T020000Z-ffff"}}\'',
        {},
        "plan",
    ),
    "another restore point": (
        planned_request,
        "UPDATE pulih_requests SET restore_point = '2026-11-30'",
        {},
        "restore_point",
    ),
}


@pytest.mark.parametrize("edit", sorted(ROW_EDITS))
def test_the_gate_refuses_a_request_row_the_audit_log_does_not_bear_out(make_store, edit):
    make, statement, run, field = ROW_EDITS[edit]
    clock = Clock()
    store = make_store()
    requests = make_requests(store, clock)
    rid = make(requests)
    tamper(store, statement + " WHERE id = :rid", rid=rid)
    if edit == "an extended expiry":
        clock.at += dt.timedelta(hours=25)
    assert store.verify_audit() == [], "the log itself is intact: only the row changed"
    with pytest.raises(Refused, match=rf"'s {field} is .* in its row and .* on the audit log"):
        requests.gate("dewi", rid, run_scope=run.get("run_scope", SIMPEG), target=run.get("target"))
    assert store.audit_entries()[-1]["action"] == "restore.refused"


def test_the_gate_holds_a_run_to_the_targets_the_log_says_were_approved(make_store):
    store = make_store()
    requests = make_requests(store)
    rid = planned_request(requests, plan=False)
    requests.revoke("citra", rid, "re-approve with targets")
    requests.approve("citra", rid, targets=["postgresql://10.0.0.1:5432/simpeg"])
    requests.assess("eko", rid, data_exists=True, damage="error")
    requests.check_backups("eko", rid, [{"item": "simpeg", "backup_id": "20261120T020000Z-0000"}])
    requests.plan("eko", rid, backups={"DC-1:simpeg": "20261120T020000Z-0000"})
    tamper(
        store,
        "UPDATE pulih_approvals SET targets = :t WHERE request_id = :rid",
        t='["postgresql://x:1/y"]',
        rid=rid,
    )
    with pytest.raises(Refused, match="would change postgresql://x:1/y, which the approval"):
        requests.gate("dewi", rid, run_scope=SIMPEG, run_targets=["postgresql://x:1/y"])
    allowed = requests.gate("dewi", rid, run_scope=SIMPEG, run_targets=["postgresql://10.0.0.1:5432/simpeg"])
    assert allowed["allowed"]


def test_the_gate_refuses_every_restore_while_the_audit_log_is_broken(make_store):
    store = make_store()
    requests = make_requests(store)
    rid = planned_request(requests)
    assert requests.gate("dewi", rid, run_scope=SIMPEG)["allowed"]
    tamper(store, "UPDATE pulih_audit SET payload = '{}' WHERE seq = 2")
    with pytest.raises(
        Refused, match=r"the audit log is not intact \(audit entry 2: its content was changed"
    ):
        requests.gate("dewi", rid, run_scope=SIMPEG)


def rechain(store: Store, start: int, change) -> None:
    """Rewrite the log from entry `start` on as a holder of the store could: `change` edits the
    rows, then every hash from there is recomputed, so the chain alone holds."""
    rows = [dict(r) for r in store.audit_entries()]
    rows = change(rows)
    with store.transaction() as conn:
        conn.execute(sa.delete(audit_table))
        prev = rows[0]["prev_hash"] if rows else GENESIS
        for row in rows:
            if row["seq"] >= start:
                row["prev_hash"] = prev
                row["hash"] = _entry_hash(
                    prev,
                    row["seq"],
                    row["at"],
                    row["actor"],
                    row["action"],
                    row["request_id"],
                    row["payload"],
                )
            conn.execute(sa.insert(audit_table).values(**row))
            prev = row["hash"]


def edit_payload(seq):
    def change(rows):
        for row in rows:
            if row["seq"] == seq:
                row["payload"] = json.dumps({"role": "approver", "note": "rewritten"})
        return rows

    return change


def forge_one(rows):
    last = rows[-1]
    return [*rows, {**last, "seq": last["seq"] + 1, "action": "request.approved", "actor": "dewi"}]


ANCHORED_TAMPERING = {
    # how: (rewrite, the entry named, what the message says)
    "a middle entry edited, the rest re-chained": (lambda s: rechain(s, 3, edit_payload(3)), 3, "rewritten"),
    "the tail truncated": (lambda s: tamper(s, "DELETE FROM pulih_audit WHERE seq > 5"), 6, "truncated"),
    "every entry deleted": (lambda s: tamper(s, "DELETE FROM pulih_audit"), 1, "emptied"),
    "a forged entry appended, chained": (
        lambda s: rechain(s, len(s.audit_entries()) + 1, forge_one),
        None,
        "on no anchor",
    ),
}


@pytest.mark.parametrize("how", sorted(ANCHORED_TAMPERING))
def test_an_anchor_outside_the_store_shows_a_rewritten_chain(make_store, tmp_path, how):
    rewrite, named, says = ANCHORED_TAMPERING[how]
    store = make_store()
    store.anchors = [FileAnchor(tmp_path / "anchor.jsonl")]
    requests = make_requests(store)
    rid = planned_request(requests)
    entries = store.audit_entries()
    lines = (tmp_path / "anchor.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["hash"] == entries[-1]["hash"] and len(lines) == len(entries)
    assert store.verify_audit() == []
    rewrite(store)
    unanchored = Store(store.url, upgrade=False)
    assert unanchored.verify_audit() == [], "the chain alone says intact: that is why there are anchors"
    unanchored.engine.dispose()
    problems = store.verify_audit()
    assert problems and says in problems[0].message, [str(p) for p in problems]
    assert problems[0].seq == (named or len(entries) + 1), [str(p) for p in problems]
    with pytest.raises(Refused, match="the audit log is not intact"):
        requests.gate("dewi", rid, run_scope=SIMPEG)


def test_an_anchor_that_cannot_be_read_fails_the_check(make_store, tmp_path):
    store = make_store()
    store.anchors = [FileAnchor(tmp_path / "anchor.jsonl")]
    planned_request(make_requests(store))
    (tmp_path / "anchor.jsonl").unlink()
    problems = [str(p) for p in store.verify_audit()]
    assert problems == [f"anchor file {tmp_path / 'anchor.jsonl'}: cannot be read: No such file or directory"]


def test_anchor_lines_are_signed_by_the_audit_key_and_verify_offline(make_store, tmp_path):
    key = AuditKey.make(tmp_path / "audit_ed25519")
    store = make_store()
    store.anchors = [FileAnchor(tmp_path / "anchor.jsonl", key)]
    requests = make_requests(store)
    rid = planned_request(requests)
    assert store.verify_audit() == []
    last = json.loads((tmp_path / "anchor.jsonl").read_text().splitlines()[-1])
    assert last["key"] == key.fingerprint() and "BEGIN SSH SIGNATURE" in last["signature"]
    # Offline, with the standard tool alone: the README's command.
    (tmp_path / "allowed_signers").write_text(
        f'pulih-audit namespaces="pulih-audit" {key.public.read_text()}'
    )
    (tmp_path / "line.sig").write_text(last["signature"])
    body = {k: last[k] for k in ("at", "format", "hash", "key", "seq")}
    checked = subprocess.run(
        [
            *("ssh-keygen", "-Y", "verify", "-f", str(tmp_path / "allowed_signers")),
            *("-I", "pulih-audit", "-n", "pulih-audit", "-s", str(tmp_path / "line.sig")),
        ],
        input=json.dumps(body, sort_keys=True, separators=(",", ":")).encode(),
        capture_output=True,
        check=False,
    )
    assert checked.returncode == 0 and b"Good" in checked.stdout, checked.stderr

    # Whoever can write the store and append to the anchor, without the key: a forged entry,
    # chained, and a line for it, unsigned or signed by another key.
    rechain(store, len(store.audit_entries()) + 1, forge_one)
    head = store.head()
    forged = {"format": "pulih.anchor/1", "seq": head["seq"], "hash": head["hash"], "at": head["at"]}
    other = AuditKey.make(tmp_path / "other_ed25519")
    for line, says in (
        (forged, "is not signed by the audit key of that time"),
        (
            {
                **forged,
                "key": key.fingerprint(),
                "signature": other.sign(signed_text({**forged, "key": key.fingerprint()})),
            },
            "its signature does not verify",
        ),
    ):
        text = (tmp_path / "anchor.jsonl").read_text()
        with (tmp_path / "anchor.jsonl").open("a") as handle:
            handle.write(json.dumps(line) + "\n")
        problems = store.verify_audit()
        assert problems and says in problems[0].message, [str(p) for p in problems]
        with pytest.raises(Refused, match=says):  # the gate checks the newest line's signature
            requests.gate("dewi", rid, run_scope=SIMPEG)
        (tmp_path / "anchor.jsonl").write_text(text)


def test_audit_entries_chain(make_store):
    store = make_store()
    planned_request(make_requests(store))
    entries = store.audit_entries()
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(entries))


# --------------------------------------------------------------------------- schema


def test_an_older_store_is_upgraded_in_place(make_store):
    store = make_store()
    # Rebuild it at version 1, with a run recorded the old way.
    with store.transaction() as conn:
        for table in (
            "pulih_letters",
            "pulih_delegations",
            "pulih_backup_events",
            "pulih_backups",
            "pulih_approvals",
            "pulih_tokens",
            "pulih_accounts",
            "pulih_runs",
            "pulih_audit",
            "pulih_steps",
            "pulih_requests",
            "pulih_meta",
        ):
            conn.execute(sa.text(f"DROP TABLE {table}"))
    old = Store(store.url, upgrade=False)
    old.upgrade(to=1)
    assert old.version() == 1
    with old.transaction() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO pulih_runs (run_id, kind, status, started_at) "
                "VALUES ('r1', 'backup', 'succeeded', '2026-01-01T00:00:00Z')"
            )
        )
    # At version 3 a request was approved the old way (the approval only in its columns).
    old.upgrade(to=3)
    with old.transaction() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO pulih_requests (id, procedure, status, requester, skpd, contact, reason, "
                "reason_text, target, scope, created_at, approved_by, approved_at, approval_expires_at) "
                "VALUES ('PPD-2026-0001', 'recovery', 'approved', 'ani', 'bkpsdm', 'a@b', 'error', '', "
                "'{}', '[]', '2026-01-01T00:00:00Z', 'dewi', '2026-01-01T01:00:00Z', '2026-01-02T01:00:00Z')"
            )
        )
    # At version 6 a backup was recorded (its entry on the chain, not yet indexed).
    old.upgrade(to=6)
    with old.transaction() as conn:
        payload = {"asset_id": "DC-1", "item": "simpeg", "backup_id": "B1", "manifest_sha256": "cd" * 32}
        old.append_audit(conn, actor="budi", action="backup.recorded", request_id=None, payload=payload)
    reopened = Store(store.url)
    assert reopened.version() == SCHEMA_VERSION
    assert reopened.recorded_backups([("DC-1", "simpeg")])["DC-1:simpeg:B1"]["manifest_sha256"] == "cd" * 32
    with reopened.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT run_id, exit_code FROM pulih_runs")).one()
    assert (row.run_id, row.exit_code) == ("r1", None)
    approvals = make_requests(reopened).get("PPD-2026-0001")["approvals"]
    assert [(a["approver"], a["expires_at"]) for a in approvals] == [("dewi", "2026-01-02T01:00:00Z")]


def test_approvals_are_a_list_and_not_restored_is_the_requesters_step(make_store):
    requests = make_requests(make_store())
    rid = planned_request(requests)
    assert [a["approver"] for a in requests.get(rid)["approvals"]] == ["dewi"]
    scope = [{"asset_id": "DC-1", "item": "simpeg"}]
    requests.gate("eko", rid, run_scope=scope)
    requests.executed("eko", rid, outcome="succeeded")
    with pytest.raises(BadRequestInput, match="say what is not restored"):
        requests.not_restored("ani", rid, "")
    with pytest.raises(Refused, match="only the requester"):
        requests.not_restored("fajar", rid, "tabel gaji masih kosong")
    assert requests.not_restored("ani", rid, "tabel gaji masih kosong")["status"] == "not_restored"
    requests.gate("eko", rid, run_scope=scope)  # the operator restores again, under the same approval
    requests.executed("eko", rid, outcome="succeeded")
    assert requests.confirm("ani", rid)["status"] == "confirmed"
    steps = [s["step"] for s in requests.get(rid)["steps"]]
    assert steps[-4:] == ["executed", "not_restored", "executed", "confirmed"]


# --------------------------------------------------------------------------- property


class GateMachine(RuleBasedStateMachine):
    """Random request commands by random actors; the gate's invariant checked after each."""

    store_factory = None

    @initialize()
    def setup(self):
        self.clock = Clock()
        self.store = type(self).store_factory()
        self.requests = make_requests(self.store, self.clock)
        self.ids: list[str] = []

    def _try(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Refused:
            return None

    @rule(
        actor=st.sampled_from(sorted(ACTORS)),
        items=st.lists(st.sampled_from(ITEMS), min_size=1, max_size=2, unique=True),
    )
    def file(self, actor, items):
        record = self._try(
            self.requests.new,
            actor,
            procedure="recovery",
            skpd="s",
            contact="c",
            reason="error",
            scope=[{"asset_id": a, "item": i} for a, i in items],
        )
        if record:
            self.ids.append(record["id"])

    @rule(
        data=st.data(),
        actor=st.sampled_from(sorted(ACTORS)),
        step=st.sampled_from(
            ["receive", "approve", "reject", "assess", "check", "plan", "executed", "confirm", "close"]
        ),
    )
    def act(self, data, actor, step):
        if not self.ids:
            return
        rid = data.draw(st.sampled_from(self.ids))
        calls = {
            "receive": lambda: self.requests.receive(actor, rid),
            "approve": lambda: self.requests.approve(actor, rid, valid_hours=data.draw(st.integers(1, 48))),
            "reject": lambda: self.requests.reject(actor, rid, "no"),
            "assess": lambda: self.requests.assess(actor, rid, data_exists=True, damage="error"),
            "check": lambda: self.requests.check_backups(actor, rid, []),
            "plan": lambda: self.requests.plan(actor, rid, backups={}),
            "executed": lambda: self.requests.executed(actor, rid, outcome="failed"),
            "confirm": lambda: self.requests.confirm(actor, rid),
            "close": lambda: self.requests.close(actor, rid),
        }
        self._try(calls[step])

    @rule(hours=st.integers(0, 30))
    def time_passes(self, hours):
        self.clock.at += dt.timedelta(hours=hours)

    @rule(
        data=st.data(),
        actor=st.sampled_from(sorted(ACTORS)),
        items=st.lists(st.sampled_from(ITEMS), min_size=1, max_size=3, unique=True),
        run_target=st.sampled_from([None, {"kind": "in_place"}, {"kind": "alternate", "host": "h"}]),
    )
    def restore(self, data, actor, items, run_target):
        if not self.ids:
            return
        rid = data.draw(st.sampled_from([*self.ids, "PPD-2026-9999"]))
        scope = [{"asset_id": a, "item": i} for a, i in items]
        decision = self._try(self.requests.gate, actor, rid, run_scope=scope, target=run_target)
        if decision is None:
            return
        record = self.requests.get(rid)
        assert "operator" in ACTORS[actor]
        assert record["approved_by"] and record["approved_by"] != record["requester"]
        assert "approver" in ACTORS[record["approved_by"]]
        assert self.clock.at <= parse_iso(record["approval_expires_at"])
        assert {(s["asset_id"], s["item"]) for s in scope} <= {
            (s["asset_id"], s["item"]) for s in record["scope"]
        }
        assert run_target is None or run_target == record["target"]
        assert record["status"] in ("planned", "executed")
        assert [s["step"] for s in record["steps"]][:6] == [
            "filed",
            "received",
            "approved",
            "assessed",
            "backups_checked",
            "planned",
        ]

    @invariant()
    def audit_chain_holds(self):
        if hasattr(self, "store"):
            assert self.store.verify_audit() == []


def test_no_sequence_of_commands_gets_an_unapproved_restore_past_the_gate(make_store):
    GateMachine.store_factory = staticmethod(make_store)
    runner = GateMachine.TestCase
    runner.settings = settings(
        max_examples=40, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
    )
    runner().runTest()


def test_the_gate_records_every_decision(make_store):
    store = make_store()
    requests = make_requests(store)
    rid = planned_request(requests)
    requests.gate("eko", rid, run_scope=[{"asset_id": "DC-1", "item": "simpeg"}])
    with pytest.raises(Refused):
        requests.gate("eko", rid, run_scope=[{"asset_id": "DC-2", "item": "simpus"}])
    with store.engine.connect() as conn:
        actions = [
            r.action for r in conn.execute(sa.select(audit_table.c.action).order_by(audit_table.c.seq))
        ]
    assert actions[-2:] == ["restore.allowed", "restore.refused"]
    assert iso(Clock()()) == "2026-11-21T08:00:00Z"
    assert json.loads(store.audit_entries()[-1]["payload"])["reason"].startswith("DC-2:simpus is outside")


# --------------------------------------------------------------------------- races


def _race(*calls):
    """Start every call at the same moment, each in its own thread with its own store
    connections; what each returned or raised."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(index, call):
        barrier.wait()
        try:
            results[index] = call()
        except Exception as exc:  # the loser's refusal is the point
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_an_approve_and_a_reject_racing_exactly_one_wins(make_store):
    """50 trials; before steps were transactions that lock what they read, both often
    succeeded (and the request was then restorable)."""
    store = make_store()
    requests = make_requests(store)
    url = store.url
    for _ in range(50):
        rid = requests.new(
            "ani",
            procedure="recovery",
            skpd="bkpsdm",
            contact="ani@example.go.id",
            scope=[{"asset_id": "DC-1", "item": "simpeg"}],
            reason="error",
        )["id"]
        requests.receive("citra", rid)
        approver, rejecter = (
            make_requests(Store(url, upgrade=False)),
            make_requests(Store(url, upgrade=False)),
        )
        results = _race(
            lambda a=approver, r=rid: a.approve("dewi", r),
            lambda j=rejecter, r=rid: j.reject("citra", r, "not needed"),
        )
        won = [r for r in results if isinstance(r, dict)]
        lost = [r for r in results if isinstance(r, Refused)]
        assert len(won) == 1 and len(lost) == 1, results
        final = requests.get(rid)
        assert final["status"] == won[0]["status"]
        assert [s["step"] for s in final["steps"]].count("approved") + [
            s["step"] for s in final["steps"]
        ].count("rejected") == 1
        for other in (approver, rejecter):
            other.store.engine.dispose()
    assert store.verify_audit() == []


def test_the_last_two_admins_disabled_at_once_leave_one(make_store):
    """20 trials: each of two admins disables the other at the same moment; exactly one wins
    and the office keeps an admin (before the count locked the accounts, PostgreSQL let both)."""
    store = make_store()
    accounts = Accounts(store)
    url = store.url
    for trial in range(20):
        one, two = f"admin-a{trial}", f"admin-b{trial}"
        accounts.add("test", one, roles=["admin"])
        accounts.add("test", two, roles=["admin"])
        for other in [a for a in accounts.all() if "admin" in a.roles and a.name not in (one, two)]:
            accounts.set_disabled("test", other.name, True)
        first, second = Accounts(Store(url, upgrade=False)), Accounts(Store(url, upgrade=False))
        results = _race(
            lambda f=first, t=two, o=one: f.set_disabled(o, t, True),
            lambda s=second, t=two, o=one: s.set_disabled(t, o, True),
        )
        refused = [r for r in results if isinstance(r, AccountError)]
        assert len(refused) == 1 and refused[0].message_id == "account.last_admin", results
        assert len([a for a in accounts.all() if "admin" in a.roles and not a.disabled]) == 1
        for other in (first, second):
            other.store.engine.dispose()
    assert store.verify_audit() == []


def test_fifty_requests_filed_at_once_get_fifty_ids(make_store):
    store = make_store()
    url = store.url
    filers = [make_requests(Store(url, upgrade=False)) for _ in range(50)]

    def file(requests):
        return requests.new(
            "ani",
            procedure="recovery",
            skpd="bkpsdm",
            contact="ani@example.go.id",
            scope=[{"asset_id": "DC-1", "item": "simpeg"}],
            reason="error",
        )["id"]

    results = _race(*(lambda r=r: file(r) for r in filers))
    assert all(isinstance(r, str) for r in results), [r for r in results if not isinstance(r, str)][:3]
    assert len(set(results)) == 50
    assert store.verify_audit() == []
    for requests in filers:
        requests.store.engine.dispose()


def test_the_offices_policy_separates_more_duties(make_store):
    store = make_store()
    requests = make_requests(store)
    store.set_policy("admin", {"distinct": [["receiver", "approver"], ["approver", "operator"]]})
    rid = requests.new(
        "ani",
        procedure="recovery",
        skpd="bkpsdm",
        contact="ani@example.go.id",
        scope=[{"asset_id": "DC-1", "item": "simpeg"}],
        reason="error",
    )["id"]
    requests.receive("citra", rid)
    with pytest.raises(Refused, match="the receiver and the approver to be different people"):
        requests.approve("citra", rid)
    requests.approve("dewi", rid)
    requests.assess("eko", rid, data_exists=True, damage="error")
    requests.check_backups("eko", rid, [{"item": "simpeg", "backup_id": "20261120T020000Z-0000"}])
    with pytest.raises(Refused, match="dewi acted as approver"):
        requests.plan("dewi", rid, backups={"DC-1:simpeg": "20261120T020000Z-0000"})
    requests.plan("eko", rid, backups={"DC-1:simpeg": "20261120T020000Z-0000"})
    scope = [{"asset_id": "DC-1", "item": "simpeg"}]
    with pytest.raises(Refused, match="the approver and the operator to be different people"):
        requests.gate("dewi", rid, run_scope=scope)
    assert requests.gate("eko", rid, run_scope=scope)["allowed"]
    assert store.audit_entries()[0]["action"] == "policy_set"


def test_a_published_backup_is_recorded_once_with_its_hashes_on_the_chain(make_store):
    """What a backup run's report says it published goes on the record once (a report is
    written more than once), each with an audit entry of its manifest's digest and artifacts."""
    store = make_store()
    report = RunReport(kind="backup", command=["pulih", "backup"], check_mode=False, operator="budi")
    artifact = {"name": "database.sql.zst", "role": "data", "sha256": "ab" * 32, "size": 10, "format": "x"}
    one, restored, pre = "20261201T000000Z-0001", "20261201T000000Z-0002", "20261201T000000Z-0003"
    base = {"host": "lab1", "asset_id": "LAB-001", "item": "app", "ok": True}
    report.items = [
        {**base, "backup_id": one, "kind": "scheduled", "manifest_sha256": "cd" * 32,
         "artifacts": [artifact]},
        {**base, "item": "broken", "ok": False, "backup_id": None},
        {**base, "backup_id": restored, "restore": {"pre_restore_backup": {
            "backup_id": pre, "manifest_sha256": "ef" * 32, "artifacts": [artifact]}}},
    ]  # fmt: skip
    for _ in range(2):
        store.record_backups(report.published_backups(), run_id=report.run_id, actor="budi")
    unverified = {"verified": False, "last_verification": None, "adopted": False}
    assert store.recorded_backups([("LAB-001", "app"), ("LAB-002", "app")]) == {
        "LAB-001:app:20261201T000000Z-0001": {"manifest_sha256": "cd" * 32, **unverified},
        "LAB-001:app:20261201T000000Z-0003": {"manifest_sha256": "ef" * 32, **unverified},
    }
    entries = [e for e in store.audit_entries() if e["action"] == "backup.recorded"]
    assert len(entries) == 2 and store.verify_audit(signatures=False) == []
    first = json.loads(entries[0]["payload"])
    assert first["manifest_sha256"] == "cd" * 32 and first["artifacts"] == [
        {"name": "database.sql.zst", "role": "data", "sha256": "ab" * 32, "size": 10}
    ]
    assert json.loads(entries[1]["payload"])["kind"] == "pre_restore"


def test_a_verification_goes_on_the_record_only_for_the_recorded_manifest_and_rows_do_not_count(make_store):
    """A test restore is recorded against the manifest the record holds; one of another manifest
    (a backup changed since) or of an unrecorded backup is left off. What the service reads is
    the chain's entries: an edited row of the index or of pulih_backups changes nothing."""
    store = make_store()
    one = {
        "asset_id": "LAB-001",
        "item": "app",
        "backup_id": "B1",
        "manifest_sha256": "cd" * 32,
        "artifacts": [],
    }
    store.record_backups([one], run_id="run-1", actor="budi")
    base = {
        "asset_id": "LAB-001",
        "item": "app",
        "backup_id": "B1",
        "checks": ["checksums"],
        "verified_on": "lab1",
    }
    written = store.record_verifications(
        [
            {**base, "status": "verified", "manifest_sha256": "00" * 32},  # another manifest
            {**base, "backup_id": "B9", "status": "verified", "manifest_sha256": "cd" * 32},  # unrecorded
        ],
        run_id="run-2",
        actor="budi",
    )
    assert written == 0 and not store.recorded_backups([("LAB-001", "app")])["LAB-001:app:B1"]["verified"]
    assert (
        store.record_verifications(
            [{**base, "status": "verified", "manifest_sha256": "cd" * 32}], run_id="run-3", actor="budi"
        )
        == 1
    )
    assert (
        store.record_verifications(
            [{**base, "status": "verified", "manifest_sha256": "cd" * 32}], run_id="run-3", actor="budi"
        )
        == 0
    )
    state = store.recorded_backups([("LAB-001", "app")])["LAB-001:app:B1"]
    assert state["verified"] and state["last_verification"]["run_id"] == "run-3"
    with store.transaction() as conn:  # a store holder edits the rows, not the chain
        conn.execute(sa.text("UPDATE pulih_backups SET manifest_sha256 = :d"), {"d": "ff" * 32})
        conn.execute(
            sa.text(
                "INSERT INTO pulih_backup_events (asset_id, item, backup_id, audit_seq) "
                "VALUES ('LAB-001', 'app', 'B7', 1)"
            )
        )
    assert store.recorded_backups([("LAB-001", "app")])["LAB-001:app:B1"]["manifest_sha256"] == "cd" * 32
    assert "LAB-001:app:B7" not in store.recorded_backups([("LAB-001", "app")])  # seq 1 is about B1
    failed = {**base, "status": "failed", "manifest_sha256": "cd" * 32, "error": "row counts differ"}
    store.record_verifications([failed], run_id="run-4", actor="budi")
    assert not store.recorded_backups([("LAB-001", "app")])["LAB-001:app:B1"]["verified"]
    actions = [e["action"] for e in store.audit_entries()]
    assert actions.count("backup.verified") == 1 and actions.count("backup.verification_failed") == 1


# --------------------------------------------------------------------------- signed approvals


def ssh_key(folder, name):
    """A fresh Ed25519 key pair: (private key path, public key line)."""
    private = folder / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(private)], check=True
    )
    return private, (folder / f"{name}.pub").read_text()


@pytest.fixture
def signing(make_store, tmp_path):
    """A record whose clock is the real one (keys are registered at the real time), dewi an
    approver with a registered key, and a received request waiting for her approval."""
    store = make_store()
    clock = Clock()
    clock.at = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=1)
    requests = make_requests(store, clock)
    accounts = Accounts(store)
    for name in ("root", "dewi", "fajar"):
        accounts.add("root", name, roles=["admin"] if name == "root" else ["approver"])
    key, public = ssh_key(tmp_path, "dewi")
    accounts.add_key("root", "dewi", public)

    def received() -> str:
        rid = requests.new(
            "ani",
            procedure="recovery",
            skpd="bkpsdm",
            contact="a",
            scope=SIMPEG,
            reason="error",
            reason_text="x",
        )["id"]
        requests.receive("citra", rid)
        return rid

    return {"store": store, "requests": requests, "accounts": accounts, "key": key, "public": public,
            "received": received, "clock": clock, "folder": tmp_path}  # fmt: skip


TARGETS = ["postgresql://10.0.0.1:5432/simpeg"]


def signed_by(requests, key, rid, *, approver="dewi", targets=TARGETS, **options):
    doc = requests.approval_statement(approver, rid, targets=targets, **options)
    return {"statement": doc, "signature": approvals.sign(approvals.canonical(doc), key)}


def test_a_signed_approval_is_checked_kept_on_the_chain_and_verifies_offline(signing):
    """Signed by dewi's registered key, over the statement the service gave: on the approval
    row and on the chain, with the key's fingerprint; the gate re-checks it where the policy
    wants it; ssh-keygen alone verifies it with the allowed-signers file export-signers gives."""
    requests, store, folder = signing["requests"], signing["store"], signing["folder"]
    rid = signing["received"]()
    signed = signed_by(requests, signing["key"], rid, note="ok")
    doc = requests.approve("dewi", rid, targets=TARGETS, note="ok", signed=signed)
    approval = doc["approvals"][0]
    schema = json.loads((PROJECT / "schemas" / "approval_statement.schema.json").read_text())
    jsonschema.validate(json.loads(approval["statement"]), schema)
    fingerprint = approvals.checked_public_key(signing["public"])[1]
    assert (
        approval["key_fingerprint"] == fingerprint
        and approval["statement"] == approvals.canonical(signed["statement"]).decode()
    )
    entry = [e for e in store.audit_entries() if e["action"] == "request.approved"][-1]
    assert json.loads(entry["payload"])["signed"]["key"] == fingerprint
    store.set_policy("root", {**store.policy(), "signed_approvals": "in_place"})
    requests.assess("eko", rid, data_exists=True, damage="error")
    requests.check_backups("eko", rid, [])
    requests.plan("eko", rid, backups={"DC-1:simpeg": "B1"})
    assert requests.gate("eko", rid, run_scope=SIMPEG, run_targets=TARGETS)["allowed"]
    # Offline: the statement's bytes, the signature and the exported allowed signers.
    (folder / "statement.json").write_text(approval["statement"])
    (folder / "statement.json.sig").write_text(approval["signature"])
    (folder / "allowed_signers").write_text(approvals.allowed_signers(approvals.keys_on_chain(store)))
    offline = subprocess.run(
        ["ssh-keygen", "-Y", "verify", "-f", str(folder / "allowed_signers"), "-I", "dewi",
         "-n", "pulih-approval", "-s", str(folder / "statement.json.sig")],
        input=(folder / "statement.json").read_bytes(), capture_output=True, check=False,
    )  # fmt: skip
    assert offline.returncode == 0 and fingerprint in offline.stdout.decode(), offline.stderr


def test_signed_approvals_that_do_not_hold_are_refused(signing):
    """A wrong key, a statement altered after signing, a signature replayed onto another
    request, a statement of another history, a key revoked before signing: each refused,
    exit 3, naming why; nothing is approved."""
    requests, accounts, folder = signing["requests"], signing["accounts"], signing["folder"]
    rid, other = signing["received"](), signing["received"]()
    stranger, _ = ssh_key(folder, "stranger")
    cases = {
        "wrong key": (signed_by(requests, stranger, rid), "does not verify with any key dewi held"),
        "replayed": (signed_by(requests, signing["key"], other), "request_id"),
    }
    altered = signed_by(requests, signing["key"], rid)
    altered["statement"]["valid_hours"] = 720
    cases["altered"] = (altered, "does not verify")
    elsewhere = signed_by(requests, signing["key"], rid)
    elsewhere["statement"]["chain_head"]["hash"] = "0" * 64
    cases["another history"] = (
        {"statement": elsewhere["statement"],
         "signature": approvals.sign(approvals.canonical(elsewhere["statement"]), signing["key"])},
        "not on this audit log",
    )  # fmt: skip
    widened = signed_by(requests, signing["key"], rid, targets=[*TARGETS, "mariadb://10.0.0.9:3306/x"])
    cases["other targets"] = (widened, "targets")
    for name, (signed, why) in cases.items():
        # Approved as the statement says (the altered one too): only the signature can tell.
        with pytest.raises(Refused, match=why):
            requests.approve(
                "dewi", rid, targets=TARGETS, valid_hours=signed["statement"]["valid_hours"], signed=signed
            )
        assert requests.get(rid)["status"] == "received", name
    # Revoked, then signed: the allowed-signers line ends at the revocation.
    fingerprint = approvals.checked_public_key(signing["public"])[1]
    accounts.revoke_key("root", "dewi", fingerprint)
    signing["clock"].at += dt.timedelta(minutes=5)
    with pytest.raises(Refused, match="does not verify"):
        requests.approve("dewi", rid, targets=TARGETS, signed=signed_by(requests, signing["key"], rid))
    assert 'valid-before="' in approvals.allowed_signers(approvals.keys_on_chain(signing["store"]))


def test_a_policy_wanting_signatures_refuses_an_unsigned_approval_and_its_restores(signing):
    """signed_approvals: in_place refuses an unsigned approval of an in-place restore, and the
    gate refuses a restore under an approval given unsigned before the policy was set; an
    alternate target needs none unless the policy says all."""
    requests, store = signing["requests"], signing["store"]
    before = signing["received"]()
    requests.approve("dewi", before, targets=TARGETS)  # unsigned, before the policy
    requests.assess("eko", before, data_exists=True, damage="error")
    requests.check_backups("eko", before, [])
    requests.plan("eko", before, backups={"DC-1:simpeg": "B1"})
    store.set_policy("root", {**store.policy(), "signed_approvals": "in_place"})
    with pytest.raises(Refused, match="approval is not signed"):
        requests.gate("eko", before, run_scope=SIMPEG, run_targets=TARGETS)
    rid = signing["received"]()
    with pytest.raises(Refused, match="policy wants a signed approval for restores in place"):
        requests.approve("dewi", rid, targets=TARGETS)
    # The policy is the chain's word: editing the stored row does not lift it.
    with store.transaction() as conn:
        conn.execute(
            sa.text("UPDATE pulih_meta SET value = :v WHERE key = 'policy'"), {"v": '{"distinct": []}'}
        )
    with pytest.raises(Refused, match="policy wants a signed approval"):
        requests.approve("dewi", rid, targets=TARGETS)
    alternate = requests.new(
        "ani", procedure="recovery", skpd="bkpsdm", contact="a", scope=SIMPEG, reason="error",
        target={"kind": "alternate", "host": "lab2"},
    )["id"]  # fmt: skip
    requests.receive("citra", alternate)
    requests.approve("dewi", alternate, targets=TARGETS)
    assert requests.approve("dewi", rid, targets=TARGETS, signed=signed_by(requests, signing["key"], rid))


def test_keys_are_checked_registered_once_and_revoked_on_the_chain(signing):
    accounts, folder = signing["accounts"], signing["folder"]
    for bad in ("", "ssh-ed25519", 'command="x" ssh-ed25519 AAAA', "ssh-ed25519 AAAA\nssh-ed25519 BBBB",
                "ssh-ed25519 bm90IGEga2V5"):  # fmt: skip
        with pytest.raises(AccountError):
            accounts.add_key("root", "dewi", bad)
    with pytest.raises(AccountError, match="registered already"):
        accounts.add_key("root", "fajar", signing["public"])
    _, second = ssh_key(folder, "dewi2")
    added = accounts.add_key("root", "dewi", second)
    assert {k["fingerprint"] for k in accounts.keys("dewi")} >= {added["fingerprint"]}
    accounts.revoke_key("root", "dewi", added["fingerprint"])
    with pytest.raises(AccountError, match="was revoked"):
        accounts.revoke_key("root", "dewi", added["fingerprint"])
    actions = [e["action"] for e in signing["store"].audit_entries()]
    assert actions.count("key.added") == 2 and actions.count("key.revoked") == 1


def test_the_plan_must_serve_the_restore_point_the_request_asked_for(make_store):
    """A backup started after the request's restore point is refused at the plan and, were the
    plan on the chain to name one, at the gate: the approval was for that point in time."""
    requests = make_requests(make_store())
    rid = requests.new(
        "ani", procedure="recovery", skpd="bkpsdm", contact="a", scope=SIMPEG, reason="error",
        restore_point="2026-11-20",
    )["id"]  # fmt: skip
    requests.receive("citra", rid)
    requests.approve("dewi", rid)
    requests.assess("eko", rid, data_exists=True, damage="error")
    requests.check_backups("eko", rid, [])
    for late in ("20261121T000001Z-0000", "not-an-id"):
        with pytest.raises(Refused, match=r"after the restore point 2026-11-20|is not a backup id"):
            requests.plan("eko", rid, backups={"DC-1:simpeg": late})
    requests.plan("eko", rid, backups={"DC-1:simpeg": "20261120T235959Z-0000"})
    assert requests.gate("eko", rid, run_scope=SIMPEG)["allowed"]


def test_a_rotated_audit_key_signs_on_and_the_old_lines_still_verify(make_store, tmp_path):
    """A rotation is an entry on the chain naming both keys, signed by the old one; lines after
    it are the new key's, lines before it still verify with the old key the chain names (also
    for a store opened with the new key alone). A rotation the old key did not sign, and a line
    the old key signs after the rotation, are named."""
    old, new = AuditKey.make(tmp_path / "old_ed25519"), AuditKey.make(tmp_path / "new_ed25519")
    store = make_store()
    anchor = tmp_path / "anchor.jsonl"
    store.anchors = [FileAnchor(anchor, old)]
    requests = make_requests(store)
    planned_request(requests)
    store.rotate_audit_key("root", new)
    rotation = [e for e in store.audit_entries() if e["action"] == "audit_key.rotated"][-1]
    said = json.loads(rotation["payload"])
    assert (said["old"], said["new"]) == (old.fingerprint(), new.fingerprint())
    planned_request(requests)
    lines = [json.loads(line) for line in anchor.read_text().splitlines()]
    assert {line["key"] for line in lines if line["seq"] <= rotation["seq"]} == {old.fingerprint()}
    assert {line["key"] for line in lines if line["seq"] > rotation["seq"]} == {new.fingerprint()}
    assert store.verify_audit() == []
    reopened = Store(store.url, anchors=[FileAnchor(anchor, new)])
    assert reopened.verify_audit() == []
    # The old key, after the rotation, anchors nothing.
    store.anchors = [FileAnchor(anchor, old)]
    requests.new("ani", procedure="recovery", skpd="bkpsdm", contact="a", scope=SIMPEG, reason="error")
    stale = reopened.verify_audit()
    assert stale and "is not signed by the audit key of that time" in stale[-1].message, [
        str(p) for p in stale
    ]
    # A rotation someone wrote into the store with a key of their own.
    forger = AuditKey.make(tmp_path / "forger_ed25519")
    forged = {**said, "old": new.fingerprint(), "old_public_key": new.public_key(),
              "new": forger.fingerprint(), "new_public_key": forger.public_key()}  # fmt: skip
    forged["signature"] = forger.sign(anchors_mod.rotation_text(forged))
    with store.transaction() as conn:
        store.append_audit(conn, actor="x", action="audit_key.rotated", request_id=None, payload=forged)
    problems = [str(p) for p in reopened.verify_audit()]
    assert any("is not signed by the key it replaces" in p for p in problems), problems

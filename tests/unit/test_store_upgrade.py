"""A store made by the previous release is upgraded in place: tests/fixtures/store-v9.sqlite
(made by tests/fixtures/make_store_v9.py with the code of commit 873ebc3, store schema 9: a
few days of an office's work) opened, as a copy, by today's Store, which upgrades a schema on
open. The record reads back as it was written, the audit chain verifies against its anchor
file with the audit key's public half, and the record goes on from there."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from pulih.anchors import AuditKey, FileAnchor
from pulih.requests import Config, Requests
from pulih.service.accounts import Accounts
from pulih.store import SCHEMA_VERSION, Store
from tests.conftest import PROJECT

FIXTURES = PROJECT / "tests" / "fixtures"
STORE, ANCHOR, AUDIT_KEY = "store-v9.sqlite", "store-v9.anchor", "store-v9.audit_ed25519"
PREVIOUS_SCHEMA = 9
# What make_store_v9.py recorded: each request's steps, in order.
STEPS = {
    "PPD-2026-0001": [
        "filed",
        "received",
        "approved",
        "assessed",
        "backups_checked",
        "planned",
        "executed",
        "confirmed",
        "closed",
    ],
    "REQ-2026-0001": ["filed", "received", "rejected"],
    "PPD-2026-0002": ["filed", "received", "approved"],
}


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The fixture's files in a folder of the test's own (the checked-in ones stay schema 9)."""
    for name in (STORE, ANCHOR, AUDIT_KEY + ".pub"):
        shutil.copyfile(FIXTURES / name, tmp_path / name)
    return tmp_path


def schema_in_file(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT value FROM pulih_meta WHERE key = 'schema_version'").fetchone()[0])


def opened(folder: Path) -> Store:
    """The store as its service opens it: anchored, the lines checked with the audit key (only
    its public half was kept: nobody can sign a line for this store again)."""
    anchor = FileAnchor(folder / ANCHOR, AuditKey(folder / AUDIT_KEY))
    return Store(f"sqlite:///{folder / STORE}", anchors=[anchor])


def record(store: Store) -> Requests:
    accounts = Accounts(store)
    return Requests(store, Config(), roles_of=lambda name: set(accounts.get(name).roles))


def test_the_fixture_is_a_store_of_the_previous_release():
    assert schema_in_file(FIXTURES / STORE) == PREVIOUS_SCHEMA < SCHEMA_VERSION
    assert (FIXTURES / STORE).stat().st_size < 300_000


def test_opening_it_upgrades_it_in_place_to_this_schema(copy):
    store = opened(copy)
    assert store.version() == SCHEMA_VERSION == schema_in_file(copy / STORE)
    assert store.upgrade() == SCHEMA_VERSION  # a second open finds it upgraded: nothing to do
    assert sorted(p.name for p in copy.iterdir()) == sorted([STORE, ANCHOR, AUDIT_KEY + ".pub"])


def test_the_requests_and_their_steps_read_back(copy):
    requests = record(opened(copy))
    assert [r["id"] for r in requests.all()] == sorted(STEPS)
    for rid, steps in STEPS.items():
        request = requests.get(rid)
        assert [s["step"] for s in request["steps"]] == steps
        assert request["status"] == steps[-1]
    restored = requests.get("PPD-2026-0001")
    assert restored["requester"] == "ani" and restored["scope"] == [
        {"asset_id": "DC-SRV-2023-001", "item": "simpeg"}
    ]
    [approval] = restored["approvals"]
    assert approval["approver"] == "sri" and approval["signature"].startswith("-----BEGIN SSH SIGNATURE")
    assert json.loads(approval["statement"])["request_id"] == "PPD-2026-0001"
    assert restored["plan"]["protected"] is True and restored["assessment"]["damage"] == "error"
    assert [t["actual_minutes"] for t in restored["timing"]][:3] == [None, 12.0, 25.0]
    rejected = requests.get("REQ-2026-0001")
    assert rejected["rejected_reason"].startswith("a copy for a report is not a restore")
    assert requests.get("PPD-2026-0002")["target"] == {"kind": "alternate", "host": "pajak-stg01"}


def test_the_accounts_and_the_backups_read_back(copy):
    store = opened(copy)
    accounts = {a.name: a for a in Accounts(store).all()}
    assert sorted(accounts) == ["ani", "budi", "dewi", "eko", "rahmat", "sri"]
    assert accounts["sri"].totp and accounts["sri"].roles == ("receiver", "approver")
    assert accounts["ani"].skpds == ("bkpsdm",)
    backups = store.recorded_backups([("DC-SRV-2023-001", "simpeg"), ("DC-SRV-2023-002", "simpus")])
    assert len(backups) == 3  # the night's two, and SIMPEG's pre-restore backup
    scheduled = [b for key, b in backups.items() if not key.endswith("-e51f")]
    assert len(scheduled) == 2 and all(b["verified"] for b in scheduled)


def test_the_audit_chain_verifies_against_its_anchor_and_the_keys(copy):
    store = opened(copy)
    assert store.audit_count() == 37
    assert store.verify_audit() == []
    # The key kept is the one in force: the chain's rotation handed the signing over to it.
    kept = " ".join((copy / (AUDIT_KEY + ".pub")).read_text().split()[:2])
    assert len(store.audit_public_keys()) == 2 and store.audit_public_keys()[-1] == kept
    # The anchor's signatures are checked: a line whose signature is another line's is named.
    lines = [json.loads(line) for line in (copy / ANCHOR).read_text().splitlines()]
    lines[-1]["signature"] = lines[-2]["signature"]
    (copy / ANCHOR).write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
    assert [str(p) for p in store.verify_audit()] == [
        f"audit entry 37: anchor file {copy / ANCHOR}, line {len(lines)}: its signature does not verify with "
        f"{lines[-1]['key']}"
    ]
    (copy / ANCHOR).write_bytes((FIXTURES / ANCHOR).read_bytes())
    # The check has teeth on the upgraded file: one payload edited is named.
    with sqlite3.connect(copy / STORE) as db:
        db.execute("UPDATE pulih_audit SET payload = replace(payload, 'sri', 'eko') WHERE seq = 21")
    problems = [str(p) for p in store.verify_audit()]
    assert problems == ["audit entry 21: its content was changed after it was written"]


def test_the_record_goes_on_from_the_previous_releases_chain(copy):
    opened(copy).engine.dispose()  # upgraded as the service would
    store = Store(f"sqlite:///{copy / STORE}")  # the chain alone: no key here signs an anchor line
    head = store.head()
    assert head is not None and head["seq"] == 37
    requests = record(store)
    done = requests.assess("budi", "PPD-2026-0002", data_exists=True, damage="accidental_deletion")
    assert done["status"] == "assessed"
    entries = store.audit_entries()
    assert entries[-1]["seq"] == 38 and entries[-1]["prev_hash"] == head["hash"]
    assert store.verify_audit() == []

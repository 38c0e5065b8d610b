"""The record's rules for SOP B's backup requests, the request letter and acting approvers
(Plt./Plh.), on a real SQLite store: each rule refuses what it must, and the audit chain says
what happened."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest
import sqlalchemy as sa

from pulih import delegation
from pulih.requests import BadRequestInput, Config, Refused, Requests
from pulih.store import Store, letters_table

ROLES = {
    "ani": {"requester"},
    "citra": {"receiver"},
    "dewi": {"approver"},
    "hadi": {"approver", "requester"},  # a head of division who also files for their SKPD
    "eko": {"operator"},
    "rina": {"operator"},  # the acting approver's own account: no approver role
    "admin": {"admin"},
}
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


class Clock:
    def __init__(self) -> None:
        self.at = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.at


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.at_path(tmp_path / "pulih.db")


@pytest.fixture
def requests(store, clock) -> Requests:
    return Requests(store, Config(), clock, roles_of=lambda a: set(ROLES.get(a, ())))


def file_backup(requests: Requests, actor: str = "ani") -> str:
    return requests.new(
        actor,
        procedure="backup_restore",
        kind="backup",
        skpd="bkpsdm",
        contact="ani@example.go.id",
        scope=[{"asset_id": "DC-1", "item": "simpeg"}],
        reason="migration",
        reason_text="before moving SIMPEG to the new cluster",
    )["id"]


def chain(store: Store, action: str) -> list[dict]:
    return [json.loads(e["payload"]) for e in store.audit_entries() if e["action"] == action]


# --------------------------------------------------------------------------- backup requests


def test_a_backup_request_goes_filed_disposition_plan_executed_confirmed_with_sop_b_times(requests, clock):
    rid = file_backup(requests)
    requests.receive("citra", rid)
    clock.at += dt.timedelta(minutes=20)
    requests.approve("dewi", rid, note="disposisi: Seksi Infrastruktur")
    clock.at += dt.timedelta(minutes=30)
    planned = requests.plan("eko", rid, backups={}, window="Sabtu 22:00 WIB")
    assert planned["plan"] == {"backups": {}, "window": "Sabtu 22:00 WIB", "protected": False}
    decision = requests.gate("eko", rid, run_scope=planned["scope"], kind="backup")
    assert decision["allowed"]
    requests.executed("eko", rid, outcome="failed", note="lab1 unreachable")
    done = requests.executed(
        "eko", rid, outcome="succeeded", backups={"DC-1:simpeg": "20261201T090000Z-ab12"}
    )
    assert done["backups_made"] == {"DC-1:simpeg": "20261201T090000Z-ab12"}
    requests.confirm("ani", rid, note="the backup is there")
    record = requests.close("citra", rid)
    assert record["kind"] == "backup" and record["id"].startswith("REQ-")
    assert [s["step"] for s in record["steps"]] == [
        "filed",
        "received",
        "approved",
        "planned",
        "executed",
        "executed",
        "confirmed",
        "closed",
    ]
    timing = {t["step"]: t for t in record["timing"]}
    assert timing["approved"]["standard_minutes"] == 15 and timing["approved"]["overrun"] is True
    assert timing["planned"]["standard_minutes"] == 60 and timing["planned"]["overrun"] is False
    assert chain(requests.store, "request.filed")[0]["kind"] == "backup"
    assert chain(requests.store, "request_backup.allowed")[0]["request_id"] == rid


@pytest.mark.parametrize(
    ("step", "call"),
    [
        ("assessed", lambda r, rid: r.assess("eko", rid, data_exists=True, damage="none")),
        ("backups_checked", lambda r, rid: r.check_backups("eko", rid, [])),
    ],
)
def test_a_backup_request_has_no_assessment_nor_backup_check(requests, step, call):
    rid = file_backup(requests)
    requests.receive("citra", rid)
    requests.approve("dewi", rid)
    with pytest.raises(Refused, match=f"asks for a backup: '{step}' is a step of a restore"):
        call(requests, rid)


def test_a_backup_request_plans_no_backups_and_restores_nothing(requests):
    rid = file_backup(requests)
    requests.receive("citra", rid)
    requests.approve("dewi", rid)
    with pytest.raises(Refused, match="its plan names no backups"):
        requests.plan("eko", rid, backups={"DC-1:simpeg": "20261120T020000Z-0000"})
    requests.plan("eko", rid, backups={})
    scope = [{"asset_id": "DC-1", "item": "simpeg"}]
    with pytest.raises(Refused, match="asks for a backup, not a restore: nothing is restored"):
        requests.gate("eko", rid, run_scope=scope)
    assert chain(requests.store, "restore.refused")


def test_a_restore_request_is_never_run_as_a_backup(requests):
    rid = requests.new(
        "ani",
        procedure="backup_restore",
        skpd="bkpsdm",
        contact="x",
        scope=[{"asset_id": "DC-1", "item": "simpeg"}],
        reason="error",
    )["id"]
    with pytest.raises(Refused, match="asks for a restore, not a backup"):
        requests.gate("eko", rid, run_scope=[{"asset_id": "DC-1", "item": "simpeg"}], kind="backup")


def test_a_backup_requests_own_fields_are_checked(requests):
    base = {
        "skpd": "bkpsdm",
        "contact": "x",
        "scope": [{"asset_id": "DC-1", "item": "simpeg"}],
        "kind": "backup",
    }
    with pytest.raises(BadRequestInput, match="procedure B"):
        requests.new("ani", procedure="recovery", reason="migration", **base)
    with pytest.raises(BadRequestInput, match="unknown reason 'error' for a backup request"):
        requests.new("ani", procedure="backup_restore", reason="error", **base)
    with pytest.raises(BadRequestInput, match="no restore point"):
        requests.new(
            "ani", procedure="backup_restore", reason="migration", restore_point="2026-11-30", **base
        )
    with pytest.raises(BadRequestInput, match="unknown kind"):
        requests.new("ani", procedure="backup_restore", reason="migration", **{**base, "kind": "copy"})


def test_a_row_edited_from_backup_to_restore_is_caught_by_the_chain(requests, store):
    rid = file_backup(requests)
    requests.receive("citra", rid)
    requests.approve("dewi", rid)
    requests.plan("eko", rid, backups={})
    with store.transaction() as conn:
        conn.execute(sa.text("UPDATE pulih_requests SET kind = 'restore' WHERE id = :id"), {"id": rid})
    with pytest.raises(Refused, match='kind is "restore" in its row and "backup" on the audit log'):
        requests.gate("eko", rid, run_scope=[{"asset_id": "DC-1", "item": "simpeg"}])


# --------------------------------------------------------------------------- the letter


def test_the_letter_is_stored_typed_by_content_and_its_hash_is_on_the_chain(requests, store):
    rid = file_backup(requests)
    record = requests.attach_letter("ani", rid, PDF, "C:\\scans\\surat permohonan.pdf")
    (shown,) = record["letters"]
    assert shown["sha256"] == hashlib.sha256(PDF).hexdigest()
    assert (shown["media_type"], shown["filename"], shown["size"]) == (
        "application/pdf",
        "surat permohonan.pdf",
        len(PDF),
    )
    (entry,) = chain(store, "request.letter")
    assert entry["sha256"] == shown["sha256"] and entry["role"] == "requester"
    meta, content = requests.letter(rid)
    assert content == PDF and meta["id"] == shown["id"]
    assert store.verify_audit() == []
    # The receiver attaches the disposition's copy, a scan: both stay on the record.
    requests.receive("citra", rid)
    requests.attach_letter("citra", rid, PNG, "scan.png")
    assert [m["media_type"] for m in requests.get(rid)["letters"]] == ["application/pdf", "image/png"]
    assert requests.letter(rid)[1] == PNG


def test_a_letter_that_is_not_a_pdf_or_image_or_too_big_or_late_is_refused(requests):
    rid = file_backup(requests)
    with pytest.raises(BadRequestInput, match=r"PDF, PNG or JPEG.*3c68746d"):
        requests.attach_letter("ani", rid, b"<html><script>", "surat.pdf")
    with pytest.raises(BadRequestInput, match="at most 10 MiB"):
        requests.attach_letter("ani", rid, b"%PDF-" + b"0" * (10 * 1024 * 1024), "big.pdf")
    with pytest.raises(Refused, match="may not attach"):
        requests.attach_letter("eko", rid, PDF, "surat.pdf")
    requests.receive("citra", rid)
    requests.approve("dewi", rid)
    with pytest.raises(Refused, match="attached at filing or at the disposition"):
        requests.attach_letter("ani", rid, PDF, "late.pdf")


def test_a_letter_changed_in_the_store_is_refused_not_served(requests, store):
    rid = file_backup(requests)
    requests.attach_letter("ani", rid, PDF, "surat.pdf")
    forged = PDF.replace(b"Catalog", b"Catalof")
    with store.transaction() as conn:
        conn.execute(
            sa.update(letters_table)
            .where(letters_table.c.request_id == rid)
            .values(content=forged, sha256=hashlib.sha256(forged).hexdigest())
        )
    with pytest.raises(Refused, match="not the one its audit entry names") as refused:
        requests.letter(rid)
    assert refused.value.message_id == "letter.tampered"


# --------------------------------------------------------------------------- acting approvers


def grant(store, clock, **kw) -> delegation.Delegation:
    args = {
        "by": "admin",
        "by_is_admin": True,
        "delegator": "dewi",
        "delegate": "rina",
        "starts": clock.at,
        "ends": clock.at + dt.timedelta(days=3),
        "reason": "Plh. Kabid: SPT 800/123 (dewi on official travel)",
        "roles_of": lambda a: set(ROLES.get(a, ())),
        "at": clock.at,
    }
    return delegation.grant(store, **{**args, **kw})


def test_an_acting_approver_approves_inside_the_delegation_and_not_outside(requests, store, clock):
    granted = grant(store, clock, starts=clock.at + dt.timedelta(hours=1))
    rid = file_backup(requests)
    requests.receive("citra", rid)
    with pytest.raises(Refused, match="needs the role 'approver'"):  # not yet begun
        requests.approve("rina", rid)
    clock.at += dt.timedelta(hours=2)
    approved = requests.approve("rina", rid, note="a.n. Kabid")
    (approval,) = approved["approvals"]
    assert (approval["approver"], approval["acting_for"], approval["delegation_id"]) == (
        "rina",
        "dewi",
        granted.id,
    )
    assert approved["steps"][-1]["acting_for"] == "dewi"
    entry = chain(store, "request.approved")[0]
    assert (entry["acting_for"], entry["delegation"]) == ("dewi", granted.id)
    assert chain(store, "delegation.granted")[0]["delegate"] == "rina"
    # It ends by itself: three days on, rina is an operator again.
    other = file_backup(requests)
    requests.receive("citra", other)
    clock.at += dt.timedelta(days=3)
    with pytest.raises(Refused, match="needs the role 'approver'"):
        requests.approve("rina", other)


def test_a_delegation_never_lets_anyone_decide_on_their_own_or_the_delegators_request(requests, store, clock):
    grant(store, clock, delegator="hadi", delegate="ani")
    own = file_backup(requests, "ani")
    requests.receive("citra", own)
    with pytest.raises(Refused, match="the approver is never the requester"):
        requests.approve("ani", own)
    grant(store, clock, delegator="hadi", delegate="rina")
    theirs = file_backup(requests, "hadi")
    requests.receive("citra", theirs)
    with pytest.raises(Refused, match=r"hadi filed request .*acting for them, may not decide"):
        requests.approve("rina", theirs)
    with pytest.raises(Refused, match="acting for them, may not decide"):
        requests.reject("rina", theirs, "no")


def test_an_ended_delegation_and_one_whose_delegator_lost_the_role_give_nothing(requests, store, clock):
    granted = grant(store, clock)
    delegation.end(store, granted.id, by="dewi", by_is_admin=False, at=clock.at)
    rid = file_backup(requests)
    requests.receive("citra", rid)
    with pytest.raises(Refused, match="needs the role 'approver'"):
        requests.approve("rina", rid)
    assert chain(store, "delegation.ended")[0]["id"] == granted.id
    grant(store, clock)
    ROLES["dewi"] = set()
    try:
        with pytest.raises(Refused, match="needs the role 'approver'"):
            requests.approve("rina", rid)
    finally:
        ROLES["dewi"] = {"approver"}


def test_who_may_delegate_and_for_how_long(store, clock):
    with pytest.raises(delegation.DelegationError, match="only an admin delegate"):
        grant(store, clock, by="dewi", by_is_admin=False)
    store.set_policy("admin", {**store.policy(), "approvers_delegate": True})
    assert grant(store, clock, by="dewi", by_is_admin=False).delegator == "dewi"
    with pytest.raises(delegation.DelegationError, match="only their own approver role"):
        grant(store, clock, by="hadi", by_is_admin=False)
    with pytest.raises(delegation.DelegationError, match="at most 90 days"):
        grant(store, clock, ends=clock.at + dt.timedelta(days=91))
    with pytest.raises(delegation.DelegationError, match="ends after it starts"):
        grant(store, clock, ends=clock.at - dt.timedelta(hours=1))
    with pytest.raises(delegation.DelegationError, match="not an approver"):
        grant(store, clock, delegator="eko")
    with pytest.raises(delegation.DelegationError, match="for themselves"):
        grant(store, clock, delegate="dewi")
    with pytest.raises(delegation.DelegationError, match="names its reason"):
        grant(store, clock, reason=" ")


# --------------------------------------------------------------------------- the forms


def test_the_forms_show_a_backup_request_its_letter_and_the_acting_approver(requests, store, clock):
    from pulih import forms

    grant(store, clock)
    rid = file_backup(requests)
    requests.attach_letter("ani", rid, PDF, "surat-permohonan.pdf")
    requests.receive("citra", rid)
    requests.approve("rina", rid)
    requests.plan("eko", rid, backups={}, window="Sabtu 22:00 WIB")
    requests.executed("eko", rid, outcome="succeeded", backups={"DC-1:simpeg": "20261201T090000Z-ab12"})
    record = requests.get(rid)
    ppd = forms.render(record, "ppd", "id")
    assert "Formulir Permohonan Pencadangan (Form PPD, prosedur B)" in ppd
    assert "Disetujui oleh Plh. rina a.n. dewi" in ppd
    assert "surat-permohonan.pdf" in ppd and hashlib.sha256(PDF).hexdigest() in ppd
    assert "Titik pemulihan" not in ppd  # a backup has no restore point nor target
    pd = forms.render(record, "pd", "en")
    assert "Backup Work Form (Form PD, procedure B)" in pd
    assert "20261201T090000Z-ab12" in pd and "Sabtu 22:00 WIB" in pd
    assert "Assessment" not in pd
    assert "Approved by Plh. rina for dewi" in forms.render(record, "ppd", "en")


# --------------------------------------------------------------------------- maintenance windows


def one_server(fields: dict):
    """A register of one server in operation, with `fields` added to its entry: parsed."""
    from pulih import register as reg

    entry = {
        "asset_id": "A-1",
        "hostname": "app01",
        "address": "10.0.0.1",
        "ssh_user": "pulih",
        "skpd": "bkpsdm",
        "environment": "production",
        "status": "in_operation",
        "os": "Debian 12",
        "registered_by": "x",
        "registered_on": "2026-01-01",
        "last_reviewed": "2026-06-01",
        **fields,
    }
    doc = {"plugin": "pulih.core.asset_register", "version": 1, "assets": [entry]}
    return reg.parse_register(doc, "r.asset_register.yml", dt.date(2026, 12, 1))


def test_an_in_place_restore_outside_its_window_needs_an_approval_that_allows_it(requests, store):
    def planned(outside_window: bool) -> str:
        rid = requests.new(
            "ani",
            procedure="recovery",
            skpd="bkpsdm",
            contact="x",
            scope=[{"asset_id": "DC-1", "item": "simpeg"}],
            reason="error",
        )["id"]
        requests.receive("citra", rid)
        requests.approve("dewi", rid, outside_window=outside_window)
        requests.assess("eko", rid, data_exists=True, damage="error")
        requests.check_backups("eko", rid, [])
        requests.plan("eko", rid, backups={"DC-1:simpeg": "20261120T020000Z-0000"})
        return rid

    scope, closed = (
        [{"asset_id": "DC-1", "item": "simpeg"}],
        ["simpeg01 (window sat 22:00-04:00 (Asia/Jakarta))"],
    )
    strict = planned(outside_window=False)
    with pytest.raises(
        Refused, match=r"simpeg01 \(window sat.*outside its maintenance window now"
    ) as refused:
        requests.gate("eko", strict, run_scope=scope, closed_windows=closed)
    assert refused.value.message_id == "restore.window"
    assert requests.gate("eko", strict, run_scope=scope, closed_windows=[])["allowed"]  # in the window
    lenient = planned(outside_window=True)
    assert requests.gate("eko", lenient, run_scope=scope, closed_windows=closed)["allowed"]
    assert chain(store, "request.approved")[-1]["outside_window"] is True
    assert requests.get(lenient)["approvals"][-1]["outside_window"] is True


def test_a_window_in_the_register_is_read_in_the_offices_time_zone_and_checked():

    def parsed(window):
        return one_server({"maintenance_window": window})

    good, problems = parsed(
        {"timezone": "Asia/Jakarta", "slots": [{"days": ["sat"], "start": "22:00", "end": "04:00"}]}
    )
    assert problems == []
    window = good.assets[0].maintenance_window
    assert str(window) == "sat 22:00-04:00 (Asia/Jakarta)"
    saturday_night = dt.datetime(2026, 12, 5, 16, 0, tzinfo=dt.UTC)  # 23:00 WIB
    assert window.contains(saturday_night) and window.contains(
        saturday_night + dt.timedelta(hours=4, minutes=59)
    )
    assert not window.contains(saturday_night + dt.timedelta(hours=5))  # Sunday 04:00 WIB
    assert not window.contains(saturday_night - dt.timedelta(hours=2))  # Saturday 21:00 WIB
    for bad, says in (
        (
            {"timezone": "WIB", "slots": [{"days": ["sat"], "start": "22:00", "end": "04:00"}]},
            "not a time zone",
        ),
        (
            {"timezone": "Asia/Jakarta", "slots": [{"days": ["sabtu"], "start": "22:00", "end": "04:00"}]},
            "days",
        ),
        (
            {"timezone": "Asia/Jakarta", "slots": [{"days": ["sat"], "start": "25:00", "end": "04:00"}]},
            "HH:MM",
        ),
        ({"timezone": "Asia/Jakarta", "slots": []}, "list of 'slots'"),
    ):
        _, found = parsed(bad)
        assert len(found) == 1 and found[0].field == "maintenance_window" and says in found[0].message, found


def test_restore_hooks_in_the_register_are_argument_lists_with_a_timeout():

    def parsed(hooks):
        return one_server(
            {
                "data": [
                    {"name": "simpeg", "engine": "postgresql", "database": "simpeg", "restore_hooks": hooks}
                ]
            }
        )

    stop = {"argv": ["/usr/bin/systemctl", "stop", "simpeg"], "timeout": 120}
    good, problems = parsed({"pre": [stop], "post": [{"argv": ["/usr/bin/systemctl", "start", "simpeg"]}]})
    assert problems == []
    shown = good.assets[0].data[0].as_dict()["restore_hooks"]
    assert shown == {
        "pre": [stop],
        "post": [{"argv": ["/usr/bin/systemctl", "start", "simpeg"], "timeout": 60}],
    }
    for bad, says in (
        ({"pre": [{"argv": "systemctl stop simpeg"}]}, "no shell string"),
        ({"pre": [{"argv": ["systemctl", "stop"]}]}, "absolute path"),
        ({"pre": [{"argv": ["/bin/true"], "timeout": 0}]}, "timeout is 1 to 3600"),
        ({"during": []}, "mapping of 'pre' and 'post'"),
        ({"pre": [{"argv": ["/bin/true"], "shell": True}]}, "not 'shell'"),
    ):
        _, found = parsed(bad)
        assert len(found) == 1 and found[0].field.endswith("restore_hooks") and says in found[0].message, (
            found
        )

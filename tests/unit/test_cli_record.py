"""The record through the pulih command: each refusal's exit code (3) and message, the forms
in both languages, the restore gate's entry point and audit verify on a tampered log."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import sqlalchemy as sa

from pulih.store import Store
from tests.conftest import PROJECT
from tests.integration import test_record as record_tests
from tests.integration.client import Service

SETTINGS = "approval_validity_hours: 24\n"
# The people of these tests: roles, SKPDs, token scopes.
PEOPLE = {
    "ani": (["requester"], ["bkpsdm"], ["request", "read"]),
    "fajar": (["requester", "approver"], ["bkpsdm"], ["request", "approve", "read"]),
    "citra": (["receiver", "approver"], [], ["approve", "read"]),
    "dewi": (["approver", "operator"], [], ["approve", "restore", "read"]),
    "eko": (["operator"], [], ["restore", "backup", "read", "request"]),  # request: to meet the role check
}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pulih serve --init runs as root")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One service for the module (requests accumulate; each test uses its own), on a copy of
    the example register that a test may edit."""
    register = tmp_path_factory.mktemp("register") / "example"
    shutil.copytree(PROJECT / "inventories" / "example", register)
    service = Service(register, SETTINGS, people=PEOPLE)
    try:
        service.init()
        yield {**service.environ(), "service": service, "register": register}
    finally:
        service.remove()


def pulih(env, actor, *args):
    environ = {k: v for k, v in env.items() if k not in ("service", "register")}
    return subprocess.run(
        [sys.executable, "-m", "pulih", *args],
        capture_output=True,
        text=True,
        env={**environ, "PULIH_TOKEN": env["service"].tokens[actor]},
        cwd=PROJECT,
        timeout=60,
        check=False,
    )


def filed(env, *extra):
    result = pulih(
        env,
        "ani",
        "request",
        "new",
        "--item",
        "DC-SRV-2023-001:simpeg",
        "--skpd",
        "bkpsdm",
        "--contact",
        "ani@bkpsdm.example.go.id",
        "--reason",
        "accidental_deletion",
        "--reason-text",
        "tabel pegawai terhapus",
        "--restore-point",
        "2026-11-20",
        "--json",
        *extra,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["id"]


def planned(env):
    rid = filed(env)
    for actor, args in (
        ("citra", ("receive", rid)),
        ("dewi", ("approve", rid)),
        ("eko", ("assess", rid, "--damage", "accidental_deletion", "--note", "tabel kosong")),
        ("eko", ("check-backups", rid, "--no-query", "--note", "checked by hand")),
        (
            "eko",
            (
                "plan",
                rid,
                "--backup",
                "DC-SRV-2023-001:simpeg=20261120T020000Z-1a2b",
                "--window",
                "malam ini",
                "--no-query",
                "--unverified",
                "no repository in the unit tests: planned by hand",
            ),
        ),
    ):
        result = pulih(env, actor, "request", *args)
        assert result.returncode == 0, result.stderr
    return rid


def refused(result, words):
    assert result.returncode == 3, result.stderr
    assert "refused:" in result.stderr and words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_self_approval_exit_3(env):
    rid = pulih(
        env,
        "fajar",
        "request",
        "new",
        "--item",
        "DC-SRV-2023-001:simpeg",
        "--skpd",
        "bkpsdm",
        "--contact",
        "y",
        "--reason",
        "error",
        "--json",
    ).stdout
    rid = json.loads(rid)["id"]
    pulih(env, "citra", "request", "receive", rid)
    refused(pulih(env, "fajar", "request", "approve", rid), "the approver is never the requester")


def test_wrong_order_exit_3(env):
    rid = filed(env)
    refused(pulih(env, "dewi", "request", "approve", rid), "'approved' is out of order (next: received)")


def test_rejected_request_exit_3_and_the_reason_is_shown(env):
    rid = filed(env)
    pulih(env, "citra", "request", "receive", rid)
    assert pulih(env, "citra", "request", "reject", rid, "--reason", "tidak ada cadangan").returncode == 0
    refused(pulih(env, "eko", "restore", "--request", rid, "--check"), "was rejected (tidak ada cadangan)")
    shown = json.loads(pulih(env, "ani", "request", "show", rid, "--json").stdout)
    assert shown["rejected_reason"] == "tidak ada cadangan"
    assert "rejected: tidak ada cadangan" in pulih(env, "ani", "request", "show", rid).stdout


def test_expired_approval_exit_3(env):
    rid = planned(env)
    expired = "2026-01-01T00:00:00Z"
    # The clock moved on: the approval's expiry rewritten in the request's row and in its audit
    # entry, the chain recomputed from there (the gate decides from the log, and an edit of the
    # row alone is refused as one). An edit only the test may make: this service has no anchor.
    store = Store(f"sqlite:///{Path(env['PULIH_STATE_DIR']) / 'pulih.db'}", upgrade=False)
    try:
        approval = next(
            e["seq"]
            for e in store.audit_entries()
            if (e["action"], e["request_id"]) == ("request.approved", rid)
        )

        def expire(rows):
            for row in rows:
                if row["seq"] == approval:
                    payload = json.loads(row["payload"])
                    payload["changes"]["approval_expires_at"] = expired
                    row["payload"] = json.dumps(payload, sort_keys=True, ensure_ascii=False)
            return rows

        record_tests.rechain(store, approval, expire)
        with store.transaction() as conn:
            conn.execute(
                sa.text("UPDATE pulih_requests SET approval_expires_at = :at WHERE id = :rid"),
                {"at": expired, "rid": rid},
            )
        assert store.verify_audit() == []
    finally:
        store.engine.dispose()
    refused(pulih(env, "eko", "restore", "--request", rid, "--check"), f"expired at {expired}")


def test_out_of_scope_exit_3(env):
    rid = planned(env)
    refused(
        pulih(env, "eko", "restore", "--request", rid, "--item", "DC-SRV-2023-002:simpus", "--check"),
        "DC-SRV-2023-002:simpus is outside the approved scope",
    )
    refused(
        pulih(env, "eko", "restore", "--request", rid, "--target", "alternate:pajak-stg01", "--check"),
        "differs from the approved target",
    )


def test_unknown_id_exit_3(env):
    refused(pulih(env, "eko", "restore", "--request", "PPD-2026-0404", "--check"), "there is no request")
    refused(pulih(env, "citra", "request", "receive", "PPD-2026-0404"), "there is no request")


def test_unknown_item_is_bad_input(env):
    result = pulih(
        env,
        "ani",
        "request",
        "new",
        "--item",
        "DC-SRV-2023-001:nothing",
        "--skpd",
        "bkpsdm",
        "--contact",
        "y",
        "--reason",
        "error",
    )
    assert result.returncode == 2
    assert "DC-SRV-2023-001:nothing is not a registered data item" in result.stderr


def test_the_gate_allows_a_planned_request_and_the_run_is_reported(env):
    rid = planned(env)
    allowed = pulih(env, "eko", "restore", "--request", rid, "--check", "--json")
    assert allowed.returncode == 0, allowed.stderr
    doc = json.loads(allowed.stdout)
    assert doc["gate"]["allowed"] is True and doc["gate"]["actor"] == "eko"
    assert doc["status"] == "allowed" and doc["check_mode"] is True and doc["kind"] == "restore_check"
    schema = json.loads((PROJECT / "schemas" / "run_report.schema.json").read_text())
    path = Path(env["PULIH_STATE_DIR"]) / "runs" / doc["run_id"] / "report.json"
    jsonschema.validate(json.loads(path.read_text()), schema)
    assert json.loads(path.read_text())["operator"] == "eko", "the service's report, its operator the caller"


@pytest.mark.parametrize(
    ("lang", "words"),
    [
        (
            "en",
            [
                "Data Recovery Request Form (Form PPD)",
                "accidental deletion",
                "tabel pegawai terhapus",
                "Standard time (min)",
            ],
        ),
        (
            "id",
            [
                "Formulir Permintaan Pemulihan Data (Form PPD)",
                "terhapus tidak sengaja",
                "Waktu baku (menit)",
                "disetujui",
            ],
        ),
    ],
)
def test_form_ppd_in_both_languages(env, lang, words):
    rid = planned(env)
    html = pulih(env, "ani", "request", "form", rid, "--form", "ppd", "--lang", lang).stdout
    for word in [*words, rid, "ani", "dewi"]:
        assert word in html, word


@pytest.mark.parametrize(
    ("lang", "words"),
    [
        (
            "en",
            ["Data Recovery Work Form (Form PD)", "Does the data still exist?", "tabel kosong", "malam ini"],
        ),
        ("id", ["Formulir Pemulihan Data (Form PD)", "Apakah data masih ada?", "tabel kosong", "Rencana"]),
    ],
)
def test_form_pd_in_both_languages(env, lang, words):
    rid = planned(env)
    html = pulih(env, "eko", "request", "form", rid, "--form", "pd", "--lang", lang).stdout
    for word in [*words, "20261120T020000Z-1a2b"]:
        assert word in html, word


def test_a_role_the_user_lacks_exit_3(env):
    refused(
        pulih(
            env,
            "eko",
            "request",
            "new",
            "--item",
            "DC-SRV-2023-001:simpeg",
            "--skpd",
            "x",
            "--contact",
            "y",
            "--reason",
            "error",
        ),
        "needs the role 'requester'",
    )


def test_every_run_goes_on_the_record_and_the_audit_log(env):
    rid = planned(env)
    checked = json.loads(pulih(env, "eko", "restore", "--request", rid, "--check", "--json").stdout)
    db = Path(env["PULIH_STATE_DIR"]) / "pulih.db"
    with sqlite3.connect(db) as conn:
        kinds = [r[0] for r in conn.execute("SELECT kind FROM pulih_runs WHERE request_id = ?", (rid,))]
        actions = [
            r[0]
            for r in conn.execute("SELECT action FROM pulih_audit WHERE request_id = ? ORDER BY seq", (rid,))
        ]
    assert kinds == ["restore_check"]
    assert actions[-2:] == ["restore.allowed", "run.restore_check"]
    runs = json.loads(pulih(env, "eko", "runs", "list", "--json").stdout)
    assert checked["run_id"] in [r["run_id"] for r in runs]
    html = pulih(env, "eko", "report", "show", checked["run_id"], "--format", "html", "--lang", "id").stdout
    assert rid in html and "eko" in html
    assert pulih(env, "eko", "audit", "verify").returncode == 0


def test_gated_commands_refuse_a_register_named_by_the_caller(env):
    for args in (["request", "list", "-i", "x"], ["restore", "--request", "PPD-2026-0001", "-i", "x"]):
        result = pulih(env, "eko", *args)
        if args[0] == "request":  # list takes no -i at all
            assert result.returncode == 2 and "No such option" in result.stderr, result.stderr
        else:
            assert result.returncode == 2 and "never on one the caller names" in result.stderr, result.stderr


def test_an_approval_holds_a_restore_to_the_targets_it_resolved(env):
    """The register is edited after the approval so that the item points at another database:
    the gate refuses, naming what the approval covered; nothing follows the edit silently."""
    rid = planned(env)
    shown = json.loads(pulih(env, "ani", "request", "show", rid, "--json").stdout)
    assert shown["approvals"][-1]["targets"] == ["postgresql://10.20.1.11:5432/simpeg"]
    path = env["register"] / "datacenter.asset_register.yml"
    original = path.read_text()
    path.write_text(original.replace("        database: simpeg\n", "        database: simpeg_lain\n", 1))
    try:
        refused(
            pulih(env, "eko", "restore", "--request", rid, "--check"),
            "the restore would change postgresql://10.20.1.11:5432/simpeg_lain, which the approval",
        )
    finally:
        path.write_text(original)
    assert pulih(env, "eko", "restore", "--request", rid, "--check").returncode == 0


def test_audit_verify_catches_an_edited_row(env):
    planned(env)
    assert pulih(env, "eko", "audit", "verify").returncode == 0
    db = Path(env["PULIH_STATE_DIR"]) / "pulih.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE pulih_audit SET actor = 'dewi' WHERE seq = 2")
    result = pulih(env, "eko", "audit", "verify", "--json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["status"] == "tampered"
    assert doc["problems"][0]["seq"] == 2
    assert "audit entry 2: its content was changed" in result.stderr

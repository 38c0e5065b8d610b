"""Restores end to end, through the pulih command, under approved requests, on a lab of real
servers reached over SSH (tests/integration/restore_lab.py): in place for every engine with the
pre-restore backup and undo, alternate targets, and backups refused before anything is touched
(corrupt, without room, changed since published, unrecorded, foreign). The other half, with a
lab of its own, is test_restore_faults.py."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import lab as lab_mod
from tests.integration.client import pulih, report_of
from tests.integration.plain import ansible_playbook
from tests.integration.restore_lab import (
    audit_actions,
    decoy_register,
    excluded_part,
    files_root,
    host,
    leftovers,
    listed_backup,
    manifest,
    my_print,
    no_task_on_the_repository_host,
    pg_print,
    planned_request,
    protected,
    record,
    repository,
    restore,
    restore_lab,
    tree_print,
)
from tests.integration.trees import EXCLUDE, tree_state

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with restore_lab(tmp_path_factory, "restore") as built:
        yield built


# --------------------------------------------------------------------------- in place, undo


def test_in_place_restore_of_every_engine_saves_the_damage_first(env):
    original = {
        "pg": pg_print(env, "lab1", "app_lab1"),
        "my": my_print(env, "lab1", "app_lab1"),
        "files": tree_print(files_root(env, "lab1")),
    }
    state, lab1 = env["state"], host(env, "lab1")
    state.psql(
        lab1, "DELETE FROM pegawai WHERE id > 60; UPDATE pegawai SET nama = 'salah' WHERE id = 1", "app_lab1"
    )
    state.mariadb(lab1, "DELETE FROM app_lab1.kunjungan WHERE id % 3 = 0")
    tree = files_root(env, "lab1")
    victim = next(p for p in sorted(tree.rglob("*")) if p.is_file())
    victim.unlink()
    (tree / "sampah.txt").write_text("tidak seharusnya ada\n")
    (tree / "tautan" / "nama-kedua.txt").unlink()  # a hard link's second name lost
    (tree / "jarang.img").write_bytes(b"rusak")  # the sparse file overwritten
    # Written after the backup in excluded places: not pulih's, so a restore must keep them.
    (tree / "cache" / "sesi-2").write_text("a session since the backup\n")
    (tree / "baru.tmp").write_text("excluded too\n")
    damaged = {
        "pg": pg_print(env, "lab1", "app_lab1"),
        "my": my_print(env, "lab1", "app_lab1"),
        "files": tree_print(tree),
    }
    assert all(damaged[k] != original[k] for k in original)
    damaged_inode = (tree / "cache" / "sesi-2").stat().st_ino

    def tree_state_without(state):
        return {path: entry for path, entry in state.items() if path not in excluded_part(state)}

    items = ["LAB-001:app-pg", "LAB-001:app-mariadb", "LAB-001:dokumen"]
    rid = planned_request(env, items, backups=env["backups"])
    doc = restore(env, rid, check=0)

    assert doc["status"] == "succeeded" and doc["request_id"] == rid and doc["gate"]["allowed"]
    assert pg_print(env, "lab1", "app_lab1") == original["pg"]
    assert my_print(env, "lab1", "app_lab1") == original["my"]
    after = tree_print(tree)
    # Every excluded path of the live tree is where it was, the same file; the rest is the backup's.
    assert excluded_part(after) == excluded_part(damaged["files"])
    assert tree_state(tree, skip=EXCLUDE) == tree_state_without(original["files"])
    session = tree / "cache" / "sesi-2"
    assert session.stat().st_ino == damaged_inode, "the excluded file was copied, not kept"
    assert after["jarang.img"]["sparse"] and after["jarang.img"]["size"] == 64 << 20
    assert after["tautan/asli.txt"]["links"] == [
        "nama-ketiga.txt",
        "tautan/asli.txt",
        "tautan/nama-kedua.txt",
    ]
    assert after["antrian.fifo"]["mode"].startswith("p") and after["ke-luar"]["target"] == "/etc/hostname"
    assert after["rahasia.txt"]["xattrs"] == original["files"]["rahasia.txt"]["xattrs"]  # the ACL
    assert leftovers(env, "lab1") == [], "a stage or a replaced copy was left behind"
    assert len(doc["attempts"]) == 1 and doc["attempts"][0]["status"] == "succeeded"
    pre = {}
    for item in doc["items"]:
        assert item["ok"] and item["restore"]["replaced"] is True
        assert item["backup_id"] == env["backups"][f"LAB-001:{item['item']}"]
        assert any("after the swap" in check for check in item["verification"]["checks"])
        pre_id = item["restore"]["pre_restore_backup_id"]
        saved = manifest(env, "LAB-001", item["item"], pre_id)
        assert saved["kind"] == "pre_restore" and saved["request_id"] == rid
        pre[item["item"]] = pre_id
    # The pre-restore backup holds the whole tree it replaced, excluded files too.
    saved = manifest(env, "LAB-001", "dokumen", pre["dokumen"])
    assert saved["files"]["exclude"] == [] and saved["files"]["skipped"] == [
        {"path": "aplikasi.sock", "type": "socket"}
    ]
    listed = (repository(env) / "LAB-001" / "dokumen" / pre["dokumen"] / "files.jsonl").read_text()
    for path in ("cache/sesi-1", "cache/sesi-2", "sementara.tmp", "baru.tmp", "sampah.txt"):
        assert f'"path": "{path}"' in listed
    backup = manifest(env, "LAB-001", "dokumen", env["backups"]["LAB-001:dokumen"])
    assert backup["files"]["exclude"] == EXCLUDE and backup["files"]["hardlinks"] == 2
    env["damaged"], env["original"], env["pre"] = damaged, original, pre

    steps = record(env, rid)["steps"]
    assert steps[-1]["step"] == "executed" and steps[-1]["note"].startswith("succeeded: attempt 1 of 3")
    audit = json.loads(pulih(env, "audit", "verify", "--json", check=0).stdout)
    assert audit["status"] == "intact"
    html = (Path(env["environ"]["PULIH_STATE_DIR"]) / "runs" / doc["run_id"] / "report.html").read_text()
    assert pre["app-pg"] in html and "Pre-restore backup" in html

    pulih(env, "request", "confirm", rid, "--note", "data kembali", actor="ani", check=0)
    assert {e["request_id"] for e in protected(env)} == {rid}, "the planned backups are protected"
    pulih(env, "request", "close", rid, actor="sri", check=0)
    assert record(env, rid)["status"] == "closed"
    assert protected(env) == [], "closing the request lifts the protection"
    refused = pulih(env, "restore", "--request", rid, check=3)
    assert "is 'closed'" in refused.stderr


def test_the_pre_restore_backup_undoes_the_restore(env):
    items = ["LAB-001:app-pg", "LAB-001:app-mariadb", "LAB-001:dokumen"]
    pre = {f"LAB-001:{item}": backup_id for item, backup_id in env["pre"].items()}
    # A pre-restore backup is checksummed, not test-restored: planning it says so on the record.
    rid = planned_request(env, items, backups=pre, unverified="the damaged state, saved by the restore")
    doc = restore(env, rid, check=0)
    assert [i["backup_id"] for i in doc["items"]] == [pre[k] for k in items]
    assert pg_print(env, "lab1", "app_lab1") == env["damaged"]["pg"]
    assert my_print(env, "lab1", "app_lab1") == env["damaged"]["my"]
    assert tree_print(files_root(env, "lab1")) == env["damaged"]["files"]


# --------------------------------------------------------------------------- alternate targets


def test_alternate_target_on_another_host_and_name_leaves_the_source_alone(env):
    rid = planned_request(
        env, ["LAB-001:app-pg"], backups=env["backups"], target="alternate:lab2:salinan pegawai"
    )
    # A register, a config and a store named in the caller's environment are not the service's:
    # the restore goes to the approved, resolved target all the same.
    decoy = decoy_register(env)
    decoyed = {
        **env,
        "environ": {
            **env["environ"],
            "PULIH_INVENTORY": str(decoy),
            "PULIH_CONFIG": str(env["base"] / "decoy-config.yml"),
            "PULIH_STORE": f"sqlite:///{env['base'] / 'decoy.db'}",
        },
    }
    (env["base"] / "decoy-config.yml").write_text("restore_attempts: 1\nactors: {budi: [approver]}\n")
    doc = restore(decoyed, rid, check=0)
    on_lab1 = env["state"].psql(
        host(env, "lab1"), "SELECT count(*) FROM pg_database WHERE datname = 'salinan pegawai'", "postgres"
    )
    assert on_lab1.strip() == "0", "the restore followed the register in the caller's environment"
    assert not (env["base"] / "decoy.db").exists()
    item = doc["items"][0]
    assert item["restore"]["target_host"] == "lab2" and item["restore"]["target"] == "salinan pegawai"
    assert item["restore"]["replaced"] is False and item["restore"]["pre_restore_backup_id"] is None
    assert pg_print(env, "lab2", "salinan pegawai") == env["original"]["pg"]
    assert pg_print(env, "lab1", "app_lab1") == env["damaged"]["pg"], "the source was touched"

    again = restore(env, rid, check=4)
    assert "already exists" in again["items"][0]["error"]
    assert len(again["attempts"]) == 1, "a refusal is not retried"
    assert pg_print(env, "lab2", "salinan pegawai") == env["original"]["pg"]


def test_alternate_path_for_a_file_tree(env):
    target = Path(env["state"].root) / "hosts" / "lab2" / "srv" / "pemeriksaan dokumen"
    rid = planned_request(env, ["LAB-001:dokumen"], backups=env["backups"], target=f"alternate:lab2:{target}")
    restore(env, rid, check=0)
    # Elsewhere, the tree is the backup's: no excluded file, no socket (neither is data).
    expected = {
        p: e for p, e in env["original"]["files"].items() if p not in excluded_part(env["original"]["files"])
    }
    del expected["aplikasi.sock"]
    assert tree_print(target) == expected
    assert tree_print(files_root(env, "lab1")) == env["damaged"]["files"]


# --------------------------------------------------------------------------- refused backups


def test_a_corrupt_backup_is_refused_before_anything_is_touched(env):
    fresh = report_of(
        pulih(env, "backup", "--limit", "lab1", "--item", "app-mariadb", "--no-verify", "--json", check=0)
    )
    backup_id = fresh["items"][0]["backup_id"]
    artifact = repository(env) / "LAB-001" / "app-mariadb" / backup_id / "database.sql.zst"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    before = my_print(env, "lab1", "app_lab1")
    rid = planned_request(
        env,
        ["LAB-001:app-mariadb"],
        backups={"LAB-001:app-mariadb": backup_id},
        unverified="corrupted on purpose: the restore must refuse it",
    )
    assert "planned although not verified: corrupted on purpose" in record(env, rid)["steps"][-1]["note"]
    doc = restore(env, rid, check=4)
    assert doc["status"] == "refused"
    assert "checksum mismatch: database.sql.zst" in doc["items"][0]["error"]
    assert "nothing was touched" in doc["items"][0]["error"]
    assert len(doc["attempts"]) == 1
    assert my_print(env, "lab1", "app_lab1") == before
    assert leftovers(env, "lab1") == []
    assert record(env, rid)["steps"][-1]["note"].startswith("failed: attempt 1 of 3")


def test_a_target_without_room_for_the_stage_is_refused_before_anything_is_touched(env):
    """The backup records the database's size; the target server must have room for it
    (plus the margin) where the stage goes, or the restore is refused, with what to free,
    before any stage exists."""
    fresh = report_of(
        pulih(env, "backup", "--limit", "lab1", "--item", "app-mariadb", "--no-verify", "--json", check=0)
    )
    backup_id = fresh["items"][0]["backup_id"]
    assert manifest(env, "LAB-001", "app-mariadb", backup_id)["source_bytes"] > 0
    rid = planned_request(
        env,
        ["LAB-001:app-mariadb"],
        backups={"LAB-001:app-mariadb": backup_id},
        unverified="the room check refuses it before verification matters",
    )
    before = my_print(env, "lab1", "app_lab1")
    settings = env["inventory"] / "group_vars" / "all" / "room.yml"
    settings.write_text("pulih_common_space_margin_percent: 1000000000000\n")
    try:
        doc = restore(env, rid, check=4)
    finally:
        settings.unlink()
    assert doc["status"] == "refused"
    error = doc["items"][0]["error"]
    assert "not enough room for the restore's stage: " in error and "nothing was touched" in error
    assert len(doc["attempts"]) == 1
    assert my_print(env, "lab1", "app_lab1") == before
    assert leftovers(env, "lab1") == []


def test_a_backup_changed_in_the_repository_since_it_was_published_is_refused_by_the_record(env):
    """A writer on the repository host rewrites a published backup so that every checksum
    still matches (another backup's dump put in its place, the manifest's hashes recomputed),
    or edits one field of its manifest, or a backup arrives that the service never saw
    published (plain Ansible): each is refused against the service's record, exit 4, nothing
    touched. Without the record the first would restore another backup's data."""

    def fresh():
        made = pulih(
            env, "backup", "--limit", "lab1", "--item", "app-mariadb", "--no-verify", "--json", check=0
        )
        return report_of(made)["items"][0]

    forged, other = fresh(), fresh()
    assert (
        forged["manifest_sha256"]
        and forged["artifacts"][0]["sha256"]
        == manifest(env, "LAB-001", "app-mariadb", forged["backup_id"])["artifacts"][0]["sha256"]
    ), "the report carries the hashes the service records"
    folder = repository(env) / "LAB-001" / "app-mariadb"
    doc, theirs = (
        manifest(env, "LAB-001", "app-mariadb", b) for b in (forged["backup_id"], other["backup_id"])
    )
    original = (
        (folder / forged["backup_id"] / "manifest.json").read_bytes(),
        (folder / forged["backup_id"] / "database.sql.zst").read_bytes(),
    )
    before = my_print(env, "lab1", "app_lab1")

    def refused(backup_id, why, *, query=True):
        """Refused by verify and by restore, exit 4, nothing touched."""
        checked = report_of(
            pulih(
                env,
                "verify",
                "--limit",
                "lab1",
                "--item",
                "app-mariadb",
                "--backup",
                backup_id,
                "--json",
                check=4,
            )
        )
        verification = checked["items"][0]["verification"]
        assert verification["status"] == "refused" and why in verification["error"], verification
        rid = planned_request(
            env,
            ["LAB-001:app-mariadb"],
            backups={"LAB-001:app-mariadb": backup_id},
            unverified="tampered with on purpose: the restore must refuse it",
            query=query,
        )
        done = restore(env, rid, check=4)
        error = done["items"][0]["error"]
        assert done["status"] == "refused" and why in error and "nothing was touched" in error, error
        assert my_print(env, "lab1", "app_lab1") == before
        assert not leftovers(env, "lab1")

    try:
        # Another backup's dump in its place, and every checksum of the manifest recomputed.
        (folder / forged["backup_id"] / "database.sql.zst").write_bytes(
            (folder / other["backup_id"] / "database.sql.zst").read_bytes()
        )
        doc["artifacts"] = theirs["artifacts"]
        doc["row_counts"] = theirs["row_counts"]
        (folder / forged["backup_id"] / "manifest.json").write_text(
            json.dumps(doc, indent=2, sort_keys=True) + "\n"
        )
        refused(forged["backup_id"], "is not the one recorded when it was published")
        # One field of the manifest, and nothing else.
        (folder / forged["backup_id"] / "database.sql.zst").write_bytes(original[1])
        edited = json.loads(original[0])
        edited["started_at"] = "2026-01-01T00:00:00Z"
        (folder / forged["backup_id"] / "manifest.json").write_text(
            json.dumps(edited, indent=2, sort_keys=True) + "\n"
        )
        refused(forged["backup_id"], "is not the one recorded when it was published")
    finally:
        (folder / forged["backup_id"] / "manifest.json").write_bytes(original[0])
        (folder / forged["backup_id"] / "database.sql.zst").write_bytes(original[1])
    # A backup the service never saw published: plain Ansible's.
    plain = ansible_playbook(
        env["inventory"], "backup.yml", "--limit", "lab1", "-e", '{"pulih_backup_items": ["app-mariadb"]}'
    )
    assert plain.returncode == 0, plain.stdout[-3000:]
    newest = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))[-1]
    assert newest not in (forged["backup_id"], other["backup_id"])
    unrecorded = planned_request(env, ["LAB-001:app-mariadb"], backups={}, plan=False)
    plan = pulih(
        env, "request", "plan", unrecorded, f"--backup=LAB-001:app-mariadb={newest}", "--json", check=4
    )
    assert "is not on the service's record" in plan.stdout and f"pulih backups adopt {newest}" in plan.stdout
    refused(newest, "is not on the service's record", query=False)
    # An admin adopts it (an operator may not): verified once, then it is on the record.
    pulih(env, "backups", "adopt", newest, "--reason", "made by hand before the service", check=3)
    adopted = report_of(
        pulih(
            env,
            "backups",
            "adopt",
            newest,
            "--reason",
            "made by hand before the service",
            "--json",
            actor="root",
            check=0,
        )
    )
    assert adopted["kind"] == "adopt" and adopted["items"][0]["verification"]["status"] == "verified"
    again = pulih(env, "backups", "adopt", newest, "--reason", "twice", "--json", actor="root", check=2)
    assert "on the record already" in again.stdout
    listed = {
        b["backup_id"]: b
        for b in json.loads(pulih(env, "backups", "list", "--asset", "LAB-001", "--json", check=0).stdout)[
            "backups"
        ]
    }
    assert listed[newest]["recorded"] and listed[newest]["verified"]
    actions = audit_actions(env)
    assert {"backup.adoption_asked", "backup.adopted", "backup.verified"} <= set(actions)
    pulih(env, "request", "plan", unrecorded, f"--backup=LAB-001:app-mariadb={newest}", check=0)
    # A line forged into the repository's verifications.jsonl counts for nothing: the record
    # says the other backup was never verified, and a plan without --unverified is refused.
    forged_line = {"backup_id": other["backup_id"], "item": "app-mariadb", "ok": True, "status": "verified"}
    line_file = folder / other["backup_id"] / "verifications.jsonl"
    with line_file.open("a") as lines:
        lines.write(json.dumps(forged_line) + "\n")
    subprocess.run(["chown", f"{lab_mod.RECEIVER_ACCOUNT}:", str(line_file)], check=True)
    entry = listed_backup(env, "LAB-001", other["backup_id"])
    assert entry["repository_verified"] and not entry["verified"] and entry["recorded"], entry
    rid = planned_request(env, ["LAB-001:app-mariadb"], backups={}, plan=False)
    plan = pulih(
        env, "request", "plan", rid, f"--backup=LAB-001:app-mariadb={other['backup_id']}", "--json", check=4
    )
    assert "is not verified on the service's record" in plan.stdout
    found = record(env, rid)["backups_found"]
    assert next(b for b in found if b["backup_id"] == other["backup_id"])["verified"] is False


def test_a_foreign_backup_is_refused_before_anything_is_touched(env):
    """A backup of lab2's database, put among lab1's: its manifest gives it away."""
    source = repository(env) / "LAB-002" / "app-pg" / env["backups"]["LAB-002:app-pg"]
    planted = "20260101T000000Z-f00d"
    shutil.copytree(source, repository(env) / "LAB-001" / "app-pg" / planted)
    # Planted by the receiver's account, whose repository it is (root's copy is no backup it can read).
    subprocess.run(
        ["chown", "-R", f"{lab_mod.RECEIVER_ACCOUNT}:", str(repository(env) / "LAB-001")], check=True
    )
    before = pg_print(env, "lab1", "app_lab1")
    # Not on the record: a plan, a verification and (planned without asking) a restore refuse it.
    rid = planned_request(env, ["LAB-001:app-pg"], backups={}, plan=False)
    plan = pulih(env, "request", "plan", rid, f"--backup=LAB-001:app-pg={planted}", "--json", check=4)
    assert "is not on the service's record" in plan.stdout
    checked = report_of(
        pulih(env, "verify", "--limit", "lab1", "--item", "app-pg", "--backup", planted, "--json", check=4)
    )
    assert checked["items"][0]["verification"]["status"] == "refused"
    pulih(
        env,
        "request",
        "plan",
        rid,
        f"--backup=LAB-001:app-pg={planted}",
        "--no-query",
        "--unverified",
        "planted",
        check=0,
    )
    doc = restore(env, rid, check=4)
    assert "is not a backup of LAB-001:app-pg" in doc["items"][0]["error"]
    assert pg_print(env, "lab1", "app_lab1") == before and not leftovers(env, "lab1")
    shutil.rmtree(repository(env) / "LAB-001" / "app-pg" / planted)


def test_no_task_of_a_restore_runs_on_the_repository_host_and_secrets_go_only_to_the_servers(env):
    """This module's restores (in place with undo, alternate targets, the refused ones, and the
    requests closed, which lift their protection)."""
    no_task_on_the_repository_host(
        env, {"list", "checksums", "grant", "revoke-grant", "protect", "unprotect"}
    )


def test_no_row_and_no_file_content_of_the_data_is_in_what_pulih_writes_beside_the_backups(env):
    """Personal data stays in the data and its backups: this module's reports, ansible-runner
    artifacts, record and command outputs (restores in place, elsewhere and refused) hold
    counts, sizes and hashes, never a row of the databases nor a line of the documents."""
    state, lab1 = env["state"], host(env, "lab1")
    rows = state.psql(lab1, "SELECT nip || ' ' || nama FROM pegawai ORDER BY id LIMIT 3", "app_lab1")
    visits = state.mariadb(lab1, "SELECT CONCAT(pasien, ' ', tanggal) FROM app_lab1.kunjungan LIMIT 3")
    documents = [
        line
        for path in sorted(files_root(env, "lab1").rglob("*"))
        if path.is_file() and not path.is_symlink()
        for line in path.read_text(errors="replace").splitlines()[:1]
        if len(line) >= 12
    ]
    markers = [
        m.strip() for m in [*rows.splitlines(), *visits.splitlines(), *documents] if len(m.strip()) >= 12
    ]
    assert len(markers) >= 6, markers  # rows of both engines and lines of documents to look for
    written = Path(env["environ"]["PULIH_STATE_DIR"])
    files = [p for p in written.rglob("*") if p.is_file()]
    assert any(p.name == "report.json" for p in files) and any("job_events" in str(p) for p in files)
    found = {
        (str(p.relative_to(written)), marker)
        for p in files
        for marker in markers
        if marker.encode() in p.read_bytes()
    }
    found |= {("command output", m) for text in env["outputs"] for m in markers if m in text}
    assert found == set()

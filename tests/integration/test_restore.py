"""Restores end to end, through the pulih command, under approved requests, on a lab of real
servers reached over SSH: in place for every engine with the pre-restore backup and undo,
alternate targets, retries, and the faults the issue names (corrupt and foreign backups,
a server down, a run killed halfway, tricky names). Destructive tests come last."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import jsonschema
import pytest
import yaml

from pulih import lab as lab_mod
from tests.conftest import PROJECT
from tests.integration.artifacts import tasks_of
from tests.integration.client import Service, descendants, pulih, report_of, skpd_of
from tests.integration.plain import ansible_playbook
from tests.integration.trees import EXCLUDE, excluded, make_rich_tree, tree_state
from tests.integration.tricky import (
    PWNED,
    TRICKY_DB,
    TRICKY_TABLE,
    TRICKY_VIEW,
    make_tricky_data,
    my_quote,
    pg_quote,
)

pytestmark = pytest.mark.lab

SETTINGS = "restore_attempts: 3\nrestore_retry_seconds: 1\n"  # the service's config
PG_PRINT = "SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("restore")
    inventory = base / "inventory"
    lab = lab_mod.Lab(2, inventory_dir=inventory)
    state = lab.up()
    service = Service(inventory, SETTINGS)
    try:
        service.init()
        outputs: list[str] = []
        env = {
            "state": state,
            "inventory": inventory,
            "environ": service.environ(),
            "service": service,
            "outputs": outputs,
            "base": base,
        }
        # lab1's tree holds every kind of entry (hard links, sparse, fifo, symlinks, ACL, xattrs, a
        # socket) and files its exclude patterns leave out.
        make_rich_tree(files_root(env, "lab1"))
        set_item(env, "LAB-001", "dokumen", exclude=EXCLUDE)
        backed_up = report_of(pulih(env, "backup", "--json", check=0))
        assert all(i["ok"] and i["verification"]["ok"] for i in backed_up["items"]), backed_up["items"]
        env["backups"] = {f"{i['asset_id']}:{i['item']}": i["backup_id"] for i in backed_up["items"]}
        yield env
    finally:  # also when the setup above failed: no lab or service left running
        service.remove()
        lab.down()


def planned_request(env, items, *, backups, target=None, plan=True, unverified=None):
    """A request taken through the SOP up to its plan: filed by ani, received and approved by
    sri, assessed, backups checked and planned by budi (`plan=False`: all but the plan;
    `unverified`: the reason to plan backups that were not verified)."""
    skpd = skpd_of(env, items[0])
    args = ["request", "new", "--skpd", skpd, "--contact", f"ani@{skpd}.go.id", "--reason", "error"]
    for item in items:
        args += ["--item", item]
    if target:
        args += ["--target", target]
    rid = json.loads(pulih(env, *args, "--json", actor="ani", check=0).stdout)["id"]
    pulih(env, "request", "receive", rid, actor="sri", check=0)
    pulih(env, "request", "approve", rid, actor="sri", check=0)
    pulih(env, "request", "assess", rid, "--damage", "error", check=0)
    pulih(env, "request", "check-backups", rid, check=0)
    if plan:
        named = [f"--backup={key}={backups[key]}" for key in items]
        why = ["--unverified", unverified] if unverified else []
        pulih(env, "request", "plan", rid, *named, *why, check=0)
    return rid


def restore(env, rid, *args, check):
    return report_of(pulih(env, "restore", "--request", rid, "--json", *args, check=check))


def host(env, name):
    return env["state"].host(name)


def pg_print(env, name, database, table="pegawai"):
    return env["state"].psql(host(env, name), PG_PRINT.format(table), database).strip()


def my_print(env, name, database, table="kunjungan"):
    bq = lambda n: "`" + n.replace("`", "``") + "`"  # noqa: E731
    return (
        env["state"]
        .mariadb(host(env, name), f"CHECKSUM TABLE {bq(database)}.{bq(table)} EXTENDED")
        .split()[-1]
    )


def tree_print(root):
    return tree_state(Path(root))


def files_root(env, name):
    return Path(env["state"].root) / "hosts" / name / "srv" / "dokumen"


def leftovers(env, name):
    """Stages and replaced copies a restore left behind, on every engine of a server."""
    state = env["state"]
    found = state.psql(host(env, name), "SELECT datname FROM pg_database WHERE datname LIKE 'pulih%'").split()
    found += state.mariadb(
        host(env, name), "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'pulih%'"
    ).split()
    srv = Path(state.root) / "hosts" / name / "srv"
    found += [p.name for p in srv.rglob(".pulih-*")]
    return found


def repository(env):
    return Path(env["state"].host("labrepo").repository_path)


def manifest(env, asset, item, backup_id):
    return json.loads((repository(env) / asset / item / backup_id / "manifest.json").read_text())


def add_items(env, asset_id, items):
    path = env["inventory"] / lab_mod.REGISTER_FILE
    doc = yaml.safe_load(path.read_text())
    entry = next(a for a in doc["assets"] if a["asset_id"] == asset_id)
    entry["data"] += items
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


def set_item(env, asset_id, name, **fields):
    path = env["inventory"] / lab_mod.REGISTER_FILE
    doc = yaml.safe_load(path.read_text())
    entry = next(a for a in doc["assets"] if a["asset_id"] == asset_id)
    next(i for i in entry["data"] if i["name"] == name).update(fields)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


def excluded_part(state):
    return {path: entry for path, entry in state.items() if excluded(path, EXCLUDE)}


def record(env, rid):
    return json.loads(pulih(env, "request", "show", rid, "--json", check=0).stdout)


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


def decoy_register(env) -> Path:
    """The lab's register with lab2 moved onto lab1's address and ports: a restore that read it
    would put lab2's copy on lab1."""
    decoy = env["base"] / "decoy"  # the register alone: its group_vars hold the lab's password
    decoy.mkdir(exist_ok=True)
    path = decoy / lab_mod.REGISTER_FILE
    doc = yaml.safe_load((env["inventory"] / lab_mod.REGISTER_FILE).read_text())
    lab1, lab2 = (next(a for a in doc["assets"] if a["hostname"] == n) for n in ("lab1", "lab2"))
    lab2.update(address=lab1["address"], ssh_port=lab1["ssh_port"])
    for theirs, mine in zip(lab2["data"], lab1["data"], strict=False):
        if theirs.get("engine") != "files":
            theirs.update(host=mine["host"], port=mine["port"])
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return decoy


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

    def refused(backup_id, why):
        rid = planned_request(
            env,
            ["LAB-001:app-mariadb"],
            backups={"LAB-001:app-mariadb": backup_id},
            unverified="tampered with on purpose: the restore must refuse it",
        )
        done = restore(env, rid, check=4)
        error = done["items"][0]["error"]
        assert done["status"] == "refused" and why in error and "nothing was touched" in error, error
        assert my_print(env, "lab1", "app_lab1") == before

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
    refused(newest, "is not on the service's record")


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
    rid = planned_request(env, ["LAB-001:app-pg"], backups={"LAB-001:app-pg": planted})
    doc = restore(env, rid, check=4)
    assert "is not a backup of LAB-001:app-pg" in doc["items"][0]["error"]
    assert pg_print(env, "lab1", "app_lab1") == before
    shutil.rmtree(repository(env) / "LAB-001" / "app-pg" / planted)


# --------------------------------------------------------------------------- tricky names


def test_tricky_names_restore_in_place(env):
    state, lab1 = env["state"], host(env, "lab1")
    tree, register_items = make_tricky_data(state, lab1)
    add_items(env, "LAB-001", register_items)
    quoted_table = pg_quote(TRICKY_TABLE)
    bq = my_quote
    items = ["LAB-001:tricky-pg", "LAB-001:tricky-mariadb", "LAB-001:tricky-files"]
    made = report_of(
        pulih(
            env, "backup", "--limit", "lab1", *[f"--item={i.split(':')[1]}" for i in items], "--json", check=0
        )
    )
    backups = {f"LAB-001:{i['item']}": i["backup_id"] for i in made["items"]}
    original = (
        pg_print(env, "lab1", TRICKY_DB, quoted_table),
        my_print(env, "lab1", TRICKY_DB, TRICKY_TABLE),
        tree_print(tree),
    )
    state.psql(lab1, f"DELETE FROM {quoted_table} WHERE id > 10", TRICKY_DB)
    state.mariadb(lab1, f"DELETE FROM {bq(TRICKY_DB)}.{bq(TRICKY_TABLE)} WHERE id > 5")
    (tree / "sub folder ø" / "berkas 'a' \"b\" $x.txt").write_text("rusak\n")

    rid = planned_request(env, items, backups=backups)
    restore(env, rid, check=0)
    restored = (
        pg_print(env, "lab1", TRICKY_DB, quoted_table),
        my_print(env, "lab1", TRICKY_DB, TRICKY_TABLE),
        tree_print(tree),
    )
    assert restored == original
    views = state.mariadb(lab1, f"SELECT COUNT(*) FROM {bq(TRICKY_DB)}.{bq(TRICKY_VIEW)}").split()
    assert views[-1] == "17", "the view was not recreated in the restored schema"
    assert not PWNED.exists(), "a name was run as a command"
    assert leftovers(env, "lab1") == []


# --------------------------------------------------------------------------- retention and plans


def protected(env):
    path = repository(env) / ".pulih-protected.json"
    if not path.exists():
        return []
    doc = json.loads(path.read_text())
    jsonschema.validate(doc, json.loads((PROJECT / "schemas" / "protected.schema.json").read_text()))
    return doc["backups"]


def api(env, actor, method, path, body=None):
    """One call of the service's API as `actor` (for the tests that must act within a job's
    run, faster than a command starts)."""
    service = env["service"]
    transport = httpx.HTTPTransport(uds=str(service.state / "pulih.sock"))
    headers = {"Authorization": f"Bearer {service.tokens[actor]}"}
    with httpx.Client(transport=transport, base_url="http://pulih", headers=headers, timeout=300) as client:
        return client.request(method, f"/v1{path}", json=body)


def follow_job(env, job_id, when=None, then=None):
    """A job's events to its end; the first event for which when(event) holds runs then()."""
    service = env["service"]
    transport = httpx.HTTPTransport(uds=str(service.state / "pulih.sock"))
    headers = {"Authorization": f"Bearer {service.tokens['budi']}"}
    with (
        httpx.Client(transport=transport, base_url="http://pulih", headers=headers, timeout=900) as client,
        client.stream("GET", f"/v1/jobs/{job_id}/events") as events,
    ):
        for line in events.iter_lines():
            event = json.loads(line)
            if when is not None and when(event):
                when = None
                then()
            if event["type"] == "end":
                return event
    raise AssertionError(f"job {job_id}'s events ended without its end")


def test_one_restore_per_target_at_a_time_and_no_backup_of_it_meanwhile(env):
    first = planned_request(env, ["LAB-001:app-pg"], backups=env["backups"])
    second = planned_request(env, ["LAB-001:app-pg"], backups=env["backups"])
    started = api(env, "budi", "POST", "/restores", {"request": first})
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["targets"] == [
        f"postgresql://{host(env, 'lab1').address}:{host(env, 'lab1').pg_port}/app_lab1"
    ]
    try:
        again = pulih(env, "restore", "--request", second, "--json", check=3)
        said = again.stdout + again.stderr
        assert f"is busy with job {job['id']} (restore by budi, request {first})" in said, said
        backup = pulih(env, "backup", "--limit", "lab1", "--item", "app-pg", "--json", check=3)
        assert f"is busy with job {job['id']}" in json.loads(backup.stdout)["message"]
    finally:
        end = follow_job(env, job["id"])
    assert end["job"]["exit_code"] == 0, end["report"]["errors"]
    refused_runs = [r for r in json.loads(pulih(env, "runs", "list", "--json", check=0).stdout)]
    assert any(r["request_id"] == second and r["status"] == "refused" for r in refused_runs), "on the record"
    # Once it ended, the target is free again.
    assert report_of(pulih(env, "restore", "--request", second, "--json", check=0))["status"] == "succeeded"


def test_an_approval_revoked_during_the_stage_stops_the_restore_before_the_swap(env):
    state, lab1 = env["state"], host(env, "lab1")
    rid = planned_request(env, ["LAB-001:app-pg"], backups=env["backups"])
    state.psql(lab1, "UPDATE pegawai SET nama = 'sesudah cadangan' WHERE id = 2", "app_lab1")
    live = pg_print(env, "lab1", "app_lab1")
    job = api(env, "budi", "POST", "/restores", {"request": rid}).json()

    def revoke():
        done = api(env, "sri", "POST", f"/requests/{rid}/revoke", {"reason": "salah tabel"})
        assert done.status_code == 200, done.text

    end = follow_job(
        env, job["id"], when=lambda e: e["type"] == "task" and "Stage the backup" in e["text"], then=revoke
    )
    report = end["report"]
    assert end["job"]["exit_code"] == 3 and report["status"] == "refused", report["errors"]
    (item,) = report["items"]
    assert "refused right before the swap: the approval of request" in item["error"]
    assert "was revoked by sri" in item["error"] and item["restore"]["phase"] == "gate"
    assert pg_print(env, "lab1", "app_lab1") == live, "the live database changed"
    assert leftovers(env, "lab1") == [], "the stage was left behind"
    assert [s["step"] for s in record(env, rid)["steps"]][-2:] == ["revoked", "executed"]
    assert len(report["attempts"]) == 1, "a refusal by the gate is not retried"
    refused = pulih(env, "restore", "--request", rid, check=3)
    assert "was revoked by sri" in refused.stderr


def test_a_token_that_may_only_back_up_cannot_restore(env):
    rid = planned_request(env, ["LAB-001:app-pg"], backups=env["backups"])
    nightly = env["service"].admin("admin", "token", "create", "budi", "--scope", "backup").stdout.strip()
    result = subprocess.run(
        ["pulih", "restore", "--request", rid],
        env={**env["environ"], "PULIH_TOKEN": nightly},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 3 and "'restore' needs a token with that scope" in result.stderr


def test_a_planned_backup_survives_retention_by_plain_ansible_until_its_request_closes(env):
    # An item of its own: retention keeping one backup must not prune the other tests' backups.
    lab2 = host(env, "lab2")
    env["state"].mariadb(
        lab2,
        "CREATE DATABASE retensi; CREATE TABLE retensi.t (id INT PRIMARY KEY); "
        "INSERT INTO retensi.t VALUES (1)",
    )
    add_items(
        env,
        "LAB-002",
        [
            {
                "name": "retensi",
                "engine": "mariadb",
                "database": "retensi",
                "host": lab2.address,
                "port": lab2.mariadb_port,
                "user": lab_mod.DB_USER,
                "password_var": lab_mod.PASSWORD_VAR,
            }
        ],
    )
    item = "LAB-002:retensi"
    made = [
        report_of(pulih(env, "backup", "--limit", "lab2", "--item", "retensi", "--json", check=0))["items"][0]
        for _ in range(2)
    ]
    older = made[0]["backup_id"]
    unverified = report_of(
        pulih(env, "backup", "--limit", "lab2", "--item", "retensi", "--no-verify", "--json", check=0)
    )["items"][0]["backup_id"]

    # Planning a backup that never verified is refused, unless the operator says why.
    rid = planned_request(env, [item], backups={item: older}, plan=False)
    refused = pulih(env, "request", "plan", rid, f"--backup={item}={unverified}", "--json", check=4)
    assert json.loads(refused.stdout)["status"] == "error" and "not verified" in refused.stdout
    assert record(env, rid)["status"] != "planned"
    # (--unverified REASON: see the corrupt backup's test.) The older, verified one is planned.
    pulih(env, "request", "plan", rid, f"--backup={item}={older}", check=0)
    assert [e["backup_id"] for e in protected(env) if e["request_id"] == rid] == [older]

    # Retention keeping one backup, run with plain ansible-playbook: the planned one stays.
    settings = env["inventory"] / "group_vars" / "all" / "retention.yml"
    settings.write_text(
        "pulih_backup_retention_keep_last: 1\npulih_backup_retention_keep_daily: 0\n"
        "pulih_backup_retention_keep_weekly: 0\npulih_backup_retention_keep_monthly: 0\n"
    )
    try:
        playbook = ansible_playbook(
            env["inventory"], "backup.yml", "--limit", "lab2", "-e", '{"pulih_backup_items": ["retensi"]}'
        )
        assert playbook.returncode == 0, playbook.stdout[-3000:]
        kept = [
            b.name for b in (repository(env) / "LAB-002" / "retensi").iterdir() if not b.name.startswith(".")
        ]
        assert older in kept, "retention pruned the backup an open request's plan names"
        # Retention did run: the unverified one went (made[1] stays as the newest verified one).
        assert unverified not in kept and made[1]["backup_id"] in kept
    finally:
        settings.unlink()

    # Lifted when the protection's request closes (through the playbook, as `request close` does).
    lifted = ansible_playbook(
        env["inventory"],
        "protect.yml",
        "-e",
        f"pulih_protect_request_id={rid}",
        "-e",
        "pulih_protect_state=absent",
    )
    assert lifted.returncode == 0, lifted.stdout[-3000:]
    assert [e for e in protected(env) if e["request_id"] == rid] == []


# --------------------------------------------------------------------------- interrupted swaps

AGENT = PROJECT / "roles" / "pulih_common" / "files" / "pulih_agent.py"
SWAP_SCHEMA = """
    CREATE DATABASE swap_probe; USE swap_probe;
    CREATE TABLE akun (id INT PRIMARY KEY, saldo INT NOT NULL) ENGINE=InnoDB;
    CREATE TABLE jejak (id INT AUTO_INCREMENT PRIMARY KEY, akun INT) ENGINE=InnoDB;
    INSERT INTO akun SELECT seq, seq * 10 FROM seq_1_to_50;
    CREATE TRIGGER catat AFTER UPDATE ON akun FOR EACH ROW INSERT INTO jejak (akun) VALUES (NEW.id);
    CREATE VIEW kaya AS SELECT id FROM akun WHERE saldo > 250;
    CREATE FUNCTION dua_kali(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;
    CREATE EVENT bersih ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM jejak;
"""


def schema_print(env, name="swap_probe"):
    """Tables with their checksums, and every trigger, view, routine and event of a schema."""
    query = f"""
        SELECT CONCAT('table ', TABLE_NAME) FROM information_schema.TABLES
          WHERE TABLE_SCHEMA = '{name}' AND TABLE_TYPE = 'BASE TABLE'
        UNION ALL SELECT CONCAT('trigger ', TRIGGER_NAME, ' ', ACTION_STATEMENT)
          FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = '{name}'
        UNION ALL SELECT CONCAT('view ', TABLE_NAME, ' ', VIEW_DEFINITION) FROM information_schema.VIEWS
          WHERE TABLE_SCHEMA = '{name}'
        UNION ALL SELECT CONCAT('routine ', ROUTINE_NAME) FROM information_schema.ROUTINES
          WHERE ROUTINE_SCHEMA = '{name}'
        UNION ALL SELECT CONCAT('event ', EVENT_NAME) FROM information_schema.EVENTS
          WHERE EVENT_SCHEMA = '{name}';
        CHECKSUM TABLE {name}.akun, {name}.jejak EXTENDED;
    """
    return sorted(env["state"].mariadb(host(env, "lab1"), query).splitlines())


def run_agent(env, request, data=b""):
    lab1 = host(env, "lab1")
    conn = {"socket": env["state"].mariadb_socket(lab1), "user": "root"}
    line = json.dumps(
        {"engine": "mariadb", "conn": conn, "live": "swap_probe", "token": "swaptest", **request}
    )
    return subprocess.run(
        ["/usr/bin/python3", str(AGENT)], input=line.encode() + b"\n" + data, capture_output=True, timeout=120
    )


@pytest.mark.parametrize("point", ["mariadb_swap_before_rename", "mariadb_swap_after_rename"])
def test_a_mariadb_swap_killed_mid_way_is_undone(env, point):
    """The agent dies (SIGKILL) exactly between dropping the live triggers and the rename, or
    between the rename and recreating the objects; the next request for the target (the
    rescue's discard, or the next attempt's stage) puts the live schema back as it was."""
    state, lab1 = env["state"], host(env, "lab1")
    state.mariadb(lab1, "DROP DATABASE IF EXISTS swap_probe;" + SWAP_SCHEMA)
    dump = subprocess.run(
        'set -o pipefail; mariadb-dump --no-defaults -u root --socket="$SOCK" --routines --triggers --events '
        "swap_probe | zstd -q -c",
        shell=True,
        executable="/bin/bash",
        env={**os.environ, "SOCK": state.mariadb_socket(lab1)},
        capture_output=True,
        check=True,
    ).stdout
    state.mariadb(lab1, "DELETE FROM swap_probe.akun WHERE id > 20; UPDATE swap_probe.akun SET saldo = 0")
    live = schema_print(env)

    staged = run_agent(env, {"mode": "stage", "nonce": "a1"}, dump)
    assert staged.returncode == 0, staged.stderr.decode()
    killed = run_agent(env, {"mode": "swap", "nonce": "a1", "fault": point})
    assert killed.returncode == -signal.SIGKILL
    assert schema_print(env) != live, "the kill must land where the live schema is mid-change"
    journal = state.mariadb(lab1, "SELECT COUNT(*) FROM pulih_old_swaptest.pulih_swap_journal")
    assert journal.strip() == "1"

    undone = run_agent(env, {"mode": "discard", "nonce": "a1"})
    assert undone.returncode == 0, undone.stderr.decode()
    assert schema_print(env) == live
    assert leftovers(env, "lab1") == []

    # And the next attempt goes through.
    assert run_agent(env, {"mode": "stage", "nonce": "a2"}, dump).returncode == 0
    swapped = run_agent(env, {"mode": "swap", "nonce": "a2"})
    assert swapped.returncode == 0, swapped.stderr.decode()
    restored = schema_print(env)
    assert restored != live and any(line.startswith("trigger catat") for line in restored)
    assert state.mariadb(lab1, "SELECT COUNT(*) FROM swap_probe.akun").strip() == "50"
    state.mariadb(lab1, "DROP DATABASE swap_probe")


# --------------------------------------------------------------------------- secrets


def files_holding(env, root, needle):
    """Files under root that hold needle, other than the lab's own state and vault stand-in."""
    known = [Path(env["inventory"]), Path(env["state"].root) / lab_mod.STATE_FILE]
    hits = []
    # os.walk, not rglob: on a shared machine folders come and go under /tmp while we look.
    for folder, _dirs, names in os.walk(root, onerror=lambda _exc: None):
        for name in names:
            path = Path(folder) / name
            if any(path == k or k in path.parents for k in known):
                continue
            with contextlib.suppress(OSError):
                if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                    hits.append(path)
    return hits


def test_secrets_live_only_in_the_agents_memory_and_die_with_it(env, tmp_path):
    """An encrypted PostgreSQL stage, held open mid-stream: the age identity and the database
    password are in no file on disk and in no environment, and after a SIGKILL of the agent
    nothing of either is left anywhere in /tmp."""
    lab1 = host(env, "lab1")
    key = tmp_path / "age.key"
    subprocess.run(["age-keygen", "-o", str(key)], capture_output=True, check=True)
    identity = key.read_text()
    secret_key = next(line for line in identity.splitlines() if line.startswith("AGE-SECRET-KEY-"))
    key.unlink()
    password = env["state"].db_password
    conn = {"host": lab1.address, "port": lab1.pg_port, "user": lab_mod.DB_USER, "password": password}
    request = {
        "mode": "stage",
        "engine": "postgresql",
        "conn": {**conn, "database": "app_lab1"},
        "live": "app_lab1",
        "token": "secrettest",
        "nonce": "s1",
        "jobs": 1,
        "encrypted": True,
        "identity": identity,
    }
    agent = subprocess.Popen(
        ["/usr/bin/python3", str(AGENT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        agent.stdin.write((json.dumps(request) + "\n").encode())
        agent.stdin.flush()  # and no artifact yet: age, zstd and pg_restore wait for it
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            children = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in descendants(agent.pid)}
            # The whole pipeline (age | zstd | pg_restore) is up, not only its last process.
            started = [cmd.split(b"\0")[0].rsplit(b"/", 1)[-1] for cmd in children.values()]
            if b"pg_restore" in started and b"age" in started:
                break
            time.sleep(0.2)
        else:
            pytest.fail("age | zstd | pg_restore never started: " + agent.stderr.read1().decode())
        for pid, cmdline in children.items():
            assert secret_key.encode() not in cmdline and password.encode() not in cmdline
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert password.encode() not in environ and b"PGPASSWORD=" not in environ
        age_argv = next(
            cmd for cmd in children.values() if cmd.split(b"\0")[0].rsplit(b"/", 1)[-1] == b"age"
        ).split(b"\0")
        assert age_argv[age_argv.index(b"-i") + 1].startswith(b"/dev/fd/"), "the identity is in no file"
        assert files_holding(env, "/tmp", secret_key.encode()) == []
        assert files_holding(env, "/tmp", password.encode()) == []
    finally:
        for pid in [agent.pid, *descendants(agent.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        agent.wait()
        # The stage goes whatever happened above: no later test may find it.
        discarded = subprocess.run(
            ["/usr/bin/python3", str(AGENT)],
            input=json.dumps({**request, "mode": "discard"}).encode() + b"\n",
            capture_output=True,
            timeout=60,
        )
    assert files_holding(env, "/tmp", secret_key.encode()) == []
    assert files_holding(env, "/tmp", password.encode()) == []
    assert discarded.returncode == 0, discarded.stderr.decode()


# --------------------------------------------------------------------------- destructive


def test_a_service_killed_mid_restore_leaves_the_live_database_and_the_next_attempt_succeeds(env):
    """The service (and every process under it) SIGKILLed while the stage fills, as in a power
    cut: the live database is as it was, the run is 'interrupted' at the service's restart,
    and the next restore succeeds."""
    state, lab1 = env["state"], host(env, "lab1")
    state.psql(
        lab1,
        "CREATE TABLE besar AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS isi "
        "FROM generate_series(1, 1500000) g; ALTER TABLE besar ADD PRIMARY KEY (id)",
        "app_lab1",
    )
    made = report_of(
        pulih(env, "backup", "--limit", "lab1", "--item", "app-pg", "--no-verify", "--json", check=0)
    )
    backup_id = made["items"][0]["backup_id"]
    count_sql = "SELECT count(*) || ':' || sum(id) FROM besar"
    original = state.psql(lab1, count_sql, "app_lab1").strip()
    state.psql(lab1, "DELETE FROM besar WHERE id % 2 = 0", "app_lab1")
    damaged = state.psql(lab1, count_sql, "app_lab1").strip()
    rid = planned_request(
        env,
        ["LAB-001:app-pg"],
        backups={"LAB-001:app-pg": backup_id},
        unverified="taken for this test just now",
    )

    client = subprocess.Popen(
        ["pulih", "restore", "--request", rid],
        env={**env["environ"], "PULIH_TOKEN": env["service"].tokens["budi"]},
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stage_sql = (
        "SELECT coalesce(max(pg_database_size(datname)), 0) FROM pg_database "
        "WHERE datname LIKE 'pulih_restore_%'"
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and int(state.psql(lab1, stage_sql).strip() or 0) < 20 << 20:
        assert client.poll() is None, "the restore ended before it could be killed"
        time.sleep(0.1)
    assert time.monotonic() < deadline, "the stage never filled"
    service = env["service"]
    victims = [service.proc.pid, *descendants(service.proc.pid)]
    for pid in victims:  # the service dies at once, with its playbook and SSH
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    service.proc.wait()
    client.wait(timeout=60)  # the client learns it lost the service
    time.sleep(3)  # the repository host's side may still be feeding the agent
    assert state.psql(lab1, count_sql, "app_lab1").strip() == damaged, "the live database changed"
    service.start()
    assert record(env, rid)["status"] == "planned", "a killed attempt recorded no outcome"
    killed = [
        json.loads(p.read_text())
        for p in (Path(env["environ"]["PULIH_STATE_DIR"]) / "runs").glob("*-restore-*/report.json")
    ]
    interrupted = [r for r in killed if r["request_id"] == rid and r["status"] == "interrupted"]
    assert len(interrupted) == 1, "the killed run is marked interrupted at the restart"
    assert "the service stopped while this run was running" in interrupted[0]["errors"]

    doc = restore(env, rid, check=0)
    assert doc["items"][0]["ok"]
    assert state.psql(lab1, count_sql, "app_lab1").strip() == original
    deadline = time.monotonic() + 60
    while leftovers(env, "lab1") and time.monotonic() < deadline:
        time.sleep(0.5)  # the killed attempt's agent removes its own stage when it notices
    assert leftovers(env, "lab1") == []
    with sqlite3.connect(Path(env["environ"]["PULIH_STATE_DIR"]) / "pulih.db") as db:
        attempts = db.execute(
            "SELECT count(*) FROM pulih_audit WHERE action = 'restore.attempt' AND request_id = ?", (rid,)
        ).fetchone()[0]
    assert attempts == 2, "the killed attempt is on the record as started"


def test_a_server_down_fails_the_attempt_and_every_retry_is_recorded(env):
    state = env["state"]
    mariadbd = next(p for p in state.procs if p.name == "lab2/mariadb")
    rid = planned_request(env, ["LAB-002:app-mariadb"], backups=env["backups"])
    assert lab_mod.stop_pid(mariadbd.pid, "mariadbd")
    doc = restore(env, rid, "--attempts", "2", check=1)
    assert doc["status"] == "failed"
    assert [a["status"] for a in doc["attempts"]] == ["failed", "failed"]
    assert "cannot connect to MariaDB" in doc["items"][0]["error"]
    assert doc["items"][0]["restore"]["tries"] == 2
    executed = [s for s in record(env, rid)["steps"] if s["step"] == "executed"]
    assert [s["note"].split(":")[0] for s in executed] == ["failed", "failed"]
    assert "attempt 2 of 2" in executed[-1]["note"]
    html = (Path(env["environ"]["PULIH_STATE_DIR"]) / "runs" / doc["run_id"] / "report.html").read_text()
    assert "cannot connect to MariaDB" in html


def test_a_partial_alternate_target_run_names_the_real_cause(env):
    """Two items to another host whose MariaDB is down (the test above stopped it): the
    PostgreSQL item is restored there, the MariaDB item fails, and the report and the
    terminal say where and why, not only that not everything was restored."""
    mariadbd = next(p for p in env["state"].procs if p.name == "lab2/mariadb")
    lab_mod.stop_pid(mariadbd.pid, "mariadbd")  # down already when the test above ran
    items = ["LAB-001:app-pg", "LAB-001:app-mariadb"]
    rid = planned_request(env, items, backups=env["backups"], target="alternate:lab2")
    run = pulih(env, "restore", "--request", rid, "--attempts", "1", "--json", check=1)
    doc = report_of(run)
    results = {i["item"]: i for i in doc["items"]}
    assert results["app-pg"]["ok"] and results["app-pg"]["restore"]["target_host"] == "lab2"
    assert pg_print(env, "lab2", "app_lab1") == env["original"]["pg"]
    cause = results["app-mariadb"]["error"]
    assert cause.startswith("on the alternate target lab2: ") and "cannot connect to MariaDB" in cause
    assert "1 of 2 item(s) restored after 1 attempt(s)" in run.stderr
    assert any(
        line.startswith("failed: LAB-001:app-mariadb: on the alternate target lab2: ")
        for line in run.stderr.splitlines()
    )


def test_an_approval_revoked_between_attempts_stops_the_next_attempt(env):
    """lab2's MariaDB is down (the tests above stopped it): the first attempt fails, the
    approval is revoked while the restore waits to try again, and no further attempt runs."""
    rid = planned_request(env, ["LAB-002:app-mariadb"], backups=env["backups"])
    job = api(env, "budi", "POST", "/restores", {"request": rid, "attempts": 3}).json()

    def revoke():
        api(env, "sri", "POST", f"/requests/{rid}/revoke", {"reason": "server diganti"}).raise_for_status()

    end = follow_job(env, job["id"], when=lambda e: "attempt 1 of 3 failed" in e.get("text", ""), then=revoke)
    report = end["report"]
    assert end["job"]["exit_code"] == 3 and report["status"] == "refused"
    assert [a["status"] for a in report["attempts"]] == ["failed"]
    assert any("refused before attempt 2 of 3" in e and "revoked by sri" in e for e in report["errors"])
    steps = [s["step"] for s in record(env, rid)["steps"]]
    assert steps[-2:] == ["executed", "revoked"]


def test_a_register_edited_between_attempts_stops_the_next_attempt(env):
    """The same failing first attempt; then the service's register moves the item to another
    port: the next attempt would go where the job holds no lock and the approval never
    looked, so it does not run."""
    rid = planned_request(env, ["LAB-002:app-mariadb"], backups=env["backups"])
    path = env["inventory"] / lab_mod.REGISTER_FILE
    before = path.read_text()
    job = api(env, "budi", "POST", "/restores", {"request": rid, "attempts": 3}).json()
    moved = host(env, "lab2").mariadb_port + 1

    try:
        end = follow_job(
            env,
            job["id"],
            when=lambda e: "attempt 1 of 3 failed" in e.get("text", ""),
            then=lambda: set_item(env, "LAB-002", "app-mariadb", port=moved),
        )
    finally:
        path.write_text(before)
    report = end["report"]
    assert end["job"]["exit_code"] == 3 and report["status"] == "refused"
    assert [a["status"] for a in report["attempts"]] == ["failed"]
    assert any(
        "refused before attempt 2" in e and "register changed while the job ran" in e and f":{moved}/" in e
        for e in report["errors"]
    ), report["errors"]


def test_the_database_password_never_leaks(env):
    password = env["state"].db_password
    state_dir = Path(env["environ"]["PULIH_STATE_DIR"])
    leaks = [
        str(p) for p in state_dir.rglob("*") if p.is_file() and password in p.read_text(errors="replace")
    ]
    assert leaks == []
    assert not any(password in output for output in env["outputs"])
    assert len(list(state_dir.glob("runs/*/attempt-*/**/job_events/*.json"))) > 100


def test_no_task_of_a_restore_runs_on_the_repository_host_and_secrets_go_only_to_the_servers(env):
    """Every restore of this module's runs (in place, alternate hosts, encrypted, interrupted):
    no task ran on the repository host, none holds the database password or the age identity in
    clear, and those given a secret ran on the data servers (the target's agent fetched the
    backup from the receiver itself)."""
    tasks = tasks_of(env)
    assert tasks.seen > 100, "no run's artifacts were found: nothing was checked"
    assert tasks.on_repository == [], tasks.on_repository
    assert tasks.leaked == [], tasks.leaked
    assert "pulih.core.agent_pull" in tasks.with_secret, tasks.with_secret
    assert tasks.with_secret <= {"pulih.core.agent_push", "pulih.core.agent_pull"}, tasks.with_secret
    wanted = {"list", "checksums", "grant", "revoke-grant", "protect", "unprotect"}
    assert wanted <= tasks.receiver_verbs, tasks.receiver_verbs

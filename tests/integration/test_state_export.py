"""pulih's own recovery, without a lab: `pulih serve --export-state` of a running service's
state folder, sealed to two officers with nested age layers, and `--import-state` onto a fresh
folder. One identity alone opens nothing (age itself says so, and pulih names whose identity
is missing), both bring the state back byte for byte, a changed file is refused, and no secret
or store content is in the file in the clear. Needs root, like `pulih serve --init`.
The round trip on a lab (restart, audit verify, a gated restore) is in test_restore_faults.py."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pulih.service import state as states
from pulih.service import state_export as exports
from tests.conftest import PROJECT
from tests.integration.client import connects, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pulih serve --init and --import-state run as root")

PULIH = str(Path(sys.executable).parent / "pulih")
MARKER = "pt-rahasia-7f3a"  # an account name: store content that must not show in the clear


def run(*args: str, check: int | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([PULIH, *args], capture_output=True, text=True, check=False, cwd="/")
    assert "Traceback" not in done.stderr, done.stderr
    if check is not None:
        assert done.returncode == check, done.stdout + done.stderr
    return done


def keygen(path: Path) -> str:
    subprocess.run(["age-keygen", "-o", str(path)], capture_output=True, check=True)
    return subprocess.run(
        ["age-keygen", "-y", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()


def sealed_part(path: Path) -> bytes:
    data = path.read_bytes()
    return data[data.index(b"\n") + 1 :]


def age_open(data: bytes, identity: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["age", "-d", "-i", str(identity)], input=data, capture_output=True, check=False)


def base64_lines(key: Path) -> list[str]:
    """The private key's base64 lines (each one of them a secret in the clear)."""
    return [line for line in key.read_text().splitlines() if line and not line.startswith("-----")]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A state folder of a running service (an account, an anchor outside, an age identity of
    the backups outside, a run with its report and runner artifacts, Ansible's temporary files),
    exported while it runs."""
    base = tmp_path_factory.mktemp("state-export")
    state, anchors, outside = base / "state", base / "anchor", base / "etc"
    anchors.mkdir()
    outside.mkdir()
    register = PROJECT / "inventories" / "example"
    init = [
        "--init",
        "--admin",
        "root",
        "--user",
        "root",
        "--register",
        str(register),
        "--content",
        str(PROJECT),
    ]
    run("serve", "--state", str(state), *init, check=0)
    backup_key = outside / "age.key"
    keygen(backup_key)
    backup_key.chmod(0o600)
    with (state / "config.yml").open("a") as config:
        config.write(f"anchors:\n  - file: {anchors / 'audit.jsonl'}\nage_identity: {backup_key}\n")
    run_dir = state / "runs" / "20261206T000000Z-backup-abcd"
    (run_dir / "runner" / "artifacts").mkdir(parents=True)
    (run_dir / "report.json").write_text('{"status": "succeeded"}\n')
    (run_dir / "runner" / "artifacts" / "stdout").write_text("ansible's output\n" * 1000)
    (state / ".ansible" / "tmp").mkdir(parents=True)
    (state / ".ansible" / "tmp" / "leftover").write_text("x")
    officers = {name: keygen(base / f"{name}.key") for name in ("sri", "budi", "eve")}
    proc = subprocess.Popen(
        [PULIH, "serve", "--state", str(state)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/"
    )
    try:
        wait_until("the service's socket", lambda: connects(state / "pulih.sock"))
        environ = {**os.environ, "PULIH_SERVER": f"unix:{state / 'pulih.sock'}"}
        subprocess.run(
            [PULIH, "admin", "user", "add", MARKER, "--role", "auditor"],
            env=environ,
            check=True,
            capture_output=True,
        )
        export = base / "pulih-state.age"
        pair = [f"--officer=sri={officers['sri']}", f"--officer=budi={officers['budi']}"]
        exported = run(
            "serve", "--state", str(state), "--export-state", str(export), *pair, "--json", check=0
        )
    finally:
        proc.terminate()  # by PID
        proc.wait(timeout=30)
    yield {
        "base": base,
        "state": state,
        "export": export,
        "doc": json.loads(exported.stdout),
        "officers": officers,
        "backup_key": backup_key,
        "anchor": anchors / "audit.jsonl",
    }


def key(made, name: str) -> Path:
    return made["base"] / f"{name}.key"


def import_into(made, target: Path, *names: str, source: Path | None = None, check: int):
    """`pulih serve --import-state` onto `target` with the named officers' identities (as root's service)."""
    identities = [f"--identity={key(made, name)}" for name in names]
    source = source or made["export"]
    args = ["serve", "--state", str(target), "--import-state", str(source), "--user", "root", "--json"]
    return run(*args, *identities, check=check)


def test_the_header_names_both_officers_and_the_payloads_hashes(made):
    header = json.loads(made["export"].read_bytes().split(b"\n", 1)[0])
    assert header["officers"] == [
        {"name": "sri", "recipient": made["officers"]["sri"], "layer": "inner"},
        {"name": "budi", "recipient": made["officers"]["budi"], "layer": "outer"},
    ]
    assert header["sealed_sha256"] == hashlib.sha256(sealed_part(made["export"])).hexdigest()
    assert header["store"] == "sqlite" and header["audit_head"]["seq"] >= 2
    assert header["audit_key"] == yaml.safe_load((made["state"] / "config.yml").read_text())["audit_key"]
    assert made["doc"]["status"] == "ok" and made["doc"]["payload_sha256"] == header["payload_sha256"]
    assert stat.S_IMODE(made["export"].stat().st_mode) == 0o600
    assert not list(made["state"].glob(".export-*")), "the store's scratch copy was left behind"


def test_no_secret_and_no_store_content_is_in_the_file_in_the_clear(made):
    """Neither in the file nor after one officer's layer is taken off."""
    ssh = made["state"] / "ssh"
    secrets = base64_lines(ssh / "id_ed25519") + base64_lines(ssh / "audit_ed25519")
    secrets.append(made["backup_key"].read_text().split("AGE-SECRET-KEY-")[1].strip()[:40])
    secrets += [MARKER, "SQLite format 3", "audit_key:", "id_ed25519"]  # the store's and config's text
    outer_off = age_open(sealed_part(made["export"]), key(made, "budi"))
    assert outer_off.returncode == 0, outer_off.stderr
    for blob in (made["export"].read_bytes(), outer_off.stdout):
        assert [s for s in secrets if s.encode() in blob] == []


def test_one_identity_alone_opens_nothing(made):
    sealed = sealed_part(made["export"])
    inner_alone = age_open(sealed, key(made, "sri"))
    assert inner_alone.returncode != 0 and b"no identity matched" in inner_alone.stderr
    outer_off = age_open(sealed, key(made, "budi"))
    assert outer_off.stdout.startswith(b"age-encryption.org/v1"), "under budi's layer: still sealed, to sri"
    assert age_open(outer_off.stdout, key(made, "budi")).returncode != 0
    target = made["base"] / "alone"
    for holder, missing, layer in (("sri", "budi", "outer"), ("budi", "sri", "inner")):
        refused = import_into(made, target, holder, check=2)
        message = json.loads(refused.stdout)["message"]
        assert f"{missing}'s ({made['officers'][missing]}, the {layer} layer) is missing" in message
        assert f"ask {missing} to bring it" in refused.stderr
        assert not target.exists()
    stranger = import_into(made, target, "sri", "eve", check=2)
    assert "is neither officer's" in stranger.stderr and not target.exists()


def test_both_identities_bring_the_state_back_and_it_checks_clean(made):
    target = made["base"] / "restored-state"
    done = import_into(made, target, "budi", "sri", check=0)
    doc = json.loads(done.stdout)
    assert doc["status"] == "ok" and doc["problems"] == [], doc
    old, new = made["state"], target
    for name in ("ssh/id_ed25519", "ssh/id_ed25519.pub", "ssh/audit_ed25519", "ssh/audit_ed25519.pub"):
        assert (new / name).read_bytes() == (old / name).read_bytes(), name
    assert stat.S_IMODE(new.stat().st_mode) == 0o750 and new.stat().st_uid == 0
    for name in ("config.yml", "pulih.db", "ssh/id_ed25519", "ssh/audit_ed25519"):
        assert stat.S_IMODE((new / name).stat().st_mode) == 0o600, name
    config = yaml.safe_load((new / "config.yml").read_text())
    was = yaml.safe_load((old / "config.yml").read_text())
    assert config["audit_key"] == was["audit_key"] and config["anchors"] == was["anchors"]
    assert Path(config["age_identity"]).read_bytes() == made["backup_key"].read_bytes()
    assert Path(config["age_identity"]).is_relative_to(new / "restored")
    assert (Path(config["register"]) / "datacenter.asset_register.yml").is_file()
    with contextlib.closing(sqlite3.connect(new / "pulih.db")) as db:
        assert db.execute("SELECT count(*) FROM pulih_accounts WHERE name = ?", (MARKER,)).fetchone() == (1,)
        seq, digest = db.execute("SELECT seq, hash FROM pulih_audit ORDER BY seq DESC LIMIT 1").fetchone()
    assert {"seq": seq, "hash": digest} == made["doc"]["audit_head"]
    assert (new / "runs" / "20261206T000000Z-backup-abcd" / "report.json").is_file()
    assert not (new / "runs" / "20261206T000000Z-backup-abcd" / "runner").exists(), "artifacts stay out"
    assert not (new / ".ansible").exists() and not list(new.glob(".import-*"))
    run("serve", "--state", str(new), "--check", check=0)
    store = states.load(new).open_store()
    try:
        assert store.verify_audit() == [], "the chain against the anchor outside the folder"
    finally:
        store.engine.dispose()
    again = import_into(made, new, "budi", "sri", check=2)
    assert "exists and is not empty" in again.stderr


def tampered(made, name: str, change) -> Path:
    data = made["export"].read_bytes()
    cut = data.index(b"\n") + 1
    header, sealed = json.loads(data[:cut]), bytearray(data[cut:])
    header, sealed = change(header, sealed)
    path = made["base"] / name
    path.write_bytes((json.dumps(header, sort_keys=True) + "\n").encode() + bytes(sealed))
    return path


def flip(sealed: bytearray, at: int) -> bytearray:
    sealed[at] ^= 0x01
    return sealed


def rehash(header: dict, sealed: bytearray) -> tuple[dict, bytearray]:
    """What a forger who knows the format does: the outer hash made to fit."""
    return {**header, "sealed_sha256": hashlib.sha256(bytes(sealed)).hexdigest()}, sealed


OUTER_FAILS = "the outer layer, sealed to budi, does not open"
CHANGES = {
    "flipped": (lambda h, s: (h, flip(s, len(s) // 2)), "was changed or damaged after it was written"),
    "flipped-rehashed": (lambda h, s: rehash(h, flip(s, len(s) // 2)), OUTER_FAILS),
    "cut-rehashed": (lambda h, s: rehash(h, s[: len(s) - 64]), OUTER_FAILS),
    "renamed": (
        lambda h, s: ({**h, "officers": [{**h["officers"][0], "name": "mallory"}, h["officers"][1]]}, s),
        "the header's officers differ from the sealed manifest's",
    ),
    "other-head": (lambda h, s: ({**h, "audit_head": {"seq": 1, "hash": "0" * 64}}, s), "audit_head differ"),
}


@pytest.mark.parametrize("case", list(CHANGES))
def test_a_changed_export_is_refused_and_nothing_is_written(made, case):
    change, says = CHANGES[case]
    path = tampered(made, f"{case}.age", change)
    target = made["base"] / f"target-{case}"
    refused = import_into(made, target, "sri", "budi", source=path, check=4)
    assert says in json.loads(refused.stdout)["message"]
    assert not target.exists()


def test_an_export_of_a_newer_store_schema_is_refused_before_anything(made):
    path = tampered(made, "newer.age", lambda h, s: ({**h, "schema": 999, "pulih": "9.0"}, s))
    target = made["base"] / "target-newer"
    refused = import_into(made, target, "sri", "budi", source=path, check=2)
    assert "holds a store of schema 999, made by pulih 9.0" in json.loads(refused.stdout)["message"]
    assert not target.exists()


def test_the_officers_are_two_distinct_people_with_age_keys(made):
    sri, budi = made["officers"]["sri"], made["officers"]["budi"]
    cases = [
        ([f"sri={sri}"], "exactly two officers open an export, not 1"),
        ([f"sri={sri}", f"sri={budi}"], "two people with two keys"),
        ([f"sri={sri}", f"budi={sri}"], "two people with two keys"),
        ([f"sri={sri}", "budi=ssh-ed25519 AAAA"], "is not an age public key"),
        ([f"sri={sri}", "budi"], "write NAME=AGE_RECIPIENT"),
        ([f"sri={sri}", f"-x={budi}"], "officer name '-x'"),
        ([], "name the two officers who together open the export"),
    ]
    for options, says in cases:
        with pytest.raises(exports.ExportError, match=re.escape(says)) as refused:
            exports.officers(options, {})
        assert refused.value.code == 2
    bad = sri[:-1] + ("q" if sri[-1] != "q" else "p")  # a recipient whose checksum is wrong
    with pytest.raises(
        exports.ExportError, match=r"sri's recipient is not one age takes: .*invalid checksum"
    ):
        exports.export_state(
            states.load(made["state"]),
            made["base"] / "bad.age",
            exports.officers([f"sri={bad}", f"budi={budi}"], {}),
        )
    assert not (made["base"] / "bad.age").exists()
    with pytest.raises(exports.ExportError, match="inside the state folder"):
        exports.export_state(
            states.load(made["state"]),
            made["state"] / "x.age",
            exports.officers([f"sri={sri}", f"budi={budi}"], {}),
        )
    out = made["base"] / "refused.age"
    for options, says in (
        ([f"--officer=sri={sri}"], "exactly two"),
        ([f"--officer=sri={sri}", f"--officer=budi={budi}", "--check"], "choose one of"),
    ):
        refused = run(
            "serve", "--state", str(made["state"]), "--export-state", str(out), *options, "--json", check=2
        )
        assert says in json.loads(refused.stdout)["message"], (options, refused.stdout)
    assert not out.exists()


def test_the_officers_may_come_from_the_config(made, tmp_path):
    state = made["state"]
    config = (state / "config.yml").read_text()
    officers = [
        {"name": "sri.wahyuni", "recipient": made["officers"]["sri"]},
        {"name": "budi.santoso", "recipient": made["officers"]["budi"]},
    ]
    try:
        (state / "config.yml").write_text(config + yaml.safe_dump({"recovery_officers": officers}))
        run("serve", "--state", str(state), "--export-state", str(tmp_path / "x.age"), check=0)
    finally:
        (state / "config.yml").write_text(config)
    header = json.loads((tmp_path / "x.age").read_bytes().split(b"\n", 1)[0])
    assert [o["name"] for o in header["officers"]] == ["sri.wahyuni", "budi.santoso"]
    assert "age -d -i budi.santoso.key | age -d -i sri.wahyuni.key" in header["open_by_hand"]


def test_the_export_opens_by_hand_with_age_and_tar(made, tmp_path):
    """The header's own recipe, with standard tools only (the README's by-hand recovery)."""
    recipe = json.loads(made["export"].read_bytes().split(b"\n", 1)[0])["open_by_hand"]
    recipe = recipe.replace("FILE", str(made["export"])).replace("budi.key", str(key(made, "budi")))
    recipe = recipe.replace("sri.key", str(key(made, "sri")))
    subprocess.run(["bash", "-o", "pipefail", "-c", recipe], cwd=tmp_path, check=True, capture_output=True)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for entry in manifest["files"]:
        assert hashlib.sha256((tmp_path / entry["member"]).read_bytes()).hexdigest() == entry["sha256"]
    assert (tmp_path / "state" / "ssh" / "id_ed25519").read_bytes() == (
        made["state"] / "ssh" / "id_ed25519"
    ).read_bytes()


@pytest.mark.lab
def test_a_postgresql_store_goes_out_by_pg_dump_and_back_into_an_empty_database(tmp_path):
    """A store on PostgreSQL (a 1-host lab's server, no repository): the export holds its
    pg_dump, the import restores it into the empty database --store names, and refuses one that
    already holds a record."""
    import sqlalchemy as sa

    from tests import lab as lab_mod

    lab = lab_mod.Lab(1, repository=False)
    state = lab.up()
    try:
        host = state.host("lab1")
        base = f"postgresql+psycopg://{lab_mod.DB_USER}:{state.db_password}@{host.address}:{host.pg_port}/"
        admin = sa.create_engine(base + "postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for name in ("pulih_old", "pulih_new"):
                conn.execute(sa.text(f"CREATE DATABASE {name}"))
        admin.dispose()
        folder = tmp_path / "state"
        init = ["--init", "--admin", "root", "--user", "root", "--content", str(PROJECT)]
        run("serve", "--state", str(folder), *init, "--store", base + "pulih_old", check=0)
        sri, budi = keygen(tmp_path / "sri.key"), keygen(tmp_path / "budi.key")
        export = tmp_path / "pg.age"
        pair = [f"--officer=sri={sri}", f"--officer=budi={budi}"]
        run("serve", "--state", str(folder), "--export-state", str(export), *pair, check=0)
        assert state.db_password.encode() not in export.read_bytes()
        header = json.loads(export.read_bytes().split(b"\n", 1)[0])
        assert header["store"] == "postgresql" and header["audit_head"]["seq"] >= 1
        identities = [f"--identity={tmp_path / 'sri.key'}", f"--identity={tmp_path / 'budi.key'}"]
        args = ["--import-state", str(export), "--user", "root", *identities, "--json"]
        taken = run("serve", "--state", str(tmp_path / "a"), *args, "--store", base + "pulih_old", check=2)
        assert "already holds a pulih record" in json.loads(taken.stdout)["message"]
        assert not (tmp_path / "a").exists()
        done = run("serve", "--state", str(tmp_path / "b"), *args, "--store", base + "pulih_new", check=0)
        assert json.loads(done.stdout)["problems"] == []
        assert yaml.safe_load((tmp_path / "b" / "config.yml").read_text())["store"] == base + "pulih_new"
        from pulih.store import Store

        store = Store(base + "pulih_new", upgrade=False)
        try:
            head = store.head()
            assert head is not None and {"seq": head["seq"], "hash": head["hash"]} == header["audit_head"]
            assert store.verify_audit() == []
        finally:
            store.engine.dispose()
    finally:
        lab.down()

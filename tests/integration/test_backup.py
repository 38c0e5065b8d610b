"""Backups and verification end to end, through the pulih command, on a lab of real
servers: every engine, the manifest, restoring by hand with plain tools, check mode,
retention, and the faults the issue names. Destructive tests come last."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests import lab as lab_mod
from tests.conftest import PROJECT
from tests.integration.artifacts import tasks_of
from tests.integration.client import Service, descendants, pulih, report_of, schema, wait_until
from tests.integration.plain import ansible_playbook
from tests.integration.tricky import PWNED, TRICKY_DB, TRICKY_TABLE, make_tricky_data

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("backup")
    inventory = base / "inventory"
    lab = lab_mod.Lab(2, inventory_dir=inventory)
    state = lab.up()
    service = Service(inventory)
    try:
        service.init()
        outputs: list[str] = []
        yield {
            "state": state,
            "inventory": inventory,
            "environ": {**service.environ(), "PULIH_TOKEN": service.tokens["budi"]},
            "service": service,
            "outputs": outputs,
            "base": base,
        }
    finally:
        service.remove()
        lab.down()


def repository(env):
    return Path(env["state"].host("labrepo").repository_path)


def published(env, asset, item):
    folder = repository(env) / asset / item
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def psql(env, host, sql, database="postgres"):
    return env["state"].psql(host, sql, database)


def mariadb(env, host, sql):
    return env["state"].mariadb(host, sql)


def add_items(env, asset_id, items):
    """Register more data items for a lab server, in the lab's register file."""
    path = env["inventory"] / lab_mod.REGISTER_FILE
    doc = yaml.safe_load(path.read_text())
    entry = next(a for a in doc["assets"] if a["asset_id"] == asset_id)
    entry["data"] += items
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


def test_backup_every_engine_and_verify(env):
    doc = report_of(pulih(env, "backup", "--json", check=0))
    assert doc["status"] == "succeeded"
    assert sorted((i["host"], i["item"]) for i in doc["items"]) == [
        ("lab1", "app-mariadb"),
        ("lab1", "app-pg"),
        ("lab1", "dokumen"),
        ("lab2", "app-mariadb"),
        ("lab2", "app-pg"),
        ("lab2", "dokumen"),
    ]
    assert all(i["ok"] and i["verification"]["ok"] for i in doc["items"])
    run_dir = Path(env["environ"]["PULIH_STATE_DIR"]) / "runs" / doc["run_id"]
    assert (run_dir / "report.html").read_text().count("verified on") == 6
    for item in doc["items"]:
        folder = repository(env) / item["asset_id"] / item["item"] / item["backup_id"]
        manifest = json.loads((folder / "manifest.json").read_text())
        jsonschema.validate(manifest, schema("manifest.schema.json"))
        assert manifest["engine"] in ("postgresql", "mariadb", "files")
        if manifest["engine"] != "files":
            assert sum(manifest["row_counts"].values()) == 100
        for artifact in manifest["artifacts"]:
            digest = subprocess.run(
                ["sha256sum", str(folder / artifact["name"])], capture_output=True, text=True, check=True
            ).stdout.split()[0]
            assert digest == artifact["sha256"]
        assert json.loads((folder / "verifications.jsonl").read_text().splitlines()[-1])["ok"] is True


def test_backups_list(env):
    result = pulih(env, "backups", "list", "--json", "--asset", "LAB-001", check=0)
    listed = json.loads(result.stdout)["backups"]
    assert {b["item"] for b in listed} == {"app-pg", "app-mariadb", "dokumen"}
    assert all(b["verified"] for b in listed)


def test_preflight_refuses_before_anything_streams(env):
    """A server without the agent's Python, and a repository without room for the item's
    last backup plus the margin: each fails the item with what to fix, streams nothing,
    leaves no partial file and keeps every earlier backup."""
    folder = repository(env) / "LAB-001" / "app-pg"
    if not published(env, "LAB-001", "app-pg"):  # the room is measured on the last backup
        pulih(env, "backup", "--limit", "lab1", "--item", "app-pg", "--no-verify", check=0)
    before = published(env, "LAB-001", "app-pg")
    address = env["state"].host("lab1").address
    settings = env["inventory"] / "group_vars" / "all" / "preflight.yml"
    cases = {
        "pulih_common_python: /usr/bin/python3-missing\n": (
            f"there is no Python at /usr/bin/python3-missing on {address}: install python3"
        ),
        "pulih_common_space_margin_percent: 1000000000000\n": "not enough room in the repository: ",
    }
    try:
        for text, expected in cases.items():
            settings.write_text(text)
            run = pulih(
                env, "backup", "--limit", "lab1", "--item", "app-pg", "--no-verify", "--json", check=1
            )
            (item,) = report_of(run)["items"]
            assert item["ok"] is False and expected in item["error"], item["error"]
            if "margin" in text:
                assert " GiB free at " in item["error"] and "nothing was streamed" in item["error"]
            assert any(
                line.startswith("failed: LAB-001:app-pg: ") and expected in line
                for line in run.stderr.splitlines()
            )
            assert published(env, "LAB-001", "app-pg") == before
            assert not [p.name for p in folder.iterdir() if p.name.startswith(".tmp-")], "no partial file"
    finally:
        settings.unlink(missing_ok=True)
    # No Python for Ansible's own modules on the server: the cause, not "MODULE FAILURE".
    host_vars = env["inventory"] / "host_vars"
    host_vars.mkdir(exist_ok=True)
    try:
        (host_vars / "lab1.yml").write_text("ansible_python_interpreter: /usr/bin/python3-missing\n")
        run = pulih(env, "backup", "--limit", "lab1", "--item", "app-pg", "--no-verify", "--json", check=1)
        doc = report_of(run)
        cause = "The module interpreter '/usr/bin/python3-missing' was not found"
        assert any(cause in line for line in doc["errors"] + doc["hosts"][0]["errors"]), doc
        assert f"error: lab1: failed: Agent | Directory: {cause}" in run.stderr
        assert "MODULE FAILURE" not in run.stderr and "deserialization" not in run.stderr
        assert published(env, "LAB-001", "app-pg") == before
    finally:
        shutil.rmtree(host_vars)


def test_restore_by_hand_with_plain_tools(env, tmp_path):
    """What the README tells an operator to do without pulih."""
    state = env["state"]
    lab1 = state.host("lab1")
    pg_dir = repository(env) / "LAB-001" / "app-pg" / published(env, "LAB-001", "app-pg")[-1]
    check_sums = (
        'python3 -c \'import json; [print(a["sha256"] + "  " + a["name"]) '
        'for a in json.load(open("manifest.json"))["artifacts"]]\' | sha256sum -c'
    )
    assert (
        "OK"
        in subprocess.run(
            f"set -o pipefail; {check_sums}",
            shell=True,
            executable="/bin/bash",
            cwd=pg_dir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    psql(env, lab1, "CREATE DATABASE by_hand")
    subprocess.run(
        f"set -o pipefail; zstd -dc '{pg_dir}/database.pgdump.zst' | pg_restore --exit-on-error "
        f"--no-owner -h '{state.pg_socket_dir(lab1)}' -p {lab1.pg_port} -U postgres -d by_hand",
        shell=True,
        executable="/bin/bash",
        check=True,
    )
    assert psql(env, lab1, "SELECT count(*) FROM pegawai", "by_hand").strip() == "100"
    my_dir = repository(env) / "LAB-001" / "app-mariadb" / published(env, "LAB-001", "app-mariadb")[-1]
    mariadb(env, lab1, "CREATE DATABASE by_hand")
    subprocess.run(
        f"set -o pipefail; zstd -dc '{my_dir}/database.sql.zst' | mariadb --no-defaults "
        f"--socket='{state.mariadb_socket(lab1)}' -u root by_hand",
        shell=True,
        executable="/bin/bash",
        check=True,
    )
    assert mariadb(env, lab1, "SELECT COUNT(*) FROM by_hand.kunjungan").strip() == "100"
    files_dir = repository(env) / "LAB-001" / "dokumen" / published(env, "LAB-001", "dokumen")[-1]
    subprocess.run(
        f"set -o pipefail; zstd -dc '{files_dir}/files.tar.zst' | tar -x -C '{tmp_path}'",
        shell=True,
        executable="/bin/bash",
        check=True,
    )
    assert sorted(p.name for p in (tmp_path / "2026").iterdir()) == [
        "surat-01.txt",
        "surat-02.txt",
        "surat-03.txt",
    ]


def test_check_mode_changes_nothing(env):
    before = published(env, "LAB-002", "app-pg")
    doc = report_of(pulih(env, "backup", "--check", "--limit", "lab2", "--item", "app-pg", "--json", check=0))
    assert doc["check_mode"] is True
    assert published(env, "LAB-002", "app-pg") == before
    assert not [p for p in (repository(env) / "LAB-002" / "app-pg").iterdir() if p.name.startswith(".tmp")]


def test_verify_in_check_mode_is_skipped_not_verified(env):
    listing = repository(env) / "LAB-002" / "app-pg" / published(env, "LAB-002", "app-pg")[-1]
    before = (listing / "verifications.jsonl").read_text()
    doc = report_of(pulih(env, "verify", "--check", "--limit", "lab2", "--item", "app-pg", "--json", check=0))
    verification = doc["items"][0]["verification"]
    assert verification["status"] == "skipped" and verification["ok"] is False
    assert verification["checks"] == ["checksums"] and "nothing was restored" in verification["error"]
    assert (listing / "verifications.jsonl").read_text() == before, "check mode wrote a verification"


def test_a_verify_host_outside_the_play_is_refused_not_replaced(env):
    """With --limit leaving the verify host out, the test restore must not quietly run on the
    source server while the record names the verify host."""
    run = ansible_playbook(
        env["inventory"],
        "verify.yml",
        "--limit",
        "lab1",
        "-e",
        "pulih_verify_host=lab2",
        "-e",
        '{"pulih_verify_items": ["app-pg"]}',
    )
    assert run.returncode != 0
    assert "pulih_verify_host 'lab2' is not in this play" in run.stdout
    pg_logs = {name: Path(env["state"].root) / "hosts" / name / "postgresql.log" for name in ("lab1", "lab2")}
    seen = {name: log.read_text().count("database=pulih_verify_") for name, log in pg_logs.items()}
    both = ansible_playbook(
        env["inventory"],
        "verify.yml",
        "--limit",
        "lab1,lab2",
        "-e",
        "pulih_verify_host=lab2",
        "-e",
        '{"pulih_verify_items": ["app-pg"]}',
    )
    assert both.returncode == 0, both.stdout[-3000:]
    line = (
        repository(env)
        / "LAB-001"
        / "app-pg"
        / published(env, "LAB-001", "app-pg")[-1]
        / "verifications.jsonl"
    )
    last = json.loads(line.read_text().splitlines()[-1])
    assert last["ok"] and last["verified_on"] == "lab2"
    now = {name: log.read_text().count("database=pulih_verify_") for name, log in pg_logs.items()}
    assert now["lab2"] > seen["lab2"], "the test restore did not run on the verify host"
    assert now["lab1"] == seen["lab1"], "the test restore ran on the source server"
    # The verify host fetched LAB-001's backup under a grant of this job, taken back at its end.
    grants = repository(env) / ".grants"
    assert grants.is_dir() and list(grants.iterdir()) == [], "a grant outlived its verification"


def test_retention_keeps_the_newest_and_check_mode_only_tells(env):
    settings = env["inventory"] / "group_vars" / "all" / "retention.yml"
    settings.write_text(
        "pulih_backup_retention_keep_last: 2\npulih_backup_retention_keep_daily: 0\n"
        "pulih_backup_retention_keep_weekly: 0\npulih_backup_retention_keep_monthly: 0\n"
    )
    try:
        for _ in range(2):
            pulih(env, "backup", "--limit", "lab2", "--item", "dokumen", "--no-verify", check=0)
        kept = published(env, "LAB-002", "dokumen")
        # 1 verified from the first test + 2 newest unverified: the newest verified survives.
        assert len(kept) == 3
        first_verified = kept[0]
        checked = report_of(
            pulih(
                env,
                "backup",
                "--limit",
                "lab2",
                "--item",
                "dokumen",
                "--no-verify",
                "--check",
                "--json",
                check=0,
            )
        )
        assert checked["items"][0]["pruned"], "check mode says what would be pruned"
        assert published(env, "LAB-002", "dokumen") == kept, "and prunes nothing"
        pulih(env, "backup", "--limit", "lab2", "--item", "dokumen", "--no-verify", check=0)
        after = published(env, "LAB-002", "dokumen")
        assert len(after) == 3
        assert first_verified in after
    finally:
        settings.unlink()


def test_tricky_names_are_backed_up_and_verified_without_injection(env):
    _, items = make_tricky_data(env["state"], env["state"].host("lab1"))
    add_items(env, "LAB-001", items)
    doc = report_of(
        pulih(
            env,
            "backup",
            "--limit",
            "lab1",
            "--item",
            "tricky-pg",
            "--item",
            "tricky-mariadb",
            "--item",
            "tricky-files",
            "--json",
            check=0,
        )
    )
    assert all(i["ok"] and i["verification"]["ok"] for i in doc["items"]), doc["items"]
    counts = {i["item"]: i for i in doc["items"]}
    pg_manifest = json.loads(
        (
            repository(env) / "LAB-001" / "tricky-pg" / counts["tricky-pg"]["backup_id"] / "manifest.json"
        ).read_text()
    )
    assert pg_manifest["row_counts"] == {f"public.{TRICKY_TABLE}": 42}
    assert pg_manifest["source"]["database"] == TRICKY_DB
    my_manifest = json.loads(
        (
            repository(env)
            / "LAB-001"
            / "tricky-mariadb"
            / counts["tricky-mariadb"]["backup_id"]
            / "manifest.json"
        ).read_text()
    )
    assert my_manifest["row_counts"] == {TRICKY_TABLE: 17}, "the view is no table"
    file_list = (
        repository(env) / "LAB-001" / "tricky-files" / counts["tricky-files"]["backup_id"] / "files.jsonl"
    ).read_text(encoding="utf-8")
    assert "berkas 'a' \\\"b\\\" $x.txt" in file_list
    assert not PWNED.exists(), "a name was run as a command"


def test_encrypted_backup_needs_the_key_only_to_verify(env, tmp_path):
    key = tmp_path / "age.key"
    subprocess.run(["age-keygen", "-o", str(key)], capture_output=True, check=True)
    recipient = next(line.split(": ")[1] for line in key.read_text().splitlines() if "public key" in line)
    env["secret_key"] = next(
        line for line in key.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-")
    )
    doc = report_of(
        pulih(
            env,
            "backup",
            "--limit",
            "lab2",
            "--item",
            "app-pg",
            "--item",
            "dokumen",
            "--no-verify",
            "--age-recipient",
            recipient,
            "--json",
            check=0,
        )
    )
    ids = {i["item"]: i["backup_id"] for i in doc["items"]}
    folder = repository(env) / "LAB-002" / "app-pg" / ids["app-pg"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["encryption"] == {"algorithm": "age", "recipients": [recipient]}
    data = folder / "database.pgdump.zst.age"
    assert data.read_bytes().startswith(b"age-encryption.org/v1")
    assert subprocess.run(["zstd", "-t", str(data)], capture_output=True, check=False).returncode != 0, (
        "the repository host cannot read it"
    )
    without = report_of(pulih(env, "verify", "--backup", ids["app-pg"], "--json", check=1))
    assert "is encrypted: give the age identity" in without["items"][0]["error"]
    # A caller never sends the key: the service holds it, named in its config.
    refused = pulih(env, "verify", "--backup", ids["app-pg"], "--identity", str(key), check=2)
    assert "No such option: --identity" in refused.stderr
    service = env["service"]
    held = service.state / "age.key"
    held.write_text(key.read_text())
    held.chmod(0o600)
    with (service.state / "config.yml").open("a") as config:
        config.write(f"age_identity: {held}\n")
    service.stop()
    service.start()
    with_key = report_of(
        pulih(env, "verify", "--backup", ids["app-pg"], "--backup", ids["dokumen"], "--json", check=0)
    )
    assert all(i["ok"] for i in with_key["items"]) and len(with_key["items"]) == 2


def test_one_flipped_byte_fails_exactly_that_backup(env):
    first = published(env, "LAB-001", "app-pg")[-1]
    second = published(env, "LAB-002", "app-pg")[0]  # the first, unencrypted backup
    artifact = repository(env) / "LAB-001" / "app-pg" / first / "database.pgdump.zst"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    doc = report_of(pulih(env, "verify", "--backup", first, "--backup", second, "--json", check=1))
    results = {i["backup_id"]: i for i in doc["items"]}
    assert results[first]["ok"] is False
    assert "checksum mismatch: database.pgdump.zst" in results[first]["error"]
    assert results[second]["ok"] is True
    assert doc["status"] == "failed"


def ssh_as(env, key, host, user, *words, stdin=b""):
    """ssh with one key to a lab host, asking for `words`; its exit code and output."""
    state = env["state"]
    return subprocess.run(
        [
            "ssh",
            "-T",  # no terminal asked for: the receiver is no shell
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ControlPath=none",
            "-o",
            f"UserKnownHostsFile={state.known_hosts}",
            "-i",
            str(key),
            "-p",
            str(host.ssh_port),
            "-l",
            user,
            "--",
            host.address,
            *words,
        ],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_a_data_servers_key_runs_the_receiver_for_its_own_asset_only(env):
    """Each data server pushes with its own key, which the repository accepts for the receiver
    and its own asset only; no key the repository could hold opens a data server."""
    state = env["state"]
    lab1, lab2, repo = state.host("lab1"), state.host("lab2"), state.host("labrepo")
    for host in ("lab1", "lab2"):
        if not published(env, state.asset_id(state.host(host)), "app-pg"):
            pulih(env, "backup", "--limit", host, "--item", "app-pg", "--no-verify", check=0)
    key = state.receiver_key(lab1)
    mine, theirs = published(env, "LAB-001", "app-pg")[-1], published(env, "LAB-002", "app-pg")[-1]

    def receiver(*words, stdin=b""):
        return ssh_as(env, key, repo, lab_mod.RECEIVER_ACCOUNT, *words, stdin=stdin)

    for words in (["/bin/sh", "-c", "id"], ["cat", "/etc/shadow"], ["list", "app-pg;", "id"], []):
        run = receiver(*words)
        assert run.returncode == 2 and run.stderr.startswith(b"pulih receiver: "), (words, run.stderr)
    listed = json.loads(receiver("list", "app-pg").stdout)["backups"]
    assert {b["asset_id"] for b in listed} == {"LAB-001"} and mine in {b["backup_id"] for b in listed}
    assert receiver("fetch", "app-pg", theirs, "manifest.json").returncode == 3, "another server's backup"
    assert receiver("fetch-granted", "no-such-grant-0001", "manifest.json").returncode == 3
    folder = repository(env) / "LAB-001" / "app-pg" / mine
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert receiver("store", "app-pg", mine, "database.pgdump.zst", stdin=b"forged").returncode == 3
    assert receiver("abort", "app-pg", mine).returncode == 3
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before, "a published backup changed"
    fetched = receiver("fetch", "app-pg", mine, "database.pgdump.zst")
    assert fetched.returncode == 0 and fetched.stdout == before["database.pgdump.zst"]
    # The data servers take the controller's key only: not a server's key, and the receiver's
    # account is no login on them.
    for host in (lab1, lab2):
        for who in (state.receiver_key(lab1), state.receiver_key(lab2)):
            assert ssh_as(env, who, host, state.user, "true").returncode == 255
        assert ssh_as(env, state.private_key, host, lab_mod.RECEIVER_ACCOUNT, "true").returncode == 255
    assert ssh_as(env, key, repo, state.user, "true").returncode == 255, (
        "a server's key logs in on the repository"
    )
    # The receiver's account holds no private key: none in its home, and of the lab's files it
    # owns only the repository's.
    account = pwd.getpwnam(lab_mod.RECEIVER_ACCOUNT)
    assert not list((Path(account.pw_dir) / ".ssh").glob("id_*"))
    owned = [p for p in Path(state.root).rglob("*") if p.is_file() and p.stat().st_uid == account.pw_uid]
    assert owned and all(repository(env) in p.parents for p in owned), owned
    assert not [p for p in owned if p.read_bytes()[:40].startswith(b"-----BEGIN OPENSSH PRIVATE KEY")]


TAMPER = """import subprocess, sys
receiver = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE)
flipped = False
while chunk := sys.stdin.buffer.read(1 << 16):
    if not flipped and len(chunk) > 100:
        chunk, flipped = chunk[:100] + bytes([chunk[100] ^ 1]) + chunk[101:], True
    receiver.stdin.write(chunk)
receiver.stdin.close()
sys.exit(receiver.wait())
"""


def test_a_repository_that_stores_other_bytes_than_the_agent_sent_publishes_nothing(env):
    """Between the agent and the disk one byte changes (a tampered receiver, a bad link): the
    receiver's hash of what it stored differs from the agent's, the item fails, and nothing of
    it is published or left behind."""
    state = env["state"]
    lab1 = state.host("lab1")
    tamper = Path(state.root) / "receiver" / "tamper.py"
    tamper.write_text(TAMPER)
    honest = state.receiver_keys.read_text()
    line = state.receiver_line(lab1)
    command = line.split('"')[1]
    state.receiver_keys.write_text(
        honest.replace(line, state.receiver_line(lab1, f"/usr/bin/python3 {tamper} {command}"))
    )
    before = published(env, "LAB-001", "app-mariadb")
    try:
        run = pulih(
            env, "backup", "--limit", "lab1", "--item", "app-mariadb", "--no-verify", "--json", check=1
        )
    finally:
        state.receiver_keys.write_text(honest)
    (item,) = report_of(run)["items"]
    assert item["ok"] is False
    assert "the repository stored" in item["error"] and "nothing was published" in item["error"], item[
        "error"
    ]
    assert published(env, "LAB-001", "app-mariadb") == before
    folder = repository(env) / "LAB-001" / "app-mariadb"
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".tmp-")], "the tampered copy stays"
    doc = report_of(
        pulih(env, "backup", "--limit", "lab1", "--item", "app-mariadb", "--no-verify", "--json", check=0)
    )
    assert doc["items"][0]["ok"], "the honest receiver takes the next backup"


def test_sigkill_in_the_middle_of_a_dump_leaves_nothing_listed(env):
    state = env["state"]
    lab1 = state.host("lab1")
    psql(
        env,
        lab1,
        "CREATE TABLE besar AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS isi "
        "FROM generate_series(1, 1500000) g",
        "app_lab1",
    )
    add_items(
        env,
        "LAB-001",
        [
            {
                "name": "big-pg",
                "engine": "postgresql",
                "database": "app_lab1",
                "host": lab1.address,
                "port": lab1.pg_port,
                "user": lab_mod.DB_USER,
                "password_var": lab_mod.PASSWORD_VAR,
            }
        ],
    )
    folder = repository(env) / "LAB-001" / "big-pg"
    runs_before = {r["run_id"] for r in json.loads(pulih(env, "runs", "list", "--json", check=0).stdout)}
    run = subprocess.Popen(
        ["pulih", "backup", "--limit", "lab1", "--item", "big-pg", "--no-verify"],
        env=env["environ"],
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    partial = None
    while time.monotonic() < deadline and partial is None:
        for candidate in folder.glob(".tmp-*/database.pgdump.zst") if folder.exists() else []:
            if candidate.stat().st_size > 1 << 20:
                partial = candidate
        time.sleep(0.02)
    assert partial is not None, "the dump never got going"
    service = env["service"]
    for pid in [service.proc.pid, *descendants(service.proc.pid)]:  # a power cut: all at once
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    service.proc.wait()
    run.wait(timeout=60)
    assert published(env, "LAB-001", "big-pg") == [], "a half-written backup is listed"
    service.start()
    # The run is on the record as it was left, and the restarted service says it was cut short.
    runs = json.loads(pulih(env, "runs", "list", "--json", check=0).stdout)
    new = [r for r in runs if r["run_id"] not in runs_before]
    assert [(r["kind"], r["status"]) for r in new] == [("backup", "interrupted")]
    # Nothing of the run keeps writing: the repository side notices its controller is gone,
    # stops the stream and removes what it had written.
    assert_stops_writing(folder, removed=True)
    listed = json.loads(pulih(env, "backups", "list", "--item", "big-pg", "--json", check=0).stdout)[
        "backups"
    ]
    assert listed == []
    doc = report_of(pulih(env, "backup", "--limit", "lab1", "--item", "big-pg", "--json", check=0))
    assert doc["items"][0]["ok"] and doc["items"][0]["verification"]["ok"]
    assert len(published(env, "LAB-001", "big-pg")) == 1


def partial_files(folder):
    return [p for p in folder.glob(".tmp-*/*") if p.is_file()]


def locked(path):
    """Whether a writer holds the lock the receiver takes on an artifact it stores."""
    with path.open("rb") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def assert_stops_writing(folder, *, removed, seconds=60):
    """Within `seconds`, nothing writes into the folder's unfinished backups any more: no
    artifact locked by a writer, no size changing (and, with `removed`, none left at all)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        before = {p: p.stat().st_size for p in partial_files(folder)}
        if not before:
            return
        time.sleep(2)
        after = {p: p.stat().st_size for p in partial_files(folder)}
        if not removed and before == after and not any(locked(p) for p in after):
            return
    pytest.fail(f"still written {seconds}s after the controller stopped: {partial_files(folder)}")


def assert_published_complete(env, asset, item, before):
    """An interrupted run publishes nothing half-written: a backup that made it into the
    listing (the stream finished before the signal landed) is whole, every artifact matching
    its manifest's SHA-256."""
    for backup_id in sorted(set(published(env, asset, item)) - set(before)):
        folder = repository(env) / asset / item / backup_id
        doc = json.loads((folder / "manifest.json").read_text())
        jsonschema.validate(doc, schema("manifest.schema.json"))
        for artifact in doc["artifacts"]:
            digest = hashlib.sha256((folder / artifact["name"]).read_bytes()).hexdigest()
            assert digest == artifact["sha256"], f"{backup_id}/{artifact['name']} is not whole"


def _ctrl_c_reaches_it() -> None:
    # A shell's background job (`cmd &`, as a CI harness may start the suite) ignores SIGINT,
    # and an ignored signal stays ignored across exec: Python then never raises
    # KeyboardInterrupt, and a Ctrl-C test sees its run go on to the end.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_big_backup(env):
    """`pulih backup --json` of the 1.5-million-row item, in a session of its own, that takes
    Ctrl-C as a terminal's foreground command does."""
    return subprocess.Popen(
        ["pulih", "backup", "--limit", "lab1", "--item", "big-pg", "--no-verify", "--json"],
        env=env["environ"],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_ctrl_c_reaches_it,  # one call of signal(): safe before exec
    )


def test_sigterm_writes_an_interrupted_report_and_nothing_keeps_writing(env):
    """What systemd, cron or timeout(1) send: to pulih's own process only."""
    folder = repository(env) / "LAB-001" / "big-pg"
    before = published(env, "LAB-001", "big-pg")
    run = start_big_backup(env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not [
        p for p in folder.glob(".tmp-*/*.zst") if p.stat().st_size > 1 << 20
    ]:
        time.sleep(0.02)
    run.send_signal(signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    doc = json.loads(stdout)
    jsonschema.validate(doc, schema("run_report.schema.json"))
    assert doc["status"] == "interrupted" and any("SIGTERM" in e for e in doc["errors"])
    assert "Traceback" not in stderr
    assert_stops_writing(folder, removed=False)
    assert_published_complete(env, "LAB-001", "big-pg", before)


@contextlib.contextmanager
def table_locked(env, host, table, database):
    """A session holding an ACCESS EXCLUSIVE lock on `table` until the block ends: a dump of
    it waits, so a run can be stopped while it is surely still running (on a busy machine the
    whole dump can otherwise finish between one look at the repository and the signal)."""
    state = env["state"]
    where = ["-h", state.pg_socket_dir(host), "-p", str(host.pg_port), "-U", "postgres", "-d", database]
    holder = subprocess.Popen(
        ["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", *where],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        holder.stdin.write(f"BEGIN;\nLOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;\nSELECT 'locked';\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.stdin.close()  # psql ends, its transaction with it: the lock goes
        try:
            holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            holder.kill()  # by PID
            holder.wait()


def test_ctrl_c_writes_an_interrupted_report_and_lists_nothing(env):
    lab1 = env["state"].host("lab1")
    folder = repository(env) / "LAB-001" / "big-pg"
    before = published(env, "LAB-001", "big-pg")
    with table_locked(env, lab1, "besar", "app_lab1"):
        since = psql(env, lab1, "SELECT clock_timestamp()").strip()  # this run's dump, not an earlier test's
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app_lab1' AND wait_event_type = 'Lock' "
            f"AND backend_start > '{since}'"
        )
        run = start_big_backup(env)
        wait_until("the backup waiting on the lock", lambda: psql(env, lab1, waiting).strip() != "0", 180)
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
        stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    doc = json.loads(stdout)
    jsonschema.validate(doc, schema("run_report.schema.json"))
    assert doc["status"] == "interrupted"
    assert (Path(env["environ"]["PULIH_STATE_DIR"]) / "runs" / doc["run_id"] / "report.html").exists()
    assert_stops_writing(folder, removed=False)  # the lock is gone: a dump left running would write now
    assert published(env, "LAB-001", "big-pg") == before, "nothing of the stopped run is listed"


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a small filesystem needs root"
)
def test_a_full_repository_fails_the_item_and_lists_nothing_corrupt(env):
    mount = repository(env) / "LAB-001" / "big-pg"
    shutil.rmtree(mount)
    mount.mkdir()
    # The item's folder is a small filesystem of its own from now on, the receiver's like the rest.
    account = pwd.getpwnam(lab_mod.RECEIVER_ACCOUNT)
    options = f"size=512k,mode=0750,uid={account.pw_uid},gid={account.pw_gid}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True)
    try:
        doc = report_of(
            pulih(env, "backup", "--limit", "lab1", "--item", "big-pg", "--item", "app-pg", "--json", check=1)
        )
        results = {i["item"]: i for i in doc["items"]}
        assert results["big-pg"]["ok"] is False
        assert "repository filesystem is full" in results["big-pg"]["error"]
        assert results["app-pg"]["ok"] is True, "the other item completes"
        assert [p.name for p in mount.iterdir()] == [], "nothing left on the full filesystem"
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_database_server_down_fails_that_item_only(env):
    state = env["state"]
    mariadbd = next(p for p in state.procs if p.name == "lab2/mariadb")
    assert lab_mod.stop_pid(mariadbd.pid, "mariadbd")
    run = pulih(env, "backup", "--json", "--limit", "lab2", check=1)
    doc = report_of(run)
    results = {i["item"]: i for i in doc["items"]}
    assert results["app-mariadb"]["ok"] is False
    # The terminal says which item failed and why, in one line, not only where the report is.
    failed = [line for line in run.stderr.splitlines() if line.startswith("failed: LAB-002:app-mariadb: ")]
    assert len(failed) == 1 and "cannot connect to MariaDB" in failed[0] and "\r" not in failed[0]
    assert "cannot connect to MariaDB" in results["app-mariadb"]["error"]
    assert results["app-pg"]["ok"] and results["dokumen"]["ok"]
    assert results["app-pg"]["verification"]["ok"]
    assert doc["status"] == "failed"
    assert (
        "app-mariadb"
        in (Path(env["environ"]["PULIH_STATE_DIR"]) / "runs" / doc["run_id"] / "report.html").read_text()
    )


def test_the_database_password_never_leaks(env):
    """The lab's random password and the age private key are the canaries: in no report,
    ansible-runner artifact or output."""
    password = env["state"].db_password
    state_dir = Path(env["environ"]["PULIH_STATE_DIR"])
    leaks = [
        str(p) for p in state_dir.rglob("*") if p.is_file() and password in p.read_text(errors="replace")
    ]
    assert leaks == []
    assert not any(password in output for output in env["outputs"])
    assert len(list(state_dir.rglob("job_events/*.json"))) > 100, "the artifacts were there to be searched"


def test_no_task_runs_on_the_repository_host_and_secrets_go_only_to_the_data_servers(env):
    """Every backup and verification of this module's runs: no task ran on the repository host
    (every one that concerns it asks the receiver from the controller or a data server), no
    task's arguments hold the database password or an age identity in clear, and the tasks that
    were given a secret ran on the data servers."""
    tasks = tasks_of(env)
    assert tasks.seen > 50, "no run's artifacts were found: nothing was checked"
    assert tasks.on_repository == [], tasks.on_repository
    assert tasks.leaked == [], tasks.leaked
    assert {"pulih.core.agent_push", "pulih.core.agent_pull"} <= tasks.with_secret, tasks.with_secret
    assert tasks.with_secret <= {"pulih.core.agent_push", "pulih.core.agent_pull"}, tasks.with_secret
    assert {"list", "publish", "abort", "verification"} <= tasks.receiver_verbs, tasks.receiver_verbs

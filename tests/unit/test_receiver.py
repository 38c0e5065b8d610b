"""The repository host's receiver, run as sshd runs a forced command (SSH_ORIGINAL_COMMAND):
a data server's key stores, publishes, lists and fetches its own asset's backups and nothing
else; another asset's backup only under the controller's unexpired grant; a published backup is
never written again, and a manifest whose hashes are not what the receiver stored publishes
nothing. (tests/integration/test_receiver_ssh.py runs it behind a real sshd.)"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PROJECT

RECEIVER = PROJECT / "roles" / "pulih_common" / "files" / "pulih_receiver.py"
BACKUP = "20261201T080000Z-1a2b"
DATA = os.urandom(3 << 20) + b"tail"


def receive(
    repo: Path, command: str, *, asset: str | None = "DC-1", stdin: bytes = b"", check: int | None = 0
):
    whose = ["--asset", asset] if asset else ["--controller"]
    run = subprocess.run(
        [sys.executable, str(RECEIVER), "--repository", str(repo), *whose],
        input=stdin,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "SSH_ORIGINAL_COMMAND": command},
        timeout=60,
        check=False,
    )
    assert b"Traceback" not in run.stderr, run.stderr.decode()
    if check is not None:
        assert run.returncode == check, run.stderr.decode()
    return run


def answer(run) -> dict:
    return json.loads(run.stdout)


def manifest(asset="DC-1", item="simpeg", backup=BACKUP, artifacts=None) -> bytes:
    artifacts = artifacts or [
        {"name": "database.pgdump.zst", "sha256": hashlib.sha256(DATA).hexdigest(), "size": len(DATA)}
    ]
    doc = {
        "format": "pulih.backup/1",
        "backup_id": backup,
        "asset_id": asset,
        "item": item,
        "artifacts": artifacts,
    }
    return json.dumps(doc).encode()


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    return root


def published(repo: Path, backup: str = BACKUP, asset: str = "DC-1", item: str = "simpeg") -> Path:
    stored = answer(receive(repo, f"store {item} {backup} database.pgdump.zst", asset=asset, stdin=DATA))
    assert stored == {
        "artifact": "database.pgdump.zst",
        "sha256": hashlib.sha256(DATA).hexdigest(),
        "size": len(DATA),
    }
    done = answer(receive(repo, f"publish {item} {backup}", asset=asset, stdin=manifest(asset, item, backup)))
    assert done["published"] == backup
    return repo / asset / item / backup


def test_a_backup_stored_published_listed_and_fetched_is_the_same_bytes(repo):
    path = published(repo)
    assert (path / "database.pgdump.zst").read_bytes() == DATA
    assert not (repo / "DC-1" / "simpeg" / f".tmp-{BACKUP}").exists()
    listed = answer(receive(repo, "list simpeg"))["backups"]
    assert [b["backup_id"] for b in listed] == [BACKUP] and listed[0]["manifest"]["asset_id"] == "DC-1"
    assert receive(repo, f"fetch simpeg {BACKUP} database.pgdump.zst").stdout == DATA
    assert json.loads(receive(repo, f"fetch simpeg {BACKUP} manifest.json").stdout)["backup_id"] == BACKUP


def test_a_manifest_that_disagrees_with_what_was_stored_publishes_nothing(repo):
    receive(repo, f"store simpeg {BACKUP} database.pgdump.zst", stdin=DATA)
    forged = [{"name": "database.pgdump.zst", "sha256": "0" * 64, "size": len(DATA)}]
    run = receive(repo, f"publish simpeg {BACKUP}", stdin=manifest(artifacts=forged), check=3)
    assert b"the receiver stored" in run.stderr and b"not published" in run.stderr
    other = receive(repo, f"publish simpeg {BACKUP}", stdin=manifest(asset="DC-2"), check=3)
    assert b"asset_id is 'DC-2'" in other.stderr
    missing = [
        *json.loads(manifest())["artifacts"],
        {"name": "globals.sql.zst", "sha256": "1" * 64, "size": 1},
    ]
    run = receive(repo, f"publish simpeg {BACKUP}", stdin=manifest(artifacts=missing), check=3)
    assert b"did not store" in run.stderr
    assert answer(receive(repo, "list simpeg"))["backups"] == []
    receive(repo, f"abort simpeg {BACKUP}")
    assert list((repo / "DC-1" / "simpeg").iterdir()) == []


def test_a_published_backup_is_never_written_again_and_nothing_deletes_it(repo):
    path = published(repo)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    run = receive(repo, f"store simpeg {BACKUP} globals.sql.zst", stdin=b"x", check=3)
    assert b"is published: it is never written again" in run.stderr
    assert receive(repo, f"publish simpeg {BACKUP}", stdin=manifest(), check=3).returncode == 3
    assert receive(repo, f"abort simpeg {BACKUP}", check=3).returncode == 3
    for verb in ("delete", "rm", "prune", "rename", "verification", "grant"):
        run = receive(repo, f"{verb} simpeg {BACKUP}", check=2)
        assert b"is not a command a data server's key may run" in run.stderr
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    # An artifact is stored once: a second store of it in an unpublished backup is refused too.
    receive(repo, "store simpeg 20261201T090000Z-0000 files.jsonl", stdin=b"{}\n")
    run = receive(repo, "store simpeg 20261201T090000Z-0000 files.jsonl", stdin=b"other", check=3)
    assert b"was stored already" in run.stderr


@pytest.mark.parametrize(
    "command",
    [
        "",
        "sh -c id",
        "store ../DC-2 " + BACKUP + " database.pgdump.zst",
        "store simpeg ../" + BACKUP + " database.pgdump.zst",
        "store simpeg " + BACKUP + " ../../etc/passwd",
        "fetch simpeg " + BACKUP + " .stored.json",
        "list",
        "list simpeg extra",
        "store simpeg " + BACKUP + " database.pgdump.zst lots",
    ],
)
def test_anything_but_the_receivers_own_commands_is_refused(repo, command):
    run = receive(repo, command, stdin=b"x", check=2)
    assert run.stderr.startswith(b"pulih receiver: ") and run.stdout == b""
    assert list(repo.iterdir()) == []


def test_another_assets_backup_is_served_only_under_an_unexpired_grant_for_this_asset(repo):
    published(repo)
    # DC-2's key names only its own asset: DC-1's backup is not there for it.
    assert receive(repo, f"fetch simpeg {BACKUP} database.pgdump.zst", asset="DC-2", check=3).returncode == 3
    assert (
        receive(repo, "fetch-granted job-0001abcd database.pgdump.zst", asset="DC-2", check=3).returncode == 3
    )
    # A data server's key cannot grant itself anything.
    run = receive(repo, f"grant job-0001abcd DC-2 DC-1 simpeg {BACKUP} 600", asset="DC-2", check=2)
    assert b"not a command a data server's key may run" in run.stderr
    grant = answer(receive(repo, f"grant job-0001abcd DC-2 DC-1 simpeg {BACKUP} 600", asset=None))
    assert grant["grantee"] == "DC-2" and grant["backup_id"] == BACKUP
    fetched = receive(repo, "fetch-granted job-0001abcd database.pgdump.zst", asset="DC-2")
    assert fetched.stdout == DATA
    # Not a grant for DC-3; not once it is taken back; not once it has expired.
    run = receive(repo, "fetch-granted job-0001abcd database.pgdump.zst", asset="DC-3", check=3)
    assert b"is not this server's" in run.stderr
    receive(repo, "revoke-grant job-0001abcd", asset=None)
    run = receive(repo, "fetch-granted job-0001abcd database.pgdump.zst", asset="DC-2", check=3)
    assert b"there is no grant" in run.stderr
    receive(repo, f"grant job-0002abcd DC-2 DC-1 simpeg {BACKUP} 1", asset=None)
    time.sleep(1.5)
    run = receive(repo, "fetch-granted job-0002abcd database.pgdump.zst", asset="DC-2", check=3)
    assert b"expired at" in run.stderr
    # A grant names a published backup only.
    run = receive(repo, "grant job-0003abcd DC-2 DC-1 simpeg 20261201T000000Z-ffff 60", asset=None, check=3)
    assert b"does not exist" in run.stderr


def test_the_controller_lists_every_asset_and_records_verifications(repo):
    published(repo)
    published(repo, asset="DC-2", item="simpus")
    everything = answer(receive(repo, "list", asset=None))["backups"]
    assert [(b["asset_id"], b["item"]) for b in everything] == [("DC-1", "simpeg"), ("DC-2", "simpus")]
    assert len(answer(receive(repo, "list DC-2", asset=None))["backups"]) == 1
    receive(repo, f"verification DC-1 simpeg {BACKUP}", asset=None, stdin=b'{"ok": true, "at": "now"}')
    lines = (repo / "DC-1" / "simpeg" / BACKUP / "verifications.jsonl").read_text().splitlines()
    assert [json.loads(line)["ok"] for line in lines] == [True]
    run = receive(repo, f"verification DC-1 simpeg {BACKUP}", asset=None, stdin=b"[1]", check=2)
    assert b"not a JSON object" in run.stderr
    listed = answer(receive(repo, "list DC-1 simpeg", asset=None))["backups"]
    assert listed[0]["verified"] and listed[0]["last_verification"] == {"ok": True, "at": "now"}
    assert not answer(receive(repo, "list DC-2", asset=None))["backups"][0]["verified"]


def test_the_controller_recomputes_a_backups_checksums_as_the_repository_holds_it(repo):
    path = published(repo)
    sums = answer(receive(repo, f"checksums DC-1 simpeg {BACKUP}", asset=None))["artifacts"]
    assert sums == {"database.pgdump.zst": {"sha256": hashlib.sha256(DATA).hexdigest(), "size": len(DATA)}}
    flipped = bytearray(DATA)
    flipped[100] ^= 1
    (path / "database.pgdump.zst").write_bytes(bytes(flipped))
    again = answer(receive(repo, f"checksums DC-1 simpeg {BACKUP}", asset=None))["artifacts"]
    assert again["database.pgdump.zst"]["sha256"] == hashlib.sha256(bytes(flipped)).hexdigest()
    run = receive(repo, f"checksums DC-1 simpeg {BACKUP}", check=2)
    assert b"not a command a data server's key may run" in run.stderr


def test_a_protected_backup_is_never_pruned_and_an_unverified_one_is_protected_only_when_allowed(repo):
    path = published(repo)
    plan = json.dumps({"backups": [{"asset_id": "DC-1", "item": "simpeg", "backup_id": BACKUP}]}).encode()
    run = receive(repo, "protect PPD-2026-0001", asset=None, stdin=plan, check=3)
    assert b"not verified" in run.stderr and not (repo / ".pulih-protected.json").exists()
    gone = json.dumps(
        {"backups": [{"asset_id": "DC-1", "item": "simpeg", "backup_id": "20261201T090000Z-0000"}]}
    )
    run = receive(repo, "protect PPD-2026-0001", asset=None, stdin=gone.encode(), check=3)
    assert b"not in the repository: DC-1:simpeg=20261201T090000Z-0000" in run.stderr
    done = answer(receive(repo, "protect PPD-2026-0001 allow-unverified", asset=None, stdin=plan))
    assert [e["request_id"] for e in done["protected"]] == ["PPD-2026-0001"]
    assert answer(receive(repo, "list simpeg"))["protected"][0]["backup_id"] == BACKUP
    run = receive(repo, f"prune DC-1 simpeg {BACKUP}", asset=None, check=3)
    assert b"is protected by PPD-2026-0001: not pruned" in run.stderr and path.is_dir()
    assert (
        b"not a command a data server's key may run"
        in receive(repo, f"prune DC-1 simpeg {BACKUP}", check=2).stderr
    )
    assert answer(receive(repo, "unprotect PPD-2026-0001", asset=None))["lifted"] == 1
    assert answer(receive(repo, f"prune DC-1 simpeg {BACKUP}", asset=None)) == {"pruned": BACKUP}
    assert not path.exists() and list((repo / "DC-1" / "simpeg").iterdir()) == []
    assert receive(repo, f"prune DC-1 simpeg {BACKUP}", asset=None, check=3).returncode == 3


def test_a_protected_list_that_cannot_be_read_prunes_nothing(repo):
    path = published(repo)
    (repo / ".pulih-protected.json").write_text("{not json")
    run = receive(repo, f"prune DC-1 simpeg {BACKUP}", asset=None, check=1)
    assert b"is not JSON: repair it first" in run.stderr and path.is_dir()


def test_a_repository_without_room_stores_nothing(repo):
    run = receive(repo, f"store simpeg {BACKUP} database.pgdump.zst {1 << 62}", stdin=DATA, check=1)
    assert b"not enough room in the repository: " in run.stderr
    assert b"nothing was streamed" in run.stderr
    assert list(repo.iterdir()) == []


def test_a_new_backup_sweeps_away_dead_runs_but_never_a_live_store(repo):
    """An unpublished backup nobody stored into for --stale-hours is a dead run's: the next backup of
    the item removes it. One whose store still holds its lock stays, however old."""
    receive(repo, f"store simpeg {BACKUP} database.pgdump.zst", stdin=DATA)
    item_dir = repo / "DC-1" / "simpeg"
    dead, live = item_dir / ".tmp-20261130T010000Z-dead", item_dir / ".tmp-20261130T020000Z-0a1b"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "database.pgdump.zst").write_bytes(b"partial")
        day_ago = time.time() - 25 * 3600
        os.utime(folder / "database.pgdump.zst", (day_ago, day_ago))
        os.utime(folder, (day_ago, day_ago))
    with (live / "database.pgdump.zst").open("rb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        receive(repo, "store simpeg 20261201T090000Z-0c0d database.pgdump.zst", stdin=DATA)
    assert not dead.exists(), "a dead run's leftovers stay"
    assert live.exists(), "a store still running was swept away"
    assert (item_dir / f".tmp-{BACKUP}").exists(), "a recent unpublished backup was swept away"


def test_the_anchor_log_only_grows_and_only_the_controller_writes_it(repo):
    """The controller appends the audit chain's heads, each after the last; a head at or
    before the last is refused, a data server's key may neither read nor write the log, and
    it reads back as written, after a line saying it exists."""

    def head(seq: int) -> bytes:
        return json.dumps({"format": "pulih.anchor/1", "seq": seq, "hash": f"{seq:064x}", "at": "t"}).encode()

    first = receive(repo, "anchor-read", asset=None)
    assert json.loads(first.stdout.splitlines()[0]) == {"exists": False}
    for seq in (3, 4, 9):
        assert answer(receive(repo, "anchor-append", asset=None, stdin=head(seq))) == {"anchored": seq}
    for seq in (9, 2):  # a rewritten or truncated history never lands
        refused = receive(repo, "anchor-append", asset=None, stdin=head(seq), check=3)
        assert b"the anchor only grows" in refused.stderr
    bad = receive(repo, "anchor-append", asset=None, stdin=b'{"format": "x", "seq": 10}', check=2)
    assert b"pulih.anchor/1" in bad.stderr
    for verb in ("anchor-append", "anchor-read"):
        receive(repo, verb, stdin=head(20), check=2)  # a data server's key
    lines = receive(repo, "anchor-read", asset=None).stdout.decode().splitlines()
    assert json.loads(lines[0]) == {"exists": True}
    assert [json.loads(line)["seq"] for line in lines[1:]] == [3, 4, 9]
    assert [p.name for p in repo.iterdir()] == [".pulih-anchor.jsonl"]
    assert answer(receive(repo, "list", asset=None))["backups"] == []

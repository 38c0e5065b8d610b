"""The files engine, run as on a server: a tree with every kind of entry goes out as an archive
with its file list and comes back identical (test restore, then stage, swap and discard in
place), excluded paths and sockets stay where they are as the same files, and a forged archive
is refused before anything live changes."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests import agentkit
from tests.integration.trees import EXCLUDE, make_rich_tree, tree_state

IDS = {"token": "f1", "nonce": "n1"}


def dump(tree: Path, exclude: list[str] | None = None) -> agentkit.Run:
    run = agentkit.run({"mode": "dump", "engine": "files", "path": str(tree), "exclude": exclude or []})
    assert run.code == 0, run.stderr
    return run


def zstd(data: bytes) -> bytes:
    return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout


@pytest.fixture
def rich(tmp_path):
    tree = tmp_path / "srv" / "dokumen"
    tree.mkdir(parents=True)
    make_rich_tree(tree)
    return tree


def test_a_dump_lists_every_entry_and_skips_what_is_not_data(rich):
    run = dump(rich, EXCLUDE)
    listed = {event["path"]: event for event in run.of("file")}
    assert listed["tautan/nama-kedua.txt"]["type"] == "hardlink"
    # A hard link names the path archived first with the same inode (the walk takes a folder's
    # files before its subfolders' contents).
    assert (
        listed["tautan/asli.txt"]["target"] == listed["tautan/nama-kedua.txt"]["target"] == "nama-ketiga.txt"
    )
    assert listed["antrian.fifo"]["type"] == "fifo"
    assert listed["jarang.img"]["sparse"] is True
    assert listed["ke-luar"] == {**listed["ke-luar"], "type": "symlink", "target": "/etc/hostname"}
    assert listed["rahasia.txt"]["acl_access"]
    assert "user.pulih.asal" in listed["nama-ketiga.txt"]["xattrs"], "on the first name of the inode"
    assert not any(path.startswith("cache/") or path.endswith(".tmp") for path in listed), "excluded"
    assert "aplikasi.sock" not in listed
    assert run.result["skipped"] == [{"path": "aplikasi.sock", "type": "socket"}]
    assert run.result["files"] == sum(1 for e in listed.values() if e["type"] == "file")
    assert run.result["hardlinks"] == 2


def test_a_test_restore_lists_the_tree_exactly_as_the_dump_did(rich, tmp_path):
    backup = dump(rich, EXCLUDE)
    verify = agentkit.run(
        {"mode": "verify", "engine": "files", "scratch_parent": str(tmp_path)}, backup.stdout
    )
    assert verify.code == 0, verify.stderr
    assert {e["path"]: e for e in verify.of("file")} == {e["path"]: e for e in backup.of("file")}
    assert not list(tmp_path.glob("pulih-verify-*")), "scratch space removed"


def test_a_corrupted_archive_fails_the_test_restore_and_leaves_no_scratch(rich, tmp_path):
    data = bytearray(dump(rich).stdout)
    data[len(data) // 2] ^= 0xFF
    verify = agentkit.run({"mode": "verify", "engine": "files", "scratch_parent": str(tmp_path)}, bytes(data))
    assert verify.code == 3
    assert verify.message.startswith("zstd exited 1"), "the tool that failed, not the empty stream it left"
    assert not list(tmp_path.glob("pulih-verify-*"))


def in_place(live: Path, **extra) -> dict:
    return {"engine": "files", "live": str(live), "exclude": EXCLUDE, **IDS, **extra}


def test_stage_swap_in_place_restores_the_tree_and_keeps_excluded_paths_as_the_same_files(rich):
    before = tree_state(rich, skip=EXCLUDE, sockets=False)
    backup = dump(rich, EXCLUDE)
    # Damage after the backup: a file changed, one deleted, one added; the excluded paths and
    # the socket belong to the application, not to the backup.
    (rich / "tautan" / "asli.txt").write_text("rusak\n")
    (rich / "ke-asli").unlink()
    (rich / "baru.txt").write_text("tidak ada di cadangan\n")
    (rich / "cache" / "sesi-2").write_text("new cache\n")
    kept_inode = (rich / "cache" / "sesi-1").stat().st_ino

    staged = agentkit.run({"mode": "stage", **in_place(rich)}, backup.stdout)
    assert staged.code == 0, staged.stderr
    stage = Path(staged.result["stage"])
    assert stage.parent == rich.parent and stage.name.startswith(".pulih-restore-f1-")
    assert (rich / "baru.txt").exists(), "the live tree is only read by the stage"

    swapped = agentkit.run({"mode": "swap", **in_place(rich)})
    assert swapped.code == 0, swapped.stderr
    assert swapped.result["replaced"] is True and swapped.result["kept_old"] is None
    assert tree_state(rich, skip=EXCLUDE, sockets=False) == before
    assert (rich / "cache" / "sesi-1").stat().st_ino == kept_inode, "the same file, not a copy"
    assert (rich / "cache" / "sesi-2").read_text() == "new cache\n"
    assert (rich / "sementara.tmp").exists() and (rich / "aplikasi.sock").is_socket()
    assert swapped.result["carried_excluded"] >= 3
    assert not list(rich.parent.glob(".pulih-*")), "nothing left beside the live tree"


def test_keep_old_keeps_the_replaced_tree_beside_the_live_one(tmp_path):
    live = tmp_path / "arsip"
    live.mkdir()
    (live / "a.txt").write_text("cadangan\n")
    backup = dump(live)
    (live / "a.txt").write_text("sekarang\n")
    assert agentkit.run({"mode": "stage", **in_place(live)}, backup.stdout).code == 0
    swapped = agentkit.run({"mode": "swap", **in_place(live, keep_old=True)})
    assert swapped.code == 0, swapped.stderr
    assert (live / "a.txt").read_text() == "cadangan\n"
    assert (Path(swapped.result["kept_old"]) / "a.txt").read_text() == "sekarang\n"


def test_discard_removes_the_stage_and_a_swap_without_one_is_refused(tmp_path):
    live = tmp_path / "arsip"
    live.mkdir()
    (live / "a.txt").write_text("x\n")
    backup = dump(live)
    staged = agentkit.run({"mode": "stage", **in_place(live)}, backup.stdout)
    discarded = agentkit.run({"mode": "discard", **in_place(live)})
    assert discarded.code == 0 and discarded.result["discarded"] == staged.result["stage"]
    assert not Path(staged.result["stage"]).exists()
    swap = agentkit.run({"mode": "swap", **in_place(live)})
    assert swap.code == 3 and "is gone: run the restore again" in swap.message
    assert (live / "a.txt").read_text() == "x\n"


def test_an_alternate_target_that_exists_is_refused(tmp_path):
    live = tmp_path / "arsip"
    live.mkdir()
    backup = dump(live)
    other = tmp_path / "salinan"
    other.mkdir()
    staged = agentkit.run({"mode": "stage", **in_place(other, must_not_exist=True)}, backup.stdout)
    assert staged.code == 3 and "already exists on the target" in staged.message


def forged(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        folder = tarfile.TarInfo("./sub")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        tar.addfile(member, io.BytesIO(data) if data else None)
    return zstd(out.getvalue())


def symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def regular(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


def device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


@pytest.mark.parametrize(
    ("archive", "says"),
    [
        (forged(regular("../../etc/evil", 4), b"evil"), "would land outside the restore folder"),
        (forged(regular("/etc/evil", 4), b"evil"), "would land outside the restore folder"),
        (forged(device("./sub/tty")), "a device or another kind pulih never stores"),
    ],
)
def test_a_forged_archive_is_refused_before_anything_live_changes(tmp_path, archive, says):
    live = tmp_path / "arsip"
    live.mkdir()
    (live / "a.txt").write_text("live\n")
    staged = agentkit.run({"mode": "stage", **in_place(live)}, archive)
    assert staged.code == 3, staged.stderr
    assert says in staged.stderr  # (GNU tar may refuse it too, on the same standard error)
    assert (live / "a.txt").read_text() == "live\n"
    assert not list(tmp_path.glob(".pulih-restore-*")), "the stage is removed"
    assert not (tmp_path.parent / "etc").exists()


def test_a_member_behind_a_symlink_of_the_archive_is_refused(tmp_path):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(symlink("./jalan", str(tmp_path)))
        tar.addfile(regular("./jalan/tertanam", 4), io.BytesIO(b"evil"))
    live = tmp_path / "arsip"
    live.mkdir()
    staged = agentkit.run({"mode": "stage", **in_place(live)}, zstd(out.getvalue()))
    # GNU tar refuses it too, on the same standard error: its line may interleave with ours.
    assert staged.code == 3 and "archive member './jalan/tertanam' lies behind a symlink" in staged.stderr
    assert not (tmp_path / "tertanam").exists()


def test_a_dump_of_something_that_is_not_a_folder_is_refused(tmp_path):
    run = agentkit.run({"mode": "dump", "engine": "files", "path": str(tmp_path / "absent")})
    assert run.code == 3 and run.message == f"{tmp_path / 'absent'} is not a directory"
    assert run.stdout == b""


def test_the_file_list_events_are_json_lines_the_modules_can_store(rich):
    for event in dump(rich, EXCLUDE).of("file"):
        assert json.loads(json.dumps(event, sort_keys=True)) == event
        assert not Path(event["path"]).is_absolute()

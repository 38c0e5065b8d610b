"""A file tree with every kind of entry a real server's tree has (hard links, a sparse file, a
fifo, symlinks, a POSIX ACL, extended attributes, a socket, excluded files), and a fingerprint
of a tree on disk that sees all of it, for the backup and restore tests."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import socket
import stat
import subprocess
from pathlib import Path
from typing import Any

EXCLUDE = ["*.tmp", "cache/*"]
SPARSE_SIZE = 64 << 20  # 64 MiB, of which 8 KiB are data


def make_rich_tree(root: Path) -> None:
    """Add every kind of entry to the tree at `root` (which exists)."""
    docs = root / "tautan"
    docs.mkdir()
    original = docs / "asli.txt"
    original.write_text("Satu isi, dua nama\n" * 20)
    os.link(original, docs / "nama-kedua.txt")  # a hard link
    os.link(original, root / "nama-ketiga.txt")  # across folders
    with (root / "jarang.img").open("wb") as sparse:  # holes before, between and after the data
        sparse.seek(1 << 20)
        sparse.write(os.urandom(4096))
        sparse.seek(40 << 20)
        sparse.write(os.urandom(4096))
        sparse.truncate(SPARSE_SIZE)
    os.mkfifo(root / "antrian.fifo", 0o640)
    (root / "ke-asli").symlink_to("tautan/asli.txt")
    (root / "ke-luar").symlink_to("/etc/hostname")  # absolute, outside the tree: kept as a link
    (root / "patah").symlink_to("tidak-ada")  # dangling
    secret = root / "rahasia.txt"
    secret.write_text("hanya untuk pemilik dan nobody\n")
    secret.chmod(0o640)
    subprocess.run(["setfacl", "-m", "u:nobody:r", str(secret)], check=True)
    subprocess.run(["setfacl", "-d", "-m", "u:nobody:rx", str(docs)], check=True)
    os.setxattr(original, "user.pulih.asal", b"arsip daerah")
    os.setxattr(root / "jarang.img", "user.pulih.bin", bytes(range(256)))
    os.chown(docs / "asli.txt", 65534, 65534)  # nobody: owners come back
    os.utime(root / "ke-asli", ns=(1_600_000_000_123_456_789,) * 2, follow_symlinks=False)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "aplikasi.sock"))  # not data: skipped, and left in place
    listener.close()
    (root / "cache").mkdir()
    (root / "cache" / "sesi-1").write_text("cache, excluded\n")
    (root / "sementara.tmp").write_text("excluded\n")


def excluded(relative: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(Path(relative).name, p) for p in patterns)


def tree_state(root: Path, skip: list[str] | None = None, sockets: bool = True) -> dict[str, dict[str, Any]]:
    """Everything a tree holds, per path: type, mode, owner, times, content, link target,
    which names share an inode, holes, xattrs and ACLs. `skip`: patterns of paths to leave out;
    `sockets=False` leaves sockets out (they are not data)."""
    state: dict[str, dict[str, Any]] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        parts = relative.split("/")
        if skip and any(excluded("/".join(parts[:depth]), skip) for depth in range(1, len(parts) + 1)):
            continue
        info = path.lstat()
        if stat.S_ISSOCK(info.st_mode) and not sockets:
            continue
        entry: dict[str, Any] = {"mode": stat.filemode(info.st_mode), "owner": (info.st_uid, info.st_gid)}
        if not stat.S_ISDIR(info.st_mode):
            entry["mtime_ns"] = info.st_mtime_ns
        if stat.S_ISREG(info.st_mode):
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            entry["size"] = info.st_size
            entry["sparse"] = info.st_blocks * 512 < info.st_size
            inodes.setdefault((info.st_dev, info.st_ino), []).append(relative)
        elif stat.S_ISLNK(info.st_mode):
            entry["target"] = str(path.readlink())
        if not stat.S_ISLNK(info.st_mode):
            entry["xattrs"] = {name: os.getxattr(path, name) for name in sorted(os.listxattr(path))}
        state[relative] = entry
    for names in inodes.values():
        for name in names:
            state[name]["links"] = sorted(names)
    return state

"""File trees: a backup as a GNU tar (pax) archive with its file list, a test restore, and a
restore's stage, swap (excluded paths and non-data kept in place) and discard."""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading

from .pipeline import Pipeline, add_input_stages, add_output_stages
from .preflight import require_room
from .protocol import CHUNK, AgentError, emit, tool_version
from .restore import refuse_existing, stage_names

# A tree travels as a POSIX (pax) archive written by GNU tar, which carries what Python's
# tarfile cannot: sparse files (as sparse), POSIX ACLs and extended attributes. pulih walks
# the tree itself (the exclude patterns keep their meaning, sockets and device nodes are
# listed as skipped) and hands tar the names; it reads tar's output once, passing it on to
# zstd and describing every member (the file list) from the archive itself, so that the
# backup and every listing of a restored tree describe files the same way.
TAR_ATTRS = ["--format=posix", "--xattrs", "--xattrs-include=*", "--acls"]
FILE_TYPES = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.FIFOTYPE: "fifo",
}


def excluded(relative, patterns):
    return any(
        fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(os.path.basename(relative), p) for p in patterns
    )


def not_data(path):
    """Sockets and device nodes: a backup skips them, a restore leaves the live ones in place."""
    mode = os.lstat(path).st_mode
    return stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def _walk_error(exc):
    raise AgentError("cannot read %s: %s" % (exc.filename, exc.strerror))


def walk_tree(root, patterns, skipped=None):
    """The tree's relative names in a stable order (each folder's subfolders, then its other
    entries, by name), without excluded paths. Sockets and device nodes are not data: they
    are left out and, when `skipped` is a list, listed there."""
    for current, dirs, names in os.walk(root, onerror=_walk_error):
        kept = []
        for name in sorted(dirs) + sorted(names):
            full = os.path.join(current, name)
            relative = os.path.relpath(full, root)
            if excluded(relative, patterns):
                continue
            if not_data(full):
                if skipped is not None:
                    kind = "socket" if stat.S_ISSOCK(os.lstat(full).st_mode) else "device"
                    skipped.append({"path": relative, "type": kind})
                continue
            if name in dirs:
                kept.append(name)
            yield relative
        dirs[:] = sorted(kept)


def _member_path(name):
    return name[2:] if name.startswith("./") else name


def describe_member(member, tar):
    """One entry of the file list, from an archive member (its data read from `tar`)."""
    kind = FILE_TYPES.get(member.type)
    if kind is None:
        raise AgentError("archive member %r is a %r, which pulih never stores" % (member.name, member.type))
    headers = member.pax_headers
    entry = {"path": _member_path(member.name), "type": kind, "mode": "%04o" % member.mode}
    entry["owner"] = member.uname or str(member.uid)
    entry["group"] = member.gname or str(member.gid)
    if kind != "dir":  # a folder's time changes whenever an entry in it does
        entry["mtime"] = headers.get("mtime") or str(int(member.mtime))
    if kind == "file":
        digest = hashlib.sha256()
        handle = tar.extractfile(member)
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
        entry.update(size=member.size, sha256=digest.hexdigest(), sparse=member.sparse is not None)
    elif kind in ("symlink", "hardlink"):
        entry["target"] = _member_path(member.linkname) if kind == "hardlink" else member.linkname
    xattrs = {
        key[len("SCHILY.xattr.") :]: hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()
        for key, value in headers.items()
        if key.startswith("SCHILY.xattr.")
    }
    if xattrs:
        entry["xattrs"] = xattrs
    for key in ("access", "default"):
        if headers.get("SCHILY.acl." + key):
            entry["acl_" + key] = headers["SCHILY.acl." + key]
    return entry


class TeeReader:
    """Reads a stream and passes every byte read on to `sink` (None: nowhere)."""

    def __init__(self, source, sink):
        self.source, self.sink = source, sink

    def read(self, size=-1):
        data = self.source.read(size)
        if data and self.sink is not None:
            self.sink.write(data)
        return data

    def drain(self):
        while self.read(CHUNK):
            pass


def read_archive(stream, sink=None, check=None, describe=True, emit_each=False):
    """Read the tar archive on `stream` to its end, passing it on to `sink` unchanged, and
    describe its members (emitting a "file" event each with `emit_each`). `check(member)`
    may refuse a member."""
    tee = TeeReader(io.BufferedReader(stream, CHUNK), sink)
    entries, summary = [], {"files": 0, "hardlinks": 0, "bytes": 0}
    with tarfile.open(fileobj=tee, mode="r|") as tar:
        for member in tar:
            if check is not None:
                check(member)
            if not describe:
                continue
            entry = describe_member(member, tar)
            summary["files"] += entry["type"] == "file"
            summary["hardlinks"] += entry["type"] == "hardlink"
            summary["bytes"] += entry.get("size", 0)
            if emit_each:
                emit("file", **entry)
            else:
                entries.append(entry)
    tee.drain()
    return entries, summary


def _feed_names(tar_stdin, root, patterns, skipped, failure):
    try:
        with tar_stdin:
            for relative in walk_tree(root, patterns, skipped):
                tar_stdin.write(b"./" + os.fsencode(relative) + b"\0")
    except (AgentError, OSError) as exc:
        failure.append(exc)


def archive_tree(pipe, root, patterns, sink=None, emit_each=False):
    """Run GNU tar on the tree's (not excluded) names and describe what it archives; the
    archive goes to `sink`. Returns (entries, summary, skipped); entries are emitted instead
    with `emit_each`."""
    argv = ["tar", "-C", root, "--create", "--file=-", *TAR_ATTRS, "--sparse", "--no-recursion"]
    tar = pipe.add([*argv, "--null", "--files-from=-"], stdin=subprocess.PIPE)
    skipped, failure = [], []
    feeder = threading.Thread(target=_feed_names, args=(tar.stdin, root, patterns, skipped, failure))
    feeder.start()
    try:
        entries, summary = read_archive(tar.stdout, sink, emit_each=emit_each)
    finally:
        feeder.join()
    if failure:
        raise AgentError(str(failure[0]))
    return entries, summary, skipped


def list_tree(root, patterns=()):
    """The file list of a tree on disk, made exactly as a backup makes it."""
    with Pipeline() as pipe:
        entries, _, _ = archive_tree(pipe, root, list(patterns))
    if os.geteuid() != 0:  # only root can give restored files their owners: nothing to compare
        for entry in entries:
            entry.pop("owner", None)
            entry.pop("group", None)
    return entries


def emit_tree(entries, **result):
    """A listed tree's entries as "file" events, then the result with its counts."""
    for entry in entries:
        emit("file", **entry)
    files = sum(1 for e in entries if e["type"] == "file")
    hardlinks = sum(1 for e in entries if e["type"] == "hardlink")
    emit("result", engine="files", files=files, hardlinks=hardlinks, **result)


def dump_files(request):
    root = request["path"].rstrip("/") or "/"
    patterns = request.get("exclude") or []
    if not os.path.isdir(root):
        raise AgentError("%s is not a directory" % root)
    with Pipeline() as pipe:
        add_output_stages(pipe, request, subprocess.PIPE)
        sink = pipe.procs[0][1].stdin  # zstd's
        _, summary, skipped = archive_tree(pipe, root, patterns, sink, emit_each=True)
        sink.close()
    emit(
        "result",
        engine="files",
        exclude=patterns,
        source_bytes=summary["bytes"],
        **summary,
        skipped=skipped,
        tools={"tar": tool_version(["tar", "--version"]), "zstd": tool_version(["zstd", "--version"])},
    )


class MemberCheck:
    """Refuses archive members that could reach outside the restore folder or are not data:
    absolute names, '..', a path through a symlink of the archive, devices. GNU tar refuses
    the first three itself; this makes a forged archive fail the item before any swap."""

    def __init__(self):
        self.symlinks = set()

    def __call__(self, member):
        path = _member_path(member.name)
        parts = path.split("/")
        if path.startswith("/") or ".." in parts:
            raise AgentError("archive member %r would land outside the restore folder" % member.name)
        if member.type not in FILE_TYPES:
            raise AgentError("archive member %r is a device or another kind pulih never stores" % member.name)
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in self.symlinks:
                raise AgentError("archive member %r lies behind a symlink of the archive" % member.name)
        if member.islnk():
            target = _member_path(member.linkname)
            if target.startswith("/") or ".." in target.split("/"):
                raise AgentError("hard link %r points outside the restore folder" % member.name)
        if member.issym():
            self.symlinks.add(path)


def extract_tree(request, dest):
    """Restore the archive on standard input into the empty folder `dest` with GNU tar
    (owners when root, modes, times, ACLs, xattrs, holes of sparse files), then list it."""
    argv = ["tar", "-C", dest, "--extract", "--file=-", *TAR_ATTRS, "--preserve-permissions"]
    argv.append("--same-owner" if os.geteuid() == 0 else "--no-same-owner")
    with Pipeline() as pipe:
        plain = add_input_stages(pipe, request)
        tar = pipe.add(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        with tar.stdin:
            read_archive(plain.stdout, tar.stdin, MemberCheck(), describe=False)
    return list_tree(dest)


def verify_files(request):
    parent = request.get("scratch_parent") or tempfile.gettempdir()
    require_room("test restore", [(parent, request.get("room_bytes"))])
    scratch = tempfile.mkdtemp(prefix="pulih-verify-", dir=parent)
    try:
        entries = extract_tree(request, scratch)
        emit_tree(entries, scratch=scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def beside(live, name):
    """A folder next to the live one, so the swap is a rename within one filesystem."""
    live = os.path.normpath(live)
    if live == "/" or not os.path.isabs(live):
        raise AgentError("%r cannot be restored in place: give an absolute path other than /" % live)
    return os.path.join(os.path.dirname(live), name)


def files_stage_room(request):
    return [(os.path.dirname(os.path.normpath(request["live"])), request.get("room_bytes"))]


def stage_files(request):
    live = os.path.normpath(request["live"])
    stage = beside(live, stage_names(request)["stage"])
    refuse_existing(request, os.path.lexists(live))
    parent = os.path.dirname(stage)
    os.makedirs(parent, exist_ok=True)
    for leftover in os.listdir(parent):  # of interrupted attempts
        if leftover.startswith(stage_names(request)["prefix"]):
            shutil.rmtree(os.path.join(parent, leftover), ignore_errors=True)
    require_room("restore's stage", files_stage_room(request))
    os.mkdir(stage, 0o700)
    try:
        entries = extract_tree(request, stage)
        if os.path.isdir(live):  # the folder itself keeps the live one's owner and mode
            info = os.stat(live)
            os.chmod(stage, stat.S_IMODE(info.st_mode))
            if os.geteuid() == 0:
                os.chown(stage, info.st_uid, info.st_gid)
        else:
            os.chmod(stage, 0o755)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    emit_tree(entries, stage=stage, live_existed=os.path.lexists(live))


def _link_into(source, dest):
    """Give `dest` the same inode as `source` (a hard link); a copy where a link cannot be
    made (another filesystem)."""
    try:
        os.link(source, dest, follow_symlinks=False)
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
    mode = os.lstat(source).st_mode
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(source), dest)
    elif stat.S_ISFIFO(mode):
        os.mkfifo(dest, stat.S_IMODE(mode))
    elif stat.S_ISREG(mode):
        shutil.copy2(source, dest)
    else:
        return  # a socket or device: not data (a backup skips it too)
    shutil.copystat(source, dest, follow_symlinks=False)


def _link_tree_into(source, dest):
    """A folder made like `source` at `dest`, everything in it linked (or copied) in."""
    _make_dir_like(source, dest)
    for current, dirs, files in os.walk(source, onerror=_walk_error):
        dirs.sort()
        there = os.path.join(dest, os.path.relpath(current, source))
        for name in dirs:
            _make_dir_like(os.path.join(current, name), os.path.join(there, name))
        for name in sorted(files):
            _link_into(os.path.join(current, name), os.path.join(there, name))
    shutil.copystat(source, dest)


def _make_dir_like(source, dest):
    info = os.lstat(source)
    os.mkdir(dest, stat.S_IMODE(info.st_mode))
    os.chmod(dest, stat.S_IMODE(info.st_mode))  # beyond the umask
    if os.geteuid() == 0:
        os.lchown(dest, info.st_uid, info.st_gid)


def carry_excluded(source_root, dest_root, patterns, replace):
    """Hard-link every path of `source_root` that a backup leaves out (the exclude patterns
    match it, or it is a socket or device node), so that is not pulih's to replace, into
    `dest_root` at the same place. The source is only read: an interrupted carry leaves
    extra links in a stage and nothing lost. With `replace`, a carried path takes the place
    of whatever the stage holds there. Folder times touched on the way are put back.
    Returns the number of paths carried."""
    carried, touched = 0, {}

    def parent_in_dest(relative):
        parts = relative.split(os.sep)[:-1]
        for depth in range(len(parts) + 1):
            rel = os.sep.join(parts[:depth])
            target = os.path.join(dest_root, rel) if rel else dest_root
            if not os.path.lexists(target):
                _make_dir_like(os.path.join(source_root, rel), target)
            elif target not in touched:
                touched[target] = os.lstat(target)
        return os.path.join(dest_root, *parts) if parts else dest_root

    for current, dirs, files in os.walk(source_root, onerror=_walk_error):
        descend = []
        for name in sorted(dirs) + sorted(files):
            full = os.path.join(current, name)
            relative = os.path.relpath(full, source_root)
            if not (excluded(relative, patterns) or not_data(full)):
                if name in dirs:
                    descend.append(name)
                continue
            dest = os.path.join(parent_in_dest(relative), name)
            if os.path.lexists(dest):
                if not replace:
                    continue
                if os.path.isdir(dest) and not os.path.islink(dest):
                    shutil.rmtree(dest)
                else:
                    os.unlink(dest)
            if name in dirs and not os.path.islink(full):
                _link_tree_into(full, dest)
            else:
                _link_into(full, dest)
            carried += 1
        dirs[:] = sorted(descend)
    for folder, info in touched.items():
        os.utime(folder, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
    return carried


def exchange(a, b):
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), a)


def swap_files(request):
    live = os.path.normpath(request["live"])
    stage, old = beside(live, stage_names(request)["stage"]), beside(live, stage_names(request)["old"])
    patterns = request.get("exclude") or []
    if not os.path.isdir(stage):
        raise AgentError("the restored copy %s is gone: run the restore again" % stage)
    shutil.rmtree(old, ignore_errors=True)
    existed = os.path.lexists(live)
    carried = 0
    if existed and os.path.isdir(live):
        # Excluded paths, sockets and devices are not in the backup: the live ones stay, as
        # the same files.
        carried = carry_excluded(live, stage, patterns, replace=True)
    if not existed:
        os.rename(stage, live)
    elif exchange(stage, live):
        os.rename(stage, old)  # the stage's name now holds the replaced tree
    else:  # a filesystem without RENAME_EXCHANGE: two renames, the live name missing in between
        os.rename(live, old)
        os.rename(stage, live)
    if existed and os.path.isdir(old):
        # What appeared in excluded places between the carry and the swap.
        carried += carry_excluded(old, live, patterns, replace=False)
    if existed and not request.get("keep_old"):
        shutil.rmtree(old)
    emit_tree(
        list_tree(live, patterns),
        live=live,
        replaced=existed,
        carried_excluded=carried,
        kept_old=old if existed and request.get("keep_old") else None,
    )


def discard_files(request):
    stage = beside(request["live"], stage_names(request)["stage"])
    shutil.rmtree(stage, ignore_errors=True)
    emit("result", engine="files", discarded=stage)

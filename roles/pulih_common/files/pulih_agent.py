#!/usr/bin/python3
"""pulih agent: the part of a backup, verification or restore that runs on a data
server, started there by the controller's modules (pulih.core.agent_push, agent_pull), which
send its output to the repository's receiver or feed it what they fetch from there.

Protocol. The first line of standard input is a JSON request (it carries the
database password and any age identity, which therefore never appear in a process
list; the tools get them as in-memory files, see "secrets"). Then:
  mode "dump":   the artifact is written to standard output (compressed, maybe encrypted);
  mode "verify": the artifact follows on standard input; it is restored into scratch
                 space, measured, and the scratch space removed.
  mode "stage", "swap", "discard": a restore in three steps (see "restores" below);
  mode "probe":  whether a restore's target exists.
Standard error carries the tools' own messages and lines "@@pulih <json>" with
structured results: {"event": "file", ...} per file of a tree, {"event": "result", ...}
once at the end. The exit code is 0 only when every process of every pipeline
succeeded (pipefail, always).

Standard library, the system's psycopg2 (python3-psycopg2) and PyMySQL
(python3-pymysql), and the command-line tools pg_dump, pg_restore, mariadb-dump,
mariadb, zstd and age. Python 3.9+.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

CHUNK = 1 << 20


class AgentError(Exception):
    pass


def emit(event, **fields):
    fields["event"] = event
    sys.stderr.write("@@pulih " + json.dumps(fields, sort_keys=True) + "\n")
    sys.stderr.flush()


def tool_version(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except OSError:
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else None


# --------------------------------------------------------------------------- secrets

# Secrets (a database password, an age identity) reach the tools as in-memory files
# (memfd), open in this process only: the children read them as /dev/fd/N, and they vanish
# with the agent however it ends, SIGKILL included. Never a file on disk, never the
# environment, never a command line.
_SECRET_FDS = {}


def secret_path(content):
    """A path to an in-memory file holding `content` (mode 0600, as libpq and the MariaDB
    client want), readable by the children this process starts."""
    fd = _SECRET_FDS.get(content)
    if fd is None:
        fd = os.memfd_create("pulih-secret")
        os.fchmod(fd, 0o600)
        os.write(fd, content.encode("utf-8"))
        _SECRET_FDS[content] = fd
    return "/dev/fd/%d" % fd


def secret_fds():
    return tuple(_SECRET_FDS.values())


# --------------------------------------------------------------------------- pipelines


class Pipeline:
    """Processes connected by pipes; fails if any of them fails (pipefail).

    As a context manager: on leaving normally it waits for every process and raises when
    one failed; on an exception it kills them all, so no half-run pipeline outlives an error.
    """

    def __init__(self):
        self.procs = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.kill()
            return False
        self.wait()
        return False

    def add(self, argv, stdin=None, stdout=subprocess.PIPE, env=None):
        try:
            proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, env=env, pass_fds=secret_fds())
        except OSError as exc:
            raise AgentError("cannot run %s: %s" % (argv[0], exc)) from None
        if (
            stdin is not None
            and stdin not in (subprocess.PIPE, subprocess.DEVNULL)
            and hasattr(stdin, "close")
        ):
            stdin.close()  # the child holds it now
        self.procs.append((argv[0], proc))
        return proc

    def wait(self):
        failed = []
        for name, proc in self.procs:
            code = proc.wait()
            if code != 0:
                failed.append("%s exited %d" % (name, code))
        if failed:
            raise AgentError("; ".join(failed))

    def kill(self):
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def compressor(request):
    level = int(request.get("zstd_level", 3))
    return ["zstd", "-q", "-c", "-T%d" % int(request.get("zstd_threads", 0)), "-%d" % level]


def add_output_stages(pipe, request, source_stdout):
    """zstd, then age when recipients are given, writing to our standard output."""
    recipients = request.get("recipients") or []
    out = sys.stdout.buffer
    out.flush()
    if not recipients:
        return pipe.add(compressor(request), stdin=source_stdout, stdout=out.fileno())
    zstd = pipe.add(compressor(request), stdin=source_stdout)
    age = ["age"]
    for recipient in recipients:
        age += ["-r", recipient]
    return pipe.add(age, stdin=zstd.stdout, stdout=out.fileno())


def add_input_stages(pipe, request):
    """age -d when encrypted, then zstd -d, reading our standard input."""
    stdin = sys.stdin.buffer
    if request.get("encrypted"):
        if not request.get("identity"):
            raise AgentError("the backup is encrypted and no age identity was given")
        age = pipe.add(["age", "-d", "-i", secret_path(request["identity"])], stdin=stdin)
        return pipe.add(["zstd", "-q", "-d", "-c"], stdin=age.stdout)
    return pipe.add(["zstd", "-q", "-d", "-c"], stdin=stdin)


def copy_stream(src, dst):
    """Copy between pipes without going through Python buffers where Linux allows."""
    src_fd, dst_fd = src.fileno(), dst.fileno()
    while True:
        try:
            moved = os.splice(src_fd, dst_fd, CHUNK)
        except (AttributeError, OSError):
            data = os.read(src_fd, CHUNK)
            if not data:
                return
            os.write(dst_fd, data)
            continue
        if moved == 0:
            return


# --------------------------------------------------------------------------- PostgreSQL


def pg_env(conn, database=None):
    env = dict(os.environ)
    env.pop("PGPASSWORD", None)
    for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER")):
        if conn.get(key) not in (None, ""):
            env[var] = str(conn[key])
    if conn.get("password"):  # a passfile in memory, for any host, port, database and user
        escaped = str(conn["password"]).replace("\\", "\\\\").replace(":", "\\:")
        env["PGPASSFILE"] = secret_path("*:*:*:*:%s\n" % escaped)
    if conn.get("socket"):
        env["PGHOST"] = conn["socket"]
    # A name in PGDATABASE is only a name: "-d" would read "a=b" as a connection string.
    env["PGDATABASE"] = database or conn["database"]
    env["PGCONNECT_TIMEOUT"] = str(conn.get("connect_timeout", 10))
    env["PGAPPNAME"] = "pulih"
    return env


def pg_connect(conn, database=None):
    import psycopg2

    kwargs = {
        "host": conn.get("socket") or conn.get("host") or None,
        "port": conn.get("port") or None,
        "user": conn.get("user") or None,
        "password": conn.get("password") or None,
        "dbname": database or conn["database"],
        "connect_timeout": conn.get("connect_timeout", 10),
        "application_name": "pulih",
    }
    try:
        return psycopg2.connect(**{k: v for k, v in kwargs.items() if v is not None})
    except psycopg2.Error as exc:
        raise AgentError(
            "cannot connect to PostgreSQL database %r: %s" % (kwargs["dbname"], str(exc).strip())
        ) from None


PG_TABLES = """
    SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg_toast%%' AND n.nspname NOT LIKE 'pg_temp%%'
    ORDER BY 1, 2
"""


def pg_counts(cur):
    from psycopg2 import sql

    cur.execute(PG_TABLES)
    counts = {}
    for schema, table in cur.fetchall():
        cur.execute(
            sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        )
        counts["%s.%s" % (schema, table)] = cur.fetchone()[0]
    return counts


def dump_postgresql(request):
    conn = request["conn"]
    db = pg_connect(conn)
    db.set_session(isolation_level="REPEATABLE READ", readonly=True)
    cur = db.cursor()
    # The snapshot pg_dump will share: the row counts below see exactly what it dumps.
    cur.execute(
        "SELECT pg_export_snapshot(), current_setting('server_version'), pg_database_size(current_database())"
    )
    snapshot, server_version, source_bytes = cur.fetchone()
    try:
        require_pg_dump_for(server_version)
        with Pipeline() as pipe:
            dump = pipe.add(["pg_dump", "-Fc", "-Z0", "--snapshot=" + snapshot], env=pg_env(conn))
            add_output_stages(pipe, request, dump.stdout)
            counts = pg_counts(cur)  # while the dump streams, in the exporting transaction
    finally:
        db.rollback()
        db.close()
    emit(
        "result",
        engine="postgresql",
        server_version=server_version,
        source_bytes=source_bytes,
        row_counts=counts,
        consistency="row counts taken in the transaction whose snapshot pg_dump used (--snapshot)",
        tools={
            "pg_dump": tool_version(["pg_dump", "--version"]),
            "zstd": tool_version(["zstd", "--version"]),
            "age": tool_version(["age", "--version"]) if request.get("recipients") else None,
        },
    )


def dump_pg_globals(request):
    conn = request["conn"]
    notes = []
    for extra in ([], ["--no-role-passwords"]):
        probe = subprocess.run(
            ["pg_dumpall", "--globals-only", *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=pg_env(conn, "postgres"),
            pass_fds=secret_fds(),
            text=True,
            check=False,
        )
        if probe.returncode == 0:
            break
        notes.append(probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "pg_dumpall failed")
    else:
        raise AgentError("pg_dumpall --globals-only failed: %s" % "; ".join(notes))
    with Pipeline() as pipe:
        dumpall = pipe.add(["pg_dumpall", "--globals-only", *extra], env=pg_env(conn, "postgres"))
        add_output_stages(pipe, request, dumpall.stdout)
    emit(
        "result",
        engine="pg_globals",
        role_passwords=not extra,
        note="role passwords left out: the backup account may not read them" if extra else None,
    )


def verify_postgresql(request):
    conn, scratch = request["conn"], request["scratch_database"]
    from psycopg2 import sql

    admin = pg_connect(conn, "postgres")
    admin.autocommit = True
    acur = admin.cursor()
    require_pg_restore_for(request.get("dumped_with"))
    require_room(
        "test restore", [(database_directory(acur, "SHOW data_directory"), request.get("room_bytes"))]
    )
    acur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch)))
    acur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    try:
        with Pipeline() as pipe:
            plain = add_input_stages(pipe, request)
            pipe.add(
                ["pg_restore", "--exit-on-error", "--no-owner", "--no-acl", "-d", scratch],
                stdin=plain.stdout,
                stdout=subprocess.DEVNULL,
                env=pg_env(conn, scratch),
            )
        db = pg_connect(conn, scratch)
        try:
            counts = pg_counts(db.cursor())
        finally:
            db.close()
        emit("result", engine="postgresql", row_counts=counts, scratch=scratch)
    finally:
        acur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch)))
        admin.close()


# --------------------------------------------------------------------------- MariaDB / MySQL


def my_ident(name):
    return "`" + name.replace("`", "``") + "`"


def my_connect(conn, database=None):
    import pymysql

    kwargs = {
        "user": conn.get("user") or None,
        "password": conn.get("password") or "",
        "connect_timeout": conn.get("connect_timeout", 10),
        "autocommit": True,
        "charset": "utf8mb4",
    }
    if conn.get("socket"):
        kwargs["unix_socket"] = conn["socket"]
    else:
        kwargs["host"] = conn.get("host") or "localhost"
        kwargs["port"] = int(conn.get("port") or 3306)
    if database:
        kwargs["database"] = database
    try:
        return pymysql.connect(**kwargs)
    except pymysql.Error as exc:
        raise AgentError("cannot connect to MariaDB/MySQL: %s" % exc) from None


def my_defaults_file(conn):
    """Client options in an in-memory file, so the password is in no argv, no environment
    and no file on disk."""

    def quoted(value):
        if any(ord(char) < 32 for char in str(value)):  # a line break would start another option
            raise AgentError("a connection setting holds a control character")
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["[client]"]
    if conn.get("user"):
        lines.append("user=" + quoted(conn["user"]))
    if conn.get("password"):
        lines.append("password=" + quoted(conn["password"]))
    if conn.get("socket"):
        lines.append("socket=" + quoted(conn["socket"]))
    else:
        lines.append("host=" + quoted(conn.get("host") or "localhost"))
        lines.append("port=%d" % int(conn.get("port") or 3306))
        lines.append("protocol=TCP")
    return secret_path("\n".join(lines) + "\n")


def my_counts(cur, database):
    cur.execute(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
        "AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
        (database,),
    )
    counts = {}
    for (table,) in cur.fetchall():
        cur.execute("SELECT COUNT(*) FROM %s.%s" % (my_ident(database), my_ident(table)))
        counts[table] = cur.fetchone()[0]
    return counts


# mariadb-dump writes these only after it opened its consistent snapshot.
MY_SNAPSHOT_MARKERS = (
    b"-- Table structure for table",
    b"-- Temporary table structure for view",
    b"-- Dumping routines",
    b"-- Dumping events",
)


def dump_mariadb(request):
    conn, database = request["conn"], request["conn"]["database"]
    db = my_connect(conn)  # before any temporary file: a server that is down leaves nothing behind
    cur = db.cursor()
    locked = False
    try:
        with Pipeline() as pipe:
            cur.execute("SELECT VERSION()")
            server_version = cur.fetchone()[0]
            cur.execute(
                "SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables"
                " WHERE table_schema = %s",
                (database,),
            )
            source_bytes = int(cur.fetchone()[0])
            cur.execute("SET SESSION lock_wait_timeout = %s", (int(request.get("lock_wait_timeout", 30)),))
            # Writes stop from here until both snapshots exist (ours for the counts and
            # mariadb-dump's): a moment, the same lock mariadb-dump --master-data takes.
            cur.execute("FLUSH TABLES WITH READ LOCK")
            locked = True
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            argv = [
                "mariadb-dump" if shutil.which("mariadb-dump") else "mysqldump",
                "--defaults-extra-file=" + my_defaults_file(conn),
                "--single-transaction",
                "--quick",
                "--routines",
                "--triggers",
                "--events",
                "--hex-blob",
                "--default-character-set=utf8mb4",
                "--comments",
                "--",
                database,
            ]
            dump = pipe.add(argv)
            zstd_in = subprocess.PIPE
            last = add_output_stages(pipe, request, zstd_in)
            sink = pipe.procs[-2][1].stdin if request.get("recipients") else last.stdin
            seen = b""
            while locked:
                data = os.read(dump.stdout.fileno(), 65536)
                if data:
                    sink.write(data)
                    seen = (seen + data)[-4096:]
                if not data or any(marker in seen for marker in MY_SNAPSHOT_MARKERS):
                    cur.execute("UNLOCK TABLES")
                    locked = False
            sink.flush()
            counter, count_failure = {}, []

            def count():
                try:
                    counter.update(my_counts(cur, database))
                except Exception as exc:  # raised below, in this thread
                    count_failure.append(exc)

            thread = threading.Thread(target=count)
            thread.start()
            copy_stream(dump.stdout, sink)
            sink.close()
            thread.join()
            if count_failure:  # a backup without its row counts cannot be verified: fail it
                raise AgentError("cannot count the rows of %s: %s" % (database, count_failure[0]))
    finally:
        if locked:
            cur.execute("UNLOCK TABLES")
        db.close()
    emit(
        "result",
        engine="mariadb",
        server_version=server_version,
        source_bytes=source_bytes,
        row_counts=counter,
        consistency=(
            "FLUSH TABLES WITH READ LOCK held only until pulih's counting transaction and "
            "mariadb-dump --single-transaction had both opened their consistent snapshots; "
            "exact for InnoDB tables"
        ),
        tools={
            "mariadb-dump": tool_version([argv[0], "--version"]),
            "zstd": tool_version(["zstd", "--version"]),
            "age": tool_version(["age", "--version"]) if request.get("recipients") else None,
        },
    )


def verify_mariadb(request):
    conn, scratch = request["conn"], request["scratch_database"]
    admin = my_connect(conn)
    acur = admin.cursor()
    require_room("test restore", [(database_directory(acur, "SELECT @@datadir"), request.get("room_bytes"))])
    acur.execute("DROP DATABASE IF EXISTS %s" % my_ident(scratch))
    acur.execute("CREATE DATABASE %s CHARACTER SET utf8mb4" % my_ident(scratch))
    try:
        with Pipeline() as pipe:
            plain = add_input_stages(pipe, request)
            client = "mariadb" if shutil.which("mariadb") else "mysql"
            pipe.add(
                [
                    client,
                    "--defaults-extra-file=" + my_defaults_file(conn),
                    "--binary-mode",
                    "--database=" + scratch,
                ],
                stdin=plain.stdout,
                stdout=subprocess.DEVNULL,
            )
        emit("result", engine="mariadb", row_counts=my_counts(acur, scratch), scratch=scratch)
    finally:
        acur.execute("DROP DATABASE IF EXISTS %s" % my_ident(scratch))
        admin.close()


# --------------------------------------------------------------------------- file trees


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


# --------------------------------------------------------------------------- restores
#
# A restore is three requests, so that nothing live is touched before the restored copy
# verified and the current state was saved (DESIGN.md, restores are gated and reversible):
#   "stage":   the artifact on standard input is restored into a stage beside the live
#              target (database pulih_restore_<token>, folder .pulih-restore-<token>) and
#              measured; the live target is only read (its owner and character set);
#   "swap":    the stage takes the live target's place in one atomic step (rename in one
#              transaction, one RENAME TABLE statement, renameat2 RENAME_EXCHANGE), the
#              replaced copy is dropped unless kept, and the new live target is measured;
#   "discard": the stage is removed (after a failure; also what a new attempt does first).


def names(request):
    """Stage, leftover prefix and replaced-copy names of a restore. The stage is unique to the
    attempt (token: request, item and target; nonce: this attempt), so that an agent of a
    killed attempt, still cleaning up, can never remove the stage of the next one."""
    token, nonce = request["token"], request["nonce"]
    if request["engine"] == "files":
        prefix = ".pulih-restore-%s-" % token
        return {"stage": prefix + nonce, "prefix": prefix, "old": ".pulih-old-%s" % token}
    prefix = "pulih_restore_%s_" % token
    return {"stage": prefix + nonce, "prefix": prefix, "old": "pulih_old_%s" % token}


def emit_swapped(engine, request, counts, existed, clock):
    kept = request.get("keep_old") and existed
    emit(
        "result",
        engine=engine,
        row_counts=counts,
        live=request["live"],
        replaced=existed,
        kept_old=names(request)["old"] if kept else None,
        timings=clock.marks,
    )


class Stopwatch:
    """Seconds per phase, for the report: where a restore's time goes."""

    def __init__(self):
        self.marks, self.last = {}, time.monotonic()

    def mark(self, phase):
        now = time.monotonic()
        self.marks[phase] = round(now - self.last, 3)
        self.last = now


def refuse_existing(request, exists):
    if request.get("must_not_exist") and exists:
        raise AgentError(
            "%s already exists on the target: pulih restores elsewhere only into a new %s, "
            "so that nothing there is overwritten"
            % (request["live"], "folder" if request["engine"] == "files" else "database")
        )


def pg_database_info(cur, name):
    cur.execute(
        "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype "
        "FROM pg_database WHERE datname = %s",
        (name,),
    )
    return cur.fetchone()


def pg_drop(cur, name):
    from psycopg2 import sql

    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def pg_restore_jobs(request):
    # One more than cores: while one job waits on its index build another loads (measured
    # 10% faster than as many jobs as cores on 2 cores); more than 8 rarely finds work.
    return int(request.get("jobs") or 0) or min((os.cpu_count() or 1) + 1, 8)


def pg_stage_room(acur, request):
    room = [(database_directory(acur, "SHOW data_directory"), request.get("room_bytes"))]
    if pg_restore_jobs(request) > 1:  # the plain dump waits in scratch space for pg_restore -j
        room.append((request.get("scratch_parent") or tempfile.gettempdir(), request.get("room_bytes")))
    return room


def stage_postgresql(request):
    from psycopg2 import sql

    conn, live, stage = request["conn"], request["live"], names(request)["stage"]
    admin = pg_connect(conn, "postgres")
    admin.autocommit = True
    acur = admin.cursor()
    like = pg_database_info(acur, live)
    refuse_existing(request, like)
    require_pg_restore_for(request.get("dumped_with"))
    acur.execute(
        "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (names(request)["prefix"],)
    )
    for (leftover,) in acur.fetchall():  # of interrupted attempts
        pg_drop(acur, leftover)
    jobs = pg_restore_jobs(request)
    require_room("restore's stage", pg_stage_room(acur, request))
    create = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(stage))
    if like:  # the live database's owner, encoding and locale
        create = sql.SQL("{} OWNER {} ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            create, sql.Identifier(like[0]), sql.Literal(like[1]), sql.Literal(like[2]), sql.Literal(like[3])
        )
    acur.execute(create)
    clock = Stopwatch()
    argv = ["pg_restore", "--exit-on-error", "-d", stage]
    if not request.get("keep_owners", True):
        argv += ["--no-owner", "--no-acl"]
    scratch_file = None
    try:
        with Pipeline() as pipe:
            plain = add_input_stages(pipe, request)
            if jobs > 1:
                # pg_restore -j needs a file it can seek in: the plain dump goes to scratch first.
                fd, scratch_file = tempfile.mkstemp(
                    prefix="pulih-restore-", suffix=".pgdump", dir=request.get("scratch_parent") or None
                )
                with os.fdopen(fd, "wb") as handle:
                    copy_stream(plain.stdout, handle)
            else:
                pipe.add(argv, stdin=plain.stdout, stdout=subprocess.DEVNULL, env=pg_env(conn, stage))
        clock.mark("receive_decompress" if scratch_file else "receive_restore")
        if scratch_file:
            with Pipeline() as pipe:
                pipe.add(
                    [*argv, "-j", str(jobs), scratch_file], stdout=subprocess.DEVNULL, env=pg_env(conn, stage)
                )
            clock.mark("pg_restore")
        db = pg_connect(conn, stage)
        try:
            counts = pg_counts(db.cursor())
        finally:
            db.close()
        clock.mark("count")
    except BaseException:
        pg_drop(acur, stage)
        raise
    finally:
        if scratch_file:
            os.unlink(scratch_file)
        admin.close()
    emit(
        "result",
        engine="postgresql",
        row_counts=counts,
        stage=stage,
        jobs=jobs,
        live_existed=bool(like),
        timings=clock.marks,
    )


def swap_postgresql(request):
    from psycopg2 import sql

    conn, live = request["conn"], request["live"]
    stage, old = names(request)["stage"], names(request)["old"]
    clock = Stopwatch()
    admin = pg_connect(conn, "postgres")
    admin.autocommit = True
    acur = admin.cursor()
    try:
        if not pg_database_info(acur, stage):
            raise AgentError("the restored copy %s is gone: run the restore again" % stage)
        pg_drop(acur, old)  # a leftover of an interrupted earlier swap
        existed = bool(pg_database_info(acur, live))
        rename = sql.SQL("ALTER DATABASE {} RENAME TO {}")
        for attempt in range(50):
            admin.autocommit = False
            try:
                if existed:
                    # Sessions on the live database must end for the rename; a new one arriving
                    # in between makes the rename fail, the transaction roll back, and we try again.
                    acur.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        (live,),
                    )
                    acur.execute(rename.format(sql.Identifier(live), sql.Identifier(old)))
                acur.execute(rename.format(sql.Identifier(stage), sql.Identifier(live)))
                admin.commit()
                break
            except Exception as exc:
                admin.rollback()
                if attempt == 49 or "being accessed by other users" not in str(exc):
                    raise AgentError("cannot swap %s in: %s" % (live, str(exc).strip())) from None
                time.sleep(0.1)
            finally:
                admin.autocommit = True
        clock.mark("swap")
        if existed and not request.get("keep_old"):
            pg_drop(acur, old)
            clock.mark("drop_replaced")
        db = pg_connect(conn, live)
        try:
            counts = pg_counts(db.cursor())
        finally:
            db.close()
        clock.mark("count")
    finally:
        admin.close()
    emit_swapped("postgresql", request, counts, existed, clock)


def discard_postgresql(request):
    admin = pg_connect(request["conn"], "postgres")
    admin.autocommit = True
    try:
        pg_drop(admin.cursor(), names(request)["stage"])
    finally:
        admin.close()
    emit("result", engine="postgresql", discarded=names(request)["stage"])


def my_schema_charset(cur, name):
    cur.execute(
        "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
        "WHERE SCHEMA_NAME = %s",
        (name,),
    )
    return cur.fetchone()


def my_stage_room(acur, request):
    return [(database_directory(acur, "SELECT @@datadir"), request.get("room_bytes"))]


def stage_mariadb(request):
    conn, live, stage = request["conn"], request["live"], names(request)["stage"]
    admin = my_connect(conn)
    acur = admin.cursor()
    my_recover_swap(acur, request)  # before the leftovers go: it may need the stage it names
    like = my_schema_charset(acur, live)
    refuse_existing(request, like)
    prefix = names(request)["prefix"]
    acur.execute(
        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE LEFT(SCHEMA_NAME, %s) = %s",
        (len(prefix), prefix),
    )
    for (leftover,) in acur.fetchall():  # of interrupted attempts
        acur.execute("DROP DATABASE IF EXISTS %s" % my_ident(leftover))
    require_room("restore's stage", my_stage_room(acur, request))
    charset, collation = like or ("utf8mb4", None)
    acur.execute(
        "CREATE DATABASE %s CHARACTER SET %s%s"
        % (my_ident(stage), charset, " COLLATE %s" % collation if collation else "")
    )
    clock = Stopwatch()
    try:
        with Pipeline() as pipe:
            plain = add_input_stages(pipe, request)
            pipe.add(
                [
                    "mariadb" if shutil.which("mariadb") else "mysql",
                    "--defaults-extra-file=" + my_defaults_file(conn),
                    "--binary-mode",
                    "--database=" + stage,
                ],
                stdin=plain.stdout,
                stdout=subprocess.DEVNULL,
            )
        clock.mark("receive_restore")
        counts = my_counts(acur, stage)
        clock.mark("count")
    except BaseException:
        acur.execute("DROP DATABASE IF EXISTS %s" % my_ident(stage))
        raise
    finally:
        admin.close()
    emit(
        "result",
        engine="mariadb",
        row_counts=counts,
        stage=stage,
        live_existed=bool(like),
        timings=clock.marks,
    )


def my_definitions(cur, schema):
    """The schema's triggers, views, routines and events as CREATE statements (unqualified,
    read with the schema as the current database) with the sql_mode each was made under."""
    cur.execute("USE %s" % my_ident(schema))
    found = []  # (kind, name, sql_mode, statement)
    cur.execute("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s", (schema,))
    for (name,) in cur.fetchall():
        cur.execute("SHOW CREATE TRIGGER %s" % my_ident(name))
        row = cur.fetchone()
        found.append(("TRIGGER", name, row[1], row[2]))
    cur.execute("SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s", (schema,))
    for (name,) in cur.fetchall():
        cur.execute("SHOW CREATE VIEW %s" % my_ident(name))
        found.append(("VIEW", name, None, cur.fetchone()[1]))
    cur.execute(
        "SELECT ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s",
        (schema,),
    )
    for kind, name in cur.fetchall():
        cur.execute("SHOW CREATE %s %s" % (kind, my_ident(name)))
        row = cur.fetchone()
        found.append((kind, name, row[1], row[2]))
    cur.execute("SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s", (schema,))
    for (name,) in cur.fetchall():
        cur.execute("SHOW CREATE EVENT %s" % my_ident(name))
        row = cur.fetchone()
        found.append(("EVENT", name, row[1], row[3]))
    return found


def my_drop_definitions(cur, schema, definitions):
    cur.execute("USE %s" % my_ident(schema))
    for kind, name, _, _ in definitions:
        cur.execute("DROP %s IF EXISTS %s" % (kind, my_ident(name)))


def my_create_definitions(cur, schema, definitions):
    cur.execute("USE %s" % my_ident(schema))
    cur.execute("SELECT @@SESSION.sql_mode")
    mode = cur.fetchone()[0]
    pending = list(definitions)
    while pending:  # views on views: repeat until everything is made or nothing more can be
        failed = []
        for kind, name, sql_mode, statement in pending:
            cur.execute("SET SESSION sql_mode = %s", (sql_mode if sql_mode is not None else mode,))
            try:
                cur.execute(statement)
            except Exception as exc:
                failed.append((kind, name, sql_mode, statement, exc))
        if len(failed) == len(pending):
            raise AgentError(
                "cannot recreate %s" % ", ".join("%s %s (%s)" % (f[0], f[1], f[4]) for f in failed)
            )
        pending = [f[:4] for f in failed]
    cur.execute("SET SESSION sql_mode = %s", (mode,))


def my_base_tables(cur, schema):
    cur.execute(
        "SELECT TABLE_NAME FROM information_schema.TABLES "
        "WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'BASE TABLE'",
        (schema,),
    )
    return [row[0] for row in cur.fetchall()]


MY_JOURNAL = "pulih_swap_journal"


def fault_point(request, name):
    """Tests only: the agent dies here (SIGKILL) when the request names this point, to prove
    that an interruption at exactly this place leaves the target as it was."""
    if request.get("fault") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def my_rename_tables(cur, *moves):
    """Move tables between schemas in one RENAME TABLE statement: each move is
    (from_schema, to_schema, tables)."""
    pairs = [
        "%s.%s TO %s.%s" % (my_ident(source), my_ident(t), my_ident(dest), my_ident(t))
        for source, dest, tables in moves
        for t in tables
    ]
    if pairs:
        cur.execute("RENAME TABLE " + ", ".join(pairs))


def my_create_schema(cur, name, charset):
    cur.execute("CREATE DATABASE %s CHARACTER SET %s COLLATE %s" % (my_ident(name), charset[0], charset[1]))


def my_recover_swap(cur, request):
    """Undo a swap that was interrupted (killed, or failed) before it finished, from the
    journal it left in the replaced copy's schema: the live schema gets its own tables back,
    with its triggers, views, routines and events. Returns True when there was one."""
    old = names(request)["old"]
    cur.execute(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
        (old, MY_JOURNAL),
    )
    if not cur.fetchone()[0]:
        return False
    cur.execute("SELECT doc FROM %s.%s" % (my_ident(old), MY_JOURNAL))
    row = cur.fetchone()
    if row is None:  # killed between creating the journal and writing it: nothing changed yet
        cur.execute("DROP DATABASE %s" % my_ident(old))
        return True
    doc = json.loads(row[0])
    live, stage = doc["live"], doc["stage"]
    in_old = set(my_base_tables(cur, old))
    in_live = set(my_base_tables(cur, live)) if my_schema_charset(cur, live) else set()
    # RENAME TABLE is atomic: either every table moved or none did.
    renamed = (doc["live_tables"] and set(doc["live_tables"]) <= in_old) or (
        not doc["live_tables"] and doc["stage_tables"] and set(doc["stage_tables"]) <= in_live
    )
    if renamed:
        my_drop_definitions(cur, live, my_definitions(cur, live))
        if not my_schema_charset(cur, stage):
            cur.execute("CREATE DATABASE %s" % my_ident(stage))
        my_rename_tables(
            cur,
            (live, stage, [t for t in doc["stage_tables"] if t in in_live]),
            (old, live, doc["live_tables"]),
        )
    if doc["existed"]:
        present = {(d[0], d[1]) for d in my_definitions(cur, live)}
        missing = [tuple(d) for d in doc["live_definitions"] if (d[0], d[1]) not in present]
        my_create_definitions(cur, live, missing)
    elif my_schema_charset(cur, live) and not my_base_tables(cur, live):
        cur.execute("DROP DATABASE %s" % my_ident(live))  # the swap made it
    cur.execute("DROP DATABASE %s" % my_ident(old))
    return True


def swap_mariadb(request):
    """The tables change places in one RENAME TABLE statement (atomic in MariaDB and MySQL).
    Triggers cannot move between schemas and views, routines and events stay in theirs: the
    live triggers are dropped just before the rename, the other live objects just after, and
    the backup's are recreated. A journal in the replaced copy's schema, written before the
    first change, lets an interrupted swap be undone (my_recover_swap): by this agent on an
    error, and by the next request for this target after a kill."""
    conn, live = request["conn"], request["live"]
    stage, old = names(request)["stage"], names(request)["old"]
    clock = Stopwatch()
    admin = my_connect(conn)
    cur = admin.cursor()
    try:
        my_recover_swap(cur, request)
        charset = my_schema_charset(cur, stage)
        if not charset:
            raise AgentError("the restored copy %s is gone: run the restore again" % stage)
        existed = bool(my_schema_charset(cur, live))
        restored = my_definitions(cur, stage)
        current = my_definitions(cur, live) if existed else []
        live_tables = my_base_tables(cur, live) if existed else []
        stage_tables = my_base_tables(cur, stage)
        cur.execute("DROP DATABASE IF EXISTS %s" % my_ident(old))
        my_create_schema(cur, old, charset)
        cur.execute("CREATE TABLE %s.%s (doc LONGTEXT NOT NULL)" % (my_ident(old), MY_JOURNAL))
        journal = {
            "live": live,
            "stage": stage,
            "existed": existed,
            "live_tables": live_tables,
            "stage_tables": stage_tables,
            "live_definitions": current,
        }
        cur.execute("INSERT INTO %s.%s VALUES (%%s)" % (my_ident(old), MY_JOURNAL), (json.dumps(journal),))
        try:
            my_drop_definitions(cur, stage, [d for d in restored if d[0] == "TRIGGER"])
            if existed:
                my_drop_definitions(cur, live, [d for d in current if d[0] == "TRIGGER"])
            else:
                my_create_schema(cur, live, charset)
            fault_point(request, "mariadb_swap_before_rename")
            my_rename_tables(cur, (live, old, live_tables), (stage, live, stage_tables))
            fault_point(request, "mariadb_swap_after_rename")
            my_drop_definitions(cur, live, [d for d in current if d[0] != "TRIGGER"])
            my_create_definitions(cur, live, restored)
        except BaseException:
            my_recover_swap(cur, request)
            raise
        cur.execute("DROP TABLE %s.%s" % (my_ident(old), MY_JOURNAL))  # done: nothing to undo
        clock.mark("swap")
        cur.execute("DROP DATABASE %s" % my_ident(stage))
        if not (existed and request.get("keep_old")):
            cur.execute("DROP DATABASE IF EXISTS %s" % my_ident(old))
        clock.mark("drop_replaced")
        counts = my_counts(cur, live)
        clock.mark("count")
    finally:
        admin.close()
    emit_swapped("mariadb", request, counts, existed, clock)


def discard_mariadb(request):
    admin = my_connect(request["conn"])
    try:
        cur = admin.cursor()
        my_recover_swap(cur, request)  # first: a swap interrupted mid-way is undone from its stage
        cur.execute("DROP DATABASE IF EXISTS %s" % my_ident(names(request)["stage"]))
    finally:
        admin.close()
    emit("result", engine="mariadb", discarded=names(request)["stage"])


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
    stage = beside(live, names(request)["stage"])
    refuse_existing(request, os.path.lexists(live))
    parent = os.path.dirname(stage)
    os.makedirs(parent, exist_ok=True)
    for leftover in os.listdir(parent):  # of interrupted attempts
        if leftover.startswith(names(request)["prefix"]):
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
    stage, old = beside(live, names(request)["stage"]), beside(live, names(request)["old"])
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
    stage = beside(request["live"], names(request)["stage"])
    shutil.rmtree(stage, ignore_errors=True)
    emit("result", engine="files", discarded=stage)


# --------------------------------------------------------------------------- preflight
#
# Before a dump, a verification or a stage reads or writes a byte, the agent checks that
# this server has what the request needs, and says all that is missing at once (a person
# installs it in one go), with the Debian package that brings it.

OLDEST_PYTHON = (3, 9)
PACKAGES = {
    "zstd": "zstd",
    "age": "age",
    "pg_dump": "postgresql-client",
    "pg_dumpall": "postgresql-client",
    "pg_restore": "postgresql-client",
    "mariadb-dump": "mariadb-client",
    "mariadb": "mariadb-client",
    "tar": "tar",
    "psycopg2": "python3-psycopg2",
    "pymysql": "python3-pymysql",
}
# (mode, engine) -> commands (alternatives joined by "|") and Python modules it runs.
NEEDS = {
    ("dump", "postgresql"): (["pg_dump"], ["psycopg2"]),
    ("dump", "pg_globals"): (["pg_dumpall"], []),
    ("dump", "mariadb"): (["mariadb-dump|mysqldump"], ["pymysql"]),
    ("dump", "files"): (["tar"], []),
    ("verify", "postgresql"): (["pg_restore"], ["psycopg2"]),
    ("verify", "mariadb"): (["mariadb|mysql"], ["pymysql"]),
    ("verify", "files"): (["tar"], []),
}
for _key in list(NEEDS):
    if _key[1] != "pg_globals":
        NEEDS[("stage", _key[1])] = NEEDS[("verify", _key[1])]
for _key in [k for k in NEEDS if k[1] == "mariadb"]:
    NEEDS[(_key[0], "mysql")] = NEEDS[_key]


def missing_tools(mode, engine, request):
    """What of the request's commands and Python modules this server lacks."""
    commands, modules = NEEDS.get((mode, engine), ([], []))
    commands = ["zstd", *commands]
    if request.get("recipients") if mode == "dump" else request.get("encrypted"):
        commands.append("age")
    missing = []
    for command in commands:
        choices = command.split("|")
        if not any(shutil.which(choice) for choice in choices):
            missing.append(choices[0])
    for name in modules:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    return missing


def tools_problem(mode, engine, request):
    """What this server lacks to run the request, in one sentence; None when nothing."""
    if sys.version_info < OLDEST_PYTHON:
        return "this server's Python is %d.%d; the agent needs %d.%d or later (set pulih_common_python)" % (
            sys.version_info[:2] + OLDEST_PYTHON
        )
    missing = missing_tools(mode, engine, request)
    if not missing:
        return None
    packages = sorted({PACKAGES.get(name, name) for name in missing})
    return (
        "missing on this server: %s (Debian packages: %s; or put the commands on pulih_common_tool_path)"
        % (
            ", ".join(missing),
            " ".join(packages),
        )
    )


def require_tools(mode, engine, request):
    problem = tools_problem(mode, engine, request)
    if problem:
        raise AgentError(problem)


def major_version(text):
    """The major version in a tool's or server's version line ("pg_dump (PostgreSQL) 15.8",
    "15.8 (Debian 15.8-0+deb12u1)", "9.6.24"): 15, 15, 9."""
    for word in (text or "").replace("(", " ").split():
        head = word.split(".")[0]
        if head.isdigit():
            return int(head)
    return None


def require_pg_dump_for(server_version):
    """pg_dump refuses a server newer than itself; say so before a dump starts."""
    tool = tool_version(["pg_dump", "--version"])
    have, need = major_version(tool), major_version(server_version)
    if have is not None and need is not None and have < need:
        raise AgentError(
            "this server's pg_dump is %s but the PostgreSQL server is %s: install postgresql-client-%d "
            "(pg_dump must be at least the server's major version)" % (have, server_version, need)
        )


def pg_restore_problem(dumped_with):
    """pg_restore cannot read an archive written by a newer pg_dump."""
    tool = tool_version(["pg_restore", "--version"])
    have, need = major_version(tool), major_version(dumped_with)
    if have is not None and need is not None and have < need:
        return (
            "this server's pg_restore is %s but the backup was written by %s: "
            "install postgresql-client-%d or later here" % (have, dumped_with, need)
        )
    return None


def require_pg_restore_for(dumped_with):
    problem = pg_restore_problem(dumped_with)
    if problem:
        raise AgentError(problem)


def free_bytes(path):
    """Bytes an unprivileged writer may still use on the filesystem holding `path` (or its
    nearest existing parent)."""
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    info = os.statvfs(path or "/")
    return info.f_bavail * info.f_frsize


def gib(count):
    return (
        "%.1f GiB" % (count / float(1 << 30)) if count >= 1 << 27 else "%.1f MiB" % (count / float(1 << 20))
    )


def room_problem(where, needs):
    """Whether a filesystem cannot hold what goes there. `needs` is a list of (path, bytes);
    paths on one filesystem add up. A path that is not absolute (a database whose server
    runs elsewhere) is not checked here."""
    by_device = {}
    for path, need in needs:
        if not need or not path or not os.path.isabs(path):
            continue
        while not os.path.exists(path):
            path = os.path.dirname(path)
        entry = by_device.setdefault(os.stat(path).st_dev, [path, 0])
        entry[1] += int(need)
    for path, need in by_device.values():
        have = free_bytes(path)
        if have < need:
            return (
                "not enough room for the %s: %s free at %s, it needs about %s (the backup's size at "
                "dump time plus pulih_common_space_margin_percent); free space there first"
                % (where, gib(have), path, gib(need))
            )
    return None


def require_room(where, needs):
    problem = room_problem(where, needs)
    if problem:
        raise AgentError(problem + ", nothing was touched")


def database_directory(cur, query):
    """The server's data directory when this agent can see it (the server runs here)."""
    try:
        cur.execute(query)
        row = cur.fetchone()
    except Exception:  # a backup account that may not read it: the room is not checked
        return None
    path = row[0] if row else None
    return path if path and os.path.isdir(path) else None


# --------------------------------------------------------------------------- main

DUMPS = {
    "postgresql": dump_postgresql,
    "pg_globals": dump_pg_globals,
    "mariadb": dump_mariadb,
    "mysql": dump_mariadb,
    "files": dump_files,
}
VERIFIES = {
    "postgresql": verify_postgresql,
    "mariadb": verify_mariadb,
    "mysql": verify_mariadb,
    "files": verify_files,
}


def probe(request):
    """Before a restore touches anything: whether its target exists (an alternate target
    must not), and what would stop its stage here (missing tools, too little room)."""
    engine, live = request["engine"], request["live"]
    problems = [tools_problem("stage", engine, request)]
    if engine == "postgresql" and not problems[0]:
        problems.append(pg_restore_problem(request.get("dumped_with")))
    if problems[0]:  # without its client library the database cannot even be asked
        emit("result", engine=engine, live=live, exists=None, problems=problems[:1])
        return
    if engine == "files":
        exists = os.path.lexists(live)
        room = files_stage_room(request)
    elif engine == "postgresql":
        admin = pg_connect(request["conn"], "postgres")
        try:
            exists = bool(pg_database_info(admin.cursor(), live))
            room = pg_stage_room(admin.cursor(), request)
        finally:
            admin.close()
    else:
        admin = my_connect(request["conn"])
        try:
            my_recover_swap(admin.cursor(), request)
            exists = bool(my_schema_charset(admin.cursor(), live))
            room = my_stage_room(admin.cursor(), request)
        finally:
            admin.close()
    problems.append(room_problem("restore's stage", room))
    emit("result", engine=engine, live=live, exists=exists, problems=[p for p in problems if p])


STAGES = {
    "postgresql": stage_postgresql,
    "mariadb": stage_mariadb,
    "mysql": stage_mariadb,
    "files": stage_files,
}
SWAPS = {"postgresql": swap_postgresql, "mariadb": swap_mariadb, "mysql": swap_mariadb, "files": swap_files}
DISCARDS = {
    "postgresql": discard_postgresql,
    "mariadb": discard_mariadb,
    "mysql": discard_mariadb,
    "files": discard_files,
}
PROBES = dict.fromkeys(("postgresql", "mariadb", "mysql", "files"), probe)
MODES = {
    "dump": DUMPS,
    "verify": VERIFIES,
    "stage": STAGES,
    "swap": SWAPS,
    "discard": DISCARDS,
    "probe": PROBES,
}


def read_request():
    line = b""
    while not line.endswith(b"\n"):
        char = os.read(0, 1)  # byte by byte: what follows the line is the artifact
        if not char:
            break
        line += char
    if not line.strip():
        raise AgentError("no request on standard input")
    return json.loads(line.decode("utf-8"))


def main():
    started = time.time()
    try:
        request = read_request()
        mode, engine = request.get("mode"), request.get("engine")
        tool_path = [str(folder) for folder in request.get("tool_path") or [] if os.path.isabs(str(folder))]
        if tool_path:  # the operator's folders first: a pg_dump of the server's major version
            os.environ["PATH"] = os.pathsep.join([*tool_path, os.environ.get("PATH", os.defpath)])
        table = MODES.get(mode)
        if table is None or engine not in table:
            raise AgentError("unknown request: mode %r, engine %r" % (mode, engine))
        if mode in ("dump", "verify", "stage"):
            require_tools(mode, engine, request)
        table[engine](request)
    except AgentError as exc:
        sys.stderr.write("pulih agent: %s\n" % exc)
        return 3
    except Exception as exc:  # report, with the class, and fail the item
        sys.stderr.write("pulih agent: %s: %s\n" % (type(exc).__name__, exc))
        return 4
    finally:
        emit("timing", seconds=round(time.time() - started, 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""pulih agent: the part of a backup, verification or restore that runs on a data
server, started over SSH by the repository host (pulih.core.agent_stream).

Protocol. The first line of standard input is a JSON request (it carries the
database password and any age identity, which therefore never appear in a process
list). Then:
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
import json
import os
import shutil
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
            proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, env=env)
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


def add_input_stages(pipe, request, identity_file):
    """age -d when encrypted, then zstd -d, reading our standard input."""
    stdin = sys.stdin.buffer
    if request.get("encrypted"):
        if not identity_file:
            raise AgentError("the backup is encrypted and no age identity was given")
        age = pipe.add(["age", "-d", "-i", identity_file], stdin=stdin)
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
    for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER"), ("password", "PGPASSWORD")):
        if conn.get(key) not in (None, ""):
            env[var] = str(conn[key])
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
    cur.execute("SELECT pg_export_snapshot(), current_setting('server_version')")
    snapshot, server_version = cur.fetchone()
    try:
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


def verify_postgresql(request, identity_file):
    conn, scratch = request["conn"], request["scratch_database"]
    from psycopg2 import sql

    admin = pg_connect(conn, "postgres")
    admin.autocommit = True
    acur = admin.cursor()
    acur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch)))
    acur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    try:
        with Pipeline() as pipe:
            plain = add_input_stages(pipe, request, identity_file)
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


def my_defaults_file(conn, tmpdir):
    """Client options in a private file, so the password is in no argv and no environment."""

    def quoted(value):
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
    path = os.path.join(tmpdir, "client.cnf")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


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
    tmpdir = tempfile.mkdtemp(prefix="pulih-")
    locked = False
    try:
        with Pipeline() as pipe:
            cur.execute("SELECT VERSION()")
            server_version = cur.fetchone()[0]
            cur.execute("SET SESSION lock_wait_timeout = %s", (int(request.get("lock_wait_timeout", 30)),))
            # Writes stop from here until both snapshots exist (ours for the counts and
            # mariadb-dump's): a moment, the same lock mariadb-dump --master-data takes.
            cur.execute("FLUSH TABLES WITH READ LOCK")
            locked = True
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            argv = [
                "mariadb-dump" if shutil.which("mariadb-dump") else "mysqldump",
                "--defaults-extra-file=" + my_defaults_file(conn, tmpdir),
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
            counter = {}
            thread = threading.Thread(target=lambda: counter.update(my_counts(cur, database)))
            thread.start()
            copy_stream(dump.stdout, sink)
            sink.close()
            thread.join()
    finally:
        if locked:
            cur.execute("UNLOCK TABLES")
        db.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
    emit(
        "result",
        engine="mariadb",
        server_version=server_version,
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


def verify_mariadb(request, identity_file):
    conn, scratch = request["conn"], request["scratch_database"]
    admin = my_connect(conn)
    acur = admin.cursor()
    acur.execute("DROP DATABASE IF EXISTS %s" % my_ident(scratch))
    acur.execute("CREATE DATABASE %s CHARACTER SET utf8mb4" % my_ident(scratch))
    tmpdir = tempfile.mkdtemp(prefix="pulih-")
    try:
        with Pipeline() as pipe:
            plain = add_input_stages(pipe, request, identity_file)
            client = "mariadb" if shutil.which("mariadb") else "mysql"
            pipe.add(
                [
                    client,
                    "--defaults-extra-file=" + my_defaults_file(conn, tmpdir),
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
        shutil.rmtree(tmpdir, ignore_errors=True)


# --------------------------------------------------------------------------- file trees


class HashingReader:
    def __init__(self, handle):
        self.handle = handle
        self.digest = hashlib.sha256()

    def read(self, size=-1):
        data = self.handle.read(size)
        self.digest.update(data)
        return data


def excluded(relative, patterns):
    return any(
        fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(os.path.basename(relative), p) for p in patterns
    )


def dump_files(request):
    root = request["path"].rstrip("/") or "/"
    patterns = request.get("exclude") or []
    if not os.path.isdir(root):
        raise AgentError("%s is not a directory" % root)
    files = size = 0
    with Pipeline() as pipe:
        add_output_stages(pipe, request, subprocess.PIPE)
        sink = pipe.procs[0][1].stdin  # zstd's
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for current, dirs, names in os.walk(root):
                dirs.sort()
                for name in sorted(dirs) + sorted(names):
                    full = os.path.join(current, name)
                    relative = os.path.relpath(full, root)
                    if excluded(relative, patterns):
                        if name in dirs:
                            dirs.remove(name)
                        continue
                    info = tar.gettarinfo(full, arcname=relative)
                    if info is None:  # sockets and the like
                        continue
                    if info.isreg():
                        with open(full, "rb") as handle:
                            reader = HashingReader(handle)
                            tar.addfile(info, reader)
                        emit(
                            "file",
                            path=relative,
                            type="file",
                            size=info.size,
                            sha256=reader.digest.hexdigest(),
                        )
                        files += 1
                        size += info.size
                    else:
                        tar.addfile(info)
                        kind = "dir" if info.isdir() else "symlink" if info.issym() else "other"
                        emit("file", path=relative, type=kind, target=info.linkname if info.issym() else None)
        sink.close()
    emit(
        "result",
        engine="files",
        files=files,
        bytes=size,
        tools={"tar": "python tarfile (POSIX pax)", "zstd": tool_version(["zstd", "--version"])},
    )


def safe_members(tar, target):
    """Refuse members that would land outside the scratch folder."""
    base = os.path.realpath(target)
    for member in tar:
        path = os.path.realpath(os.path.join(base, member.name))
        if not (path == base or path.startswith(base + os.sep)) or member.isdev():
            raise AgentError("archive member %r would land outside the restore folder" % member.name)
        if member.islnk():
            link = os.path.realpath(os.path.join(base, member.linkname))
            if not link.startswith(base + os.sep):
                raise AgentError("hard link %r points outside the restore folder" % member.name)
        yield member


def list_tree(root):
    entries = []
    for current, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(dirs) + sorted(names):
            full = os.path.join(current, name)
            relative = os.path.relpath(full, root)
            mode = os.lstat(full).st_mode
            if stat.S_ISREG(mode):
                digest = hashlib.sha256()
                with open(full, "rb") as handle:
                    for block in iter(lambda: handle.read(CHUNK), b""):
                        digest.update(block)
                entries.append(
                    {
                        "path": relative,
                        "type": "file",
                        "size": os.path.getsize(full),
                        "sha256": digest.hexdigest(),
                    }
                )
            elif stat.S_ISDIR(mode):
                entries.append({"path": relative, "type": "dir"})
            elif stat.S_ISLNK(mode):
                entries.append({"path": relative, "type": "symlink", "target": os.readlink(full)})
    return entries


def verify_files(request, identity_file):
    parent = request.get("scratch_parent") or tempfile.gettempdir()
    scratch = tempfile.mkdtemp(prefix="pulih-verify-", dir=parent)
    try:
        with Pipeline() as pipe:
            plain = add_input_stages(pipe, request, identity_file)
            with tarfile.open(fileobj=plain.stdout, mode="r|") as tar:
                for member in safe_members(tar, scratch):
                    tar.extract(member, scratch, set_attrs=True)
        entries = list_tree(scratch)
        for entry in entries:
            emit("file", **entry)
        emit("result", engine="files", files=sum(1 for e in entries if e["type"] == "file"), scratch=scratch)
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


def stage_postgresql(request, identity_file):
    from psycopg2 import sql

    conn, live, stage = request["conn"], request["live"], names(request)["stage"]
    admin = pg_connect(conn, "postgres")
    admin.autocommit = True
    acur = admin.cursor()
    like = pg_database_info(acur, live)
    refuse_existing(request, like)
    acur.execute(
        "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (names(request)["prefix"],)
    )
    for (leftover,) in acur.fetchall():  # of interrupted attempts
        pg_drop(acur, leftover)
    create = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(stage))
    if like:  # the live database's owner, encoding and locale
        create = sql.SQL("{} OWNER {} ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            create, sql.Identifier(like[0]), sql.Literal(like[1]), sql.Literal(like[2]), sql.Literal(like[3])
        )
    acur.execute(create)
    # One job more than cores: while one job waits on its index build another loads (measured
    # 10% faster than as many jobs as cores on 2 cores); more than 8 rarely finds work.
    jobs = int(request.get("jobs") or 0) or min((os.cpu_count() or 1) + 1, 8)
    clock = Stopwatch()
    argv = ["pg_restore", "--exit-on-error", "-d", stage]
    if not request.get("keep_owners", True):
        argv += ["--no-owner", "--no-acl"]
    scratch_file = None
    try:
        with Pipeline() as pipe:
            plain = add_input_stages(pipe, request, identity_file)
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


def stage_mariadb(request, identity_file):
    conn, live, stage = request["conn"], request["live"], names(request)["stage"]
    admin = my_connect(conn)
    acur = admin.cursor()
    like = my_schema_charset(acur, live)
    refuse_existing(request, like)
    prefix = names(request)["prefix"]
    acur.execute(
        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE LEFT(SCHEMA_NAME, %s) = %s",
        (len(prefix), prefix),
    )
    for (leftover,) in acur.fetchall():  # of interrupted attempts
        acur.execute("DROP DATABASE IF EXISTS %s" % my_ident(leftover))
    charset, collation = like or ("utf8mb4", None)
    acur.execute(
        "CREATE DATABASE %s CHARACTER SET %s%s"
        % (my_ident(stage), charset, " COLLATE %s" % collation if collation else "")
    )
    clock = Stopwatch()
    tmpdir = tempfile.mkdtemp(prefix="pulih-")
    try:
        with Pipeline() as pipe:
            plain = add_input_stages(pipe, request, identity_file)
            pipe.add(
                [
                    "mariadb" if shutil.which("mariadb") else "mysql",
                    "--defaults-extra-file=" + my_defaults_file(conn, tmpdir),
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
        shutil.rmtree(tmpdir, ignore_errors=True)
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


def swap_mariadb(request):
    """The tables change places in one RENAME TABLE statement (atomic in MariaDB and MySQL).
    Triggers, views, routines and events cannot move between schemas: the live ones are
    dropped (the pre-restore backup holds them) and the backup's are recreated."""
    conn, live = request["conn"], request["live"]
    stage, old = names(request)["stage"], names(request)["old"]
    clock = Stopwatch()
    admin = my_connect(conn)
    cur = admin.cursor()
    try:
        charset = my_schema_charset(cur, stage)
        if not charset:
            raise AgentError("the restored copy %s is gone: run the restore again" % stage)
        existed = bool(my_schema_charset(cur, live))
        restored = my_definitions(cur, stage)
        my_drop_definitions(cur, stage, [d for d in restored if d[0] == "TRIGGER"])
        moves = []
        if existed:
            current = my_definitions(cur, live)
            my_drop_definitions(cur, live, current)
            cur.execute("DROP DATABASE IF EXISTS %s" % my_ident(old))
            cur.execute(
                "CREATE DATABASE %s CHARACTER SET %s COLLATE %s" % (my_ident(old), charset[0], charset[1])
            )
            moves += [
                "%s.%s TO %s.%s" % (my_ident(live), my_ident(t), my_ident(old), my_ident(t))
                for t in my_base_tables(cur, live)
            ]
        else:
            cur.execute(
                "CREATE DATABASE %s CHARACTER SET %s COLLATE %s" % (my_ident(live), charset[0], charset[1])
            )
        moves += [
            "%s.%s TO %s.%s" % (my_ident(stage), my_ident(t), my_ident(live), my_ident(t))
            for t in my_base_tables(cur, stage)
        ]
        if moves:
            cur.execute("RENAME TABLE " + ", ".join(moves))
        my_create_definitions(cur, live, restored)
        clock.mark("swap")
        cur.execute("DROP DATABASE %s" % my_ident(stage))
        if existed and not request.get("keep_old"):
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
        admin.cursor().execute("DROP DATABASE IF EXISTS %s" % my_ident(names(request)["stage"]))
    finally:
        admin.close()
    emit("result", engine="mariadb", discarded=names(request)["stage"])


def beside(live, name):
    """A folder next to the live one, so the swap is a rename within one filesystem."""
    live = os.path.normpath(live)
    if live == "/" or not os.path.isabs(live):
        raise AgentError("%r cannot be restored in place: give an absolute path other than /" % live)
    return os.path.join(os.path.dirname(live), name)


def stage_files(request, identity_file):
    live = os.path.normpath(request["live"])
    stage = beside(live, names(request)["stage"])
    refuse_existing(request, os.path.lexists(live))
    parent = os.path.dirname(stage)
    os.makedirs(parent, exist_ok=True)
    for leftover in os.listdir(parent):  # of interrupted attempts
        if leftover.startswith(names(request)["prefix"]):
            shutil.rmtree(os.path.join(parent, leftover), ignore_errors=True)
    os.mkdir(stage, 0o700)
    try:
        with Pipeline() as pipe:
            plain = add_input_stages(pipe, request, identity_file)
            with tarfile.open(fileobj=plain.stdout, mode="r|") as tar:
                for member in safe_members(tar, stage):
                    tar.extract(member, stage, set_attrs=True)
        if os.path.isdir(live):  # the folder itself keeps the live one's owner and mode
            info = os.stat(live)
            os.chmod(stage, stat.S_IMODE(info.st_mode))
            if os.geteuid() == 0:
                os.chown(stage, info.st_uid, info.st_gid)
        else:
            os.chmod(stage, 0o755)
        entries = list_tree(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    for entry in entries:
        emit("file", **entry)
    emit(
        "result",
        engine="files",
        files=sum(1 for e in entries if e["type"] == "file"),
        stage=stage,
        live_existed=os.path.lexists(live),
    )


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
    if not os.path.isdir(stage):
        raise AgentError("the restored copy %s is gone: run the restore again" % stage)
    shutil.rmtree(old, ignore_errors=True)
    existed = os.path.lexists(live)
    if not existed:
        os.rename(stage, live)
    elif exchange(stage, live):
        os.rename(stage, old)  # the stage's name now holds the replaced tree
    else:  # a filesystem without RENAME_EXCHANGE: two renames, the live name missing in between
        os.rename(live, old)
        os.rename(stage, live)
    if existed and not request.get("keep_old"):
        shutil.rmtree(old)
    entries = list_tree(live)
    for entry in entries:
        emit("file", **entry)
    emit(
        "result",
        engine="files",
        files=sum(1 for e in entries if e["type"] == "file"),
        live=live,
        replaced=existed,
        kept_old=old if existed and request.get("keep_old") else None,
    )


def discard_files(request):
    stage = beside(request["live"], names(request)["stage"])
    shutil.rmtree(stage, ignore_errors=True)
    emit("result", engine="files", discarded=stage)


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
    """Whether the restore's target exists (an alternate target must not)."""
    engine, live = request["engine"], request["live"]
    if engine == "files":
        exists = os.path.lexists(live)
    elif engine == "postgresql":
        admin = pg_connect(request["conn"], "postgres")
        try:
            exists = bool(pg_database_info(admin.cursor(), live))
        finally:
            admin.close()
    else:
        admin = my_connect(request["conn"])
        try:
            exists = bool(my_schema_charset(admin.cursor(), live))
        finally:
            admin.close()
    emit("result", engine=engine, live=live, exists=exists)


# Requests that read the artifact from standard input take the age identity too.
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
WITH_INPUT = ("verify", "stage")


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
    identity_file = None
    try:
        request = read_request()
        mode, engine = request.get("mode"), request.get("engine")
        table = MODES.get(mode)
        if table is None or engine not in table:
            raise AgentError("unknown request: mode %r, engine %r" % (mode, engine))
        if request.get("identity"):
            fd, identity_file = tempfile.mkstemp(prefix="pulih-id-")
            with os.fdopen(fd, "w") as handle:
                handle.write(request["identity"])
        if mode in WITH_INPUT:
            table[engine](request, identity_file)
        else:
            table[engine](request)
    except AgentError as exc:
        sys.stderr.write("pulih agent: %s\n" % exc)
        return 3
    except Exception as exc:  # report, with the class, and fail the item
        sys.stderr.write("pulih agent: %s: %s\n" % (type(exc).__name__, exc))
        return 4
    finally:
        if identity_file:
            os.unlink(identity_file)
        emit("timing", seconds=round(time.time() - started, 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())

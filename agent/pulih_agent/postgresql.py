"""PostgreSQL: dump (pg_dump in the snapshot the row counts see), the cluster's roles,
a test restore, and a restore's stage, swap and discard."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

from .pipeline import Pipeline, add_input_stages, add_output_stages, copy_stream, secret_fds, secret_path
from .preflight import database_directory, require_pg_dump_for, require_pg_restore_for, require_room
from .protocol import AgentError, emit, tool_version
from .restore import Stopwatch, emit_swapped, refuse_existing, stage_names


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
            "cannot connect to PostgreSQL database %r: %s" % (kwargs["dbname"], " ".join(str(exc).split()))
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

    conn, live, stage = request["conn"], request["live"], stage_names(request)["stage"]
    admin = pg_connect(conn, "postgres")
    admin.autocommit = True
    acur = admin.cursor()
    like = pg_database_info(acur, live)
    refuse_existing(request, like)
    require_pg_restore_for(request.get("dumped_with"))
    acur.execute(
        "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (stage_names(request)["prefix"],)
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
    stage, old = stage_names(request)["stage"], stage_names(request)["old"]
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
        pg_drop(admin.cursor(), stage_names(request)["stage"])
    finally:
        admin.close()
    emit("result", engine="postgresql", discarded=stage_names(request)["stage"])

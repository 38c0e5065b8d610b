"""MariaDB and MySQL: dump (mariadb-dump with row counts from the same moment), a test
restore, and a restore's stage, journaled swap (undone after an interruption) and discard."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading

from .pipeline import Pipeline, add_input_stages, add_output_stages, copy_stream, secret_path
from .preflight import database_directory, require_room
from .protocol import AgentError, emit, tool_version
from .restore import Stopwatch, emit_swapped, fault_point, refuse_existing, stage_names


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
    # mariadb-dump silently leaves out a routine whose body the account cannot read.
    my_definitions(cur, database)
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
    conn, live, stage = request["conn"], request["live"], stage_names(request)["stage"]
    admin = my_connect(conn)
    acur = admin.cursor()
    my_recover_swap(acur, request)  # before the leftovers go: it may need the stage it names
    like = my_schema_charset(acur, live)
    refuse_existing(request, like)
    prefix = stage_names(request)["prefix"]
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
        if row[2] is None:  # the account sees the routine but not its body: refuse, never lose it
            raise AgentError(
                "cannot read the body of %s %s.%s: the account needs SELECT ON mysql.proc "
                "(README, Real servers), or the routine would be left out of the backup or lost "
                "at the swap" % (kind.lower(), schema, name)
            )
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
    old = stage_names(request)["old"]
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
    stage, old = stage_names(request)["stage"], stage_names(request)["old"]
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
        cur.execute("DROP DATABASE IF EXISTS %s" % my_ident(stage_names(request)["stage"]))
    finally:
        admin.close()
    emit("result", engine="mariadb", discarded=stage_names(request)["stage"])

"""The record: requests, their steps, runs and the audit log.

SQLAlchemy Core on SQLite by default (one file in the state directory) or PostgreSQL by
URL, for a control node several operators share. The schema carries a version; opening an
older store upgrades it in place, step by step, in one transaction per step.

The audit log is append-only and tamper-evident: every entry stores the SHA-256 of its own
content and of the entry before it, so an edited, deleted or reordered entry breaks the
chain where it happened (:func:`Store.verify_audit`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pulih.anchors import (
    ROTATION,
    Anchor,
    AnchorError,
    AuditKey,
    PublicAuditKey,
    problems_against,
    rotation_text,
)

SCHEMA_VERSION = 10
GENESIS = "0" * 64

metadata = sa.MetaData()

meta_table = sa.Table(
    "pulih_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
requests_table = sa.Table(
    "pulih_requests",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("procedure", sa.String(16), nullable=False),  # recovery (A) | backup_restore (B)
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("requester", sa.String(128), nullable=False),
    sa.Column("skpd", sa.String(128), nullable=False),
    sa.Column("contact", sa.Text, nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("reason_text", sa.Text, nullable=False),
    sa.Column("restore_point", sa.String(32)),
    sa.Column("target", sa.Text, nullable=False),  # JSON
    sa.Column("scope", sa.Text, nullable=False),  # JSON: [{"asset_id", "item"}]
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("approved_by", sa.String(128)),
    sa.Column("approved_at", sa.String(32)),
    sa.Column("approval_expires_at", sa.String(32)),
    sa.Column("rejected_reason", sa.Text),
    sa.Column("plan", sa.Text),  # JSON
    sa.Column("assessment", sa.Text),  # JSON (Form PD)
    sa.Column("backups_found", sa.Text),  # JSON
    # Added in schema version 10: what the request asks for (restore | backup, SOP B's two
    # kinds), and a backup request's backups as its runs made them (JSON {ASSET:ITEM: ID}).
    sa.Column("kind", sa.String(16), nullable=False, server_default="restore"),
    sa.Column("backups_made", sa.Text),
)
_V10_REQUEST_COLUMNS = ("kind", "backups_made")
steps_table = sa.Table(
    "pulih_steps",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(32), sa.ForeignKey("pulih_requests.id"), nullable=False, index=True),
    sa.Column("step", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("at", sa.String(32), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    # Added in schema version 10: whom the actor stood in for (Plt./Plh.), by delegation.
    sa.Column("acting_for", sa.String(128)),
)
runs_table = sa.Table(
    "pulih_runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("request_id", sa.String(32)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", sa.String(32), nullable=False),
    sa.Column("finished_at", sa.String(32)),
    sa.Column("report", sa.Text),
    sa.Column("exit_code", sa.Integer),  # added in schema version 2
)
audit_table = sa.Table(
    "pulih_audit",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("request_id", sa.String(32)),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)


accounts_table = sa.Table(  # added in schema version 3: who may act, held by the service
    "pulih_accounts",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("email", sa.String(256)),
    sa.Column("unix_user", sa.String(64)),
    sa.Column("unix_uid", sa.Integer, unique=True),  # the kernel's answer on the socket
    sa.Column("roles", sa.Text, nullable=False),  # JSON list
    sa.Column("skpds", sa.Text, nullable=False),  # JSON list
    sa.Column("password_hash", sa.Text),  # argon2id
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    # Added in schema version 9: the optional second factor (RFC 6238 TOTP) of a password
    # login, and the last time step a code was accepted for (no code is good twice).
    sa.Column("totp_secret", sa.String(64)),
    sa.Column("totp_last_step", sa.Integer),
)
_V9_ACCOUNT_COLUMNS = ("totp_secret", "totp_last_step")
tokens_table = sa.Table(  # added in schema version 3
    "pulih_tokens",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("account", sa.String(64), sa.ForeignKey("pulih_accounts.name"), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False, unique=True),  # SHA-256 of the secret
    sa.Column("scopes", sa.Text, nullable=False),  # JSON list
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.String(32), nullable=False),
    sa.Column("revoked_at", sa.String(32)),
    sa.Column("last_used_at", sa.String(32)),
)


approvals_table = sa.Table(  # added in schema version 4: one row per approval (M of N later)
    "pulih_approvals",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(32), sa.ForeignKey("pulih_requests.id"), nullable=False, index=True),
    sa.Column("approver", sa.String(128), nullable=False),
    sa.Column("at", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.String(32), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    # Added in schema version 5: the live targets the approval covers, resolved from the register
    # when it was given (JSON list of engine://address:port/name); the gate holds a run to them.
    sa.Column("targets", sa.Text),
    # Added in schema version 7: a signed approval's statement (canonical JSON), its SSH signature
    # and the fingerprint of the key that made it (pulih.approvals).
    sa.Column("statement", sa.Text),
    sa.Column("signature", sa.Text),
    sa.Column("key_fingerprint", sa.String(128)),
    # Added in schema version 10: the approver this one acted for (Plt./Plh.), by delegation.
    sa.Column("acting_for", sa.String(128)),
    sa.Column("delegation_id", sa.Integer),
    # Added in schema version 10 too: the restore may run outside its servers' maintenance windows.
    sa.Column("outside_window", sa.Boolean, nullable=False, server_default=sa.false()),
)


backups_table = sa.Table(  # added in schema version 6: every backup as published, by its hashes
    "pulih_backups",
    metadata,
    sa.Column("asset_id", sa.String(64), primary_key=True),
    sa.Column("item", sa.String(64), primary_key=True),
    sa.Column("backup_id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("request_id", sa.String(32)),
    # SHA-256 of the manifest's canonical JSON, as the controller sent it to the receiver; the
    # manifest names each artifact's SHA-256 taken on the data server as it was sent.
    sa.Column("manifest_sha256", sa.String(64), nullable=False),
    sa.Column("artifacts", sa.Text, nullable=False),  # JSON: [{name, role, sha256, size}]
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("recorded_at", sa.String(32), nullable=False),
)


backup_events_table = sa.Table(  # added in schema version 7: an index into the audit chain
    "pulih_backup_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("asset_id", sa.String(64), nullable=False),
    sa.Column("item", sa.String(64), nullable=False),
    sa.Column("backup_id", sa.String(32), nullable=False),
    # The entry that says it (backup.recorded, backup.adopted, backup.verified,
    # backup.verification_failed): what a backup is, the service reads from the chain there,
    # never from a row a store's holder could edit.
    sa.Column("audit_seq", sa.Integer, nullable=False),
    sa.Index("pulih_backup_events_item", "asset_id", "item"),
)

BACKUP_ACTIONS = ("backup.recorded", "backup.adopted", "backup.verified", "backup.verification_failed")


outbox_table = sa.Table(  # added in schema version 8: mail, written in the transaction of its step
    "pulih_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # No foreign key to pulih_requests: the outbox is the service's, beside the record, not in it.
    sa.Column("request_id", sa.String(32), nullable=False),
    sa.Column("event", sa.String(32), nullable=False),  # the step recorded, or 'overdue'
    sa.Column("step", sa.String(32), nullable=False),  # the step it is of (overdue: the one waited after)
    sa.Column("step_id", sa.Integer, nullable=False),  # the pulih_steps row it came from
    sa.Column("account", sa.String(64), nullable=False),  # '-': no account to tell
    sa.Column("recipient", sa.String(256)),  # the account's address then; none: not sent (skipped)
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending | failed | sent | skipped
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.String(32)),
    sa.Column("last_error", sa.Text),  # the last failed attempt's, or why it is skipped
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("sent_at", sa.String(32)),
    # One mail per event and account: the same event written twice never mails twice.
    sa.UniqueConstraint("request_id", "event", "step_id", "account", name="pulih_outbox_event"),
    sa.Index("pulih_outbox_due", "status", "next_attempt_at"),
)


letters_table = sa.Table(  # added in schema version 10: a request's letter (surat permohonan)
    "pulih_letters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(32), sa.ForeignKey("pulih_requests.id"), nullable=False, index=True),
    sa.Column("sha256", sa.String(64), nullable=False),  # as on the audit chain (request.letter)
    sa.Column("media_type", sa.String(64), nullable=False),  # from its content, not its name
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("filename", sa.String(256), nullable=False),
    sa.Column("attached_by", sa.String(128), nullable=False),
    sa.Column("attached_at", sa.String(32), nullable=False),
    sa.Column("content", sa.LargeBinary, nullable=False),
)


delegations_table = sa.Table(  # added in schema version 10: an acting approver (Plt./Plh.)
    "pulih_delegations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("delegator", sa.String(64), nullable=False),  # the approver who is away
    sa.Column("delegate", sa.String(64), nullable=False, index=True),  # who acts in their place
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("starts_at", sa.String(32), nullable=False),
    sa.Column("ends_at", sa.String(32), nullable=False),  # it ends by itself then
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("granted_by", sa.String(64), nullable=False),
    sa.Column("granted_at", sa.String(32), nullable=False),
    sa.Column("ended_at", sa.String(32)),  # ended early
    sa.Column("ended_by", sa.String(64)),
)


def _v1(conn: Connection) -> None:
    """Version 1: every table, runs without exit_code."""
    v1 = sa.MetaData()
    requests_v1 = sa.Table(  # as it was in version 1: without the columns of version 10
        "pulih_requests",
        v1,
        *(c._copy() for c in requests_table.columns if c.name not in _V10_REQUEST_COLUMNS),
    )
    steps_v1 = sa.Table(
        "pulih_steps", v1, *(c._copy() for c in steps_table.columns if c.name != "acting_for")
    )
    for table in (meta_table, requests_v1, steps_v1, audit_table):
        table.create(conn, checkfirst=True)
    runs_v1 = sa.Table(
        "pulih_runs",
        sa.MetaData(),
        *(
            sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
            for c in runs_table.columns
            if c.name != "exit_code"
        ),
    )
    runs_v1.create(conn, checkfirst=True)


def _v2(conn: Connection) -> None:
    """Version 2: runs record their exit code."""
    conn.execute(sa.text("ALTER TABLE pulih_runs ADD COLUMN exit_code INTEGER"))


def _v3(conn: Connection) -> None:
    """Version 3: accounts and API tokens (pulih serve)."""
    accounts_v3 = sa.Table(  # as it was in version 3: without the columns of version 9
        "pulih_accounts",
        sa.MetaData(),
        *(c._copy() for c in accounts_table.columns if c.name not in _V9_ACCOUNT_COLUMNS),
    )
    accounts_v3.create(conn, checkfirst=True)
    tokens_table.create(conn, checkfirst=True)


def _v4(conn: Connection) -> None:
    """Version 4: approvals as a list; the approval each request already has becomes its first."""
    approvals_v4 = sa.Table(  # as it was in version 4: without the columns of versions 5 and 7
        "pulih_approvals",
        sa.MetaData(),
        *(
            c._copy()
            for c in approvals_table.columns
            if c.name
            not in (
                "targets",
                "statement",
                "signature",
                "key_fingerprint",
                "acting_for",
                "delegation_id",
                "outside_window",
            )
        ),
    )
    approvals_v4.create(conn, checkfirst=True)
    conn.execute(
        sa.text(
            "INSERT INTO pulih_approvals (request_id, approver, at, expires_at, note) "
            "SELECT id, approved_by, approved_at, approval_expires_at, '' FROM pulih_requests "
            "WHERE approved_by IS NOT NULL"
        )
    )


def _v5(conn: Connection) -> None:
    """Version 5: an approval records the resolved targets it covers."""
    conn.execute(sa.text("ALTER TABLE pulih_approvals ADD COLUMN targets TEXT"))


def _v6(conn: Connection) -> None:
    """Version 6: the backups the service saw published, with their manifests' digests."""
    backups_table.create(conn, checkfirst=True)


def _v7(conn: Connection) -> None:
    """Version 7: the backup entries of the audit chain, indexed by backup (those already on it
    too); signed approvals."""
    for column in ("statement TEXT", "signature TEXT", "key_fingerprint VARCHAR(128)"):
        conn.execute(sa.text(f"ALTER TABLE pulih_approvals ADD COLUMN {column}"))
    backup_events_table.create(conn, checkfirst=True)
    rows = conn.execute(
        sa.select(audit_table.c.seq, audit_table.c.payload).where(audit_table.c.action.in_(BACKUP_ACTIONS))
    )
    for seq, payload in rows.all():
        said = json.loads(payload)
        conn.execute(
            sa.insert(backup_events_table).values(
                asset_id=said["asset_id"], item=said["item"], backup_id=said["backup_id"], audit_seq=seq
            )
        )


def _v8(conn: Connection) -> None:
    """Version 8: the mail outbox."""
    outbox_table.create(conn, checkfirst=True)


def _v9(conn: Connection) -> None:
    """Version 9: an account's optional second factor (TOTP)."""
    for column in ("totp_secret VARCHAR(64)", "totp_last_step INTEGER"):
        conn.execute(sa.text(f"ALTER TABLE pulih_accounts ADD COLUMN {column}"))


def _v10(conn: Connection) -> None:
    """Version 10: backup requests (SOP B), their letters, acting approvers."""
    conn.execute(sa.text("ALTER TABLE pulih_requests ADD COLUMN kind VARCHAR(16) NOT NULL DEFAULT 'restore'"))
    conn.execute(sa.text("ALTER TABLE pulih_requests ADD COLUMN backups_made TEXT"))
    conn.execute(sa.text("ALTER TABLE pulih_steps ADD COLUMN acting_for VARCHAR(128)"))
    conn.execute(sa.text("ALTER TABLE pulih_approvals ADD COLUMN acting_for VARCHAR(128)"))
    conn.execute(sa.text("ALTER TABLE pulih_approvals ADD COLUMN delegation_id INTEGER"))
    conn.execute(
        sa.text("ALTER TABLE pulih_approvals ADD COLUMN outside_window BOOLEAN NOT NULL DEFAULT FALSE")
    )
    letters_table.create(conn, checkfirst=True)
    delegations_table.create(conn, checkfirst=True)


MIGRATIONS: list[Callable[[Connection], None]] = [_v1, _v2, _v3, _v4, _v5, _v6, _v7, _v8, _v9, _v10]


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def parse_iso(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _entry_hash(
    prev_hash: str, seq: int, at: str, actor: str, action: str, request_id: str | None, payload: str
) -> str:
    body = json.dumps([prev_hash, seq, at, actor, action, request_id, payload], ensure_ascii=False)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AuditProblem:
    seq: int
    message: str

    def __str__(self) -> str:  # seq 0: a problem of an anchor, not of one entry
        return f"audit entry {self.seq}: {self.message}" if self.seq else self.message


def _sqlite_connect(dbapi: Any, _record: Any) -> None:
    # Python's sqlite3 opens a transaction only before its first write, so a step's read of
    # the request's status ran outside it and two racing steps could both pass. pulih begins
    # every transaction itself (below) and writers queue instead of failing.
    dbapi.isolation_level = None
    dbapi.execute("PRAGMA busy_timeout = 30000")


def _sqlite_begin(conn: Connection) -> None:
    # A write transaction (Store.transaction) is IMMEDIATE: the write lock from its first
    # statement, so what a step reads is what it writes on. Reads begin deferred.
    write = conn.get_execution_options().get("pulih_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _shown_payload(text: str) -> Any:
    """An entry's payload parsed, or as the text it is when someone made it no JSON (an edited
    entry must still be shown, to the auditor who looks for it)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class Store:
    """One connection pool to the record; every write in its own transaction."""

    def __init__(self, url: str, *, upgrade: bool = True, anchors: Sequence[Anchor] = ()) -> None:
        self.url = url
        # Where the chain's head goes after every write, and what verify_audit checks it against.
        self.anchors = list(anchors)
        self.engine: Engine = sa.create_engine(url, future=True)
        if url.startswith("sqlite"):
            sa.event.listen(self.engine, "connect", _sqlite_connect)
            sa.event.listen(self.engine, "begin", _sqlite_begin)
        if upgrade:
            self.upgrade()

    @classmethod
    def at_path(cls, path: Path) -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{path}")

    # ---------------------------------------------------------------- schema

    def version(self) -> int:
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("pulih_meta"):
                return 0
            value = conn.execute(
                sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
            ).scalar()
            return int(value or 0)

    def upgrade(self, to: int = SCHEMA_VERSION) -> int:
        """Bring the schema to version ``to``; returns the version found before."""
        found = self.version()
        if found > SCHEMA_VERSION:
            raise RuntimeError(
                f"the store has schema version {found}, newer than this pulih ({SCHEMA_VERSION})"
            )
        for version in range(found + 1, to + 1):
            with self.transaction() as conn:
                if version > 1:  # another process may have upgraded meanwhile: ask again, locked
                    if conn.dialect.name == "postgresql":
                        conn.execute(sa.text("LOCK TABLE pulih_meta IN EXCLUSIVE MODE"))
                    now_at = conn.execute(
                        sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
                    ).scalar()
                    if int(now_at or 0) >= version:
                        continue
                MIGRATIONS[version - 1](conn)
                conn.execute(sa.delete(meta_table).where(meta_table.c.key == "schema_version"))
                conn.execute(sa.insert(meta_table).values(key="schema_version", value=str(version)))
        return found

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(pulih_write=True)
            conn.info["pulih_appended"] = False
            with conn.begin():
                yield conn
            appended = conn.info.pop("pulih_appended", False)
        if appended and self.anchors:  # committed: the new head goes outside the store
            self.publish_head()

    def head(self) -> dict[str, Any] | None:
        """The chain's last entry: {seq, hash, at}, or None for an empty log."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(audit_table.c.seq, audit_table.c.hash, audit_table.c.at)
                .order_by(audit_table.c.seq.desc())
                .limit(1)
            ).first()
        return {"seq": row.seq, "hash": row.hash, "at": row.at} if row else None

    def start_anchors(self) -> None:
        """A newly configured anchor begins at today's head; one that exists is never written
        to here (a head written outside the service must stay unanchored, and named)."""
        head = self.head()
        for anchor in self.anchors:
            if head is not None and not anchor.exists():
                anchor.append(head["seq"], head["hash"], head["at"])

    def publish_head(self) -> None:
        """Append the chain's head to every anchor. A failed anchor does not undo the write it
        follows (that is committed); it leaves the head unanchored, which verify_audit names."""
        head = self.head()
        if head is None:
            return
        for anchor in self.anchors:
            try:
                anchor.append(head["seq"], head["hash"], head["at"])
            except AnchorError as exc:
                print(f"pulih: {exc}", file=sys.stderr)

    # ---------------------------------------------------------------- policy

    def policy(self, conn: Connection | None = None) -> dict[str, Any]:
        """The office's policy, as its newest `policy_set` entry on the chain says (a row of
        the store anyone holding it could edit has no say): `distinct`, pairs of roles that
        must be different people on one request (the requester is never the approver, whatever
        it says), and `signed_approvals` (none, in_place or all)."""
        query = (
            sa.select(audit_table.c.payload)
            .where(audit_table.c.action == "policy_set")
            .order_by(audit_table.c.seq.desc())
            .limit(1)
        )
        if conn is not None:
            value = conn.execute(query).scalar()
        else:
            with self.engine.connect() as own:
                value = own.execute(query).scalar()
        loaded: dict[str, Any] = {"distinct": [], "signed_approvals": "none"}
        loaded.update(json.loads(value) if value else {})
        return loaded

    def set_policy(self, actor: str, policy: dict[str, Any]) -> None:
        with self.transaction() as conn:
            conn.execute(sa.delete(meta_table).where(meta_table.c.key == "policy"))
            conn.execute(sa.insert(meta_table).values(key="policy", value=json.dumps(policy, sort_keys=True)))
            self.append_audit(conn, actor=actor, action="policy_set", request_id=None, payload=policy)

    # ---------------------------------------------------------------- audit

    def append_audit(
        self,
        conn: Connection,
        *,
        actor: str,
        action: str,
        request_id: str | None,
        payload: dict[str, Any],
        at: dt.datetime | None = None,
    ) -> int:
        """Append one entry, chained to the last, inside the caller's transaction."""
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("LOCK TABLE pulih_audit IN EXCLUSIVE MODE"))  # one chain, one writer
        last = conn.execute(
            sa.select(audit_table.c.seq, audit_table.c.hash).order_by(audit_table.c.seq.desc()).limit(1)
        ).first()
        seq, prev = (last.seq + 1, last.hash) if last else (1, GENESIS)
        conn.info["pulih_appended"] = True  # Store.transaction publishes the head once committed
        when = iso(at or now())
        body = json.dumps(payload, sort_keys=True, ensure_ascii=False)
        digest = _entry_hash(prev, seq, when, actor, action, request_id, body)
        conn.execute(
            sa.insert(audit_table).values(
                seq=seq,
                at=when,
                actor=actor,
                action=action,
                request_id=request_id,
                payload=body,
                prev_hash=prev,
                hash=digest,
            )
        )
        return seq

    def audit_entries(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(audit_table).order_by(audit_table.c.seq)).mappings().all()
        return [dict(r) for r in rows]

    def audit_page(self, *, before: int | None, limit: int) -> list[dict[str, Any]]:
        """`limit` entries before seq `before` (the newest when None), newest first, each with
        its payload parsed (shown as stored: the chain's hashes are over these very bytes)."""
        query = sa.select(audit_table).order_by(audit_table.c.seq.desc()).limit(limit)
        if before is not None:
            query = query.where(audit_table.c.seq < before)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [{**dict(r), "payload": _shown_payload(r["payload"])} for r in rows]

    def audit_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(audit_table)).scalar_one())

    def verify_audit(self, *, signatures: bool = True) -> list[AuditProblem]:
        """Walk the chain; name every entry that was edited, deleted, inserted or moved, and
        every way it disagrees with its anchors, and every anchor line the service's audit key
        did not sign (without `signatures`, the gate's: only the newest line's signature)."""
        problems: list[AuditProblem] = []
        prev_hash, expected_seq = GENESIS, 1
        for row in self.audit_entries():
            seq = row["seq"]
            if seq != expected_seq:
                problems.append(
                    AuditProblem(
                        seq,
                        f"entries {expected_seq}..{seq - 1} are missing (deleted)"
                        if seq > expected_seq
                        else "sequence out of order",
                    )
                )
            if row["prev_hash"] != prev_hash:
                problems.append(
                    AuditProblem(
                        seq, "does not follow the entry before it (deleted, inserted or reordered entries)"
                    )
                )
            recomputed = _entry_hash(
                row["prev_hash"],
                seq,
                row["at"],
                row["actor"],
                row["action"],
                row["request_id"],
                row["payload"],
            )
            if recomputed != row["hash"]:
                problems.append(AuditProblem(seq, "its content was changed after it was written"))
            prev_hash, expected_seq = row["hash"], seq + 1
        return problems + self._anchor_problems(signatures)

    def _anchor_problems(self, signatures: bool) -> list[AuditProblem]:
        """Where the chain disagrees with its anchors; an anchor that cannot be read is itself a
        problem (never a silent fall-back to the chain alone)."""
        if not self.anchors:
            return []
        with self.engine.connect() as conn:
            chain = [(r.seq, r.hash) for r in conn.execute(sa.select(audit_table.c.seq, audit_table.c.hash))]
        found: list[AuditProblem] = []
        key_at, rotation_problems = self._audit_keys()
        found += rotation_problems
        for anchor in self.anchors:
            try:
                heads = anchor.heads()
            except AnchorError as exc:
                found.append(AuditProblem(0, str(exc)))
                continue
            found += [AuditProblem(seq, text) for seq, text in problems_against(chain, heads, anchor.name)]
            # The gate checks only the newest line's signature (one ssh-keygen call): a forged
            # line only ever helps to cover entries appended beyond the real head.
            checked = heads if signatures else sorted(heads, key=lambda h: h["seq"])[-1:]
            found += [AuditProblem(seq, text) for seq, text in anchor.signature_problems(checked, key_at)]
        return sorted(found, key=lambda p: p.seq)

    def _audit_keys(self) -> tuple[Callable[[int], PublicAuditKey], list[AuditProblem]]:
        """Which audit key signs the anchor line of each seq: the key each rotation on the chain
        names takes over after the rotation's own entry (signed by the old key, which anchors
        that entry). A rotation not signed by the key it replaces is a problem, and ignored."""
        current = next((a.key.as_public() for a in self.anchors if a.key is not None), None)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(audit_table.c.seq, audit_table.c.payload)
                .where(audit_table.c.action == "audit_key.rotated")
                .order_by(audit_table.c.seq)
            ).all()
        stretches: list[tuple[int, PublicAuditKey]] = []  # (the first seq it signs, the key)
        problems = []
        for seq, payload in rows:
            said = json.loads(payload)
            old = PublicAuditKey(said["old_public_key"], said["old"])
            if stretches and stretches[-1][1].fingerprint != old.fingerprint:
                problems.append(
                    AuditProblem(
                        seq, f"the audit key rotation replaces {old.fingerprint}, not the key then in force"
                    )
                )
                continue
            if said.get("format") != ROTATION or not old.verifies(
                rotation_text(said), said.get("signature", "")
            ):
                problems.append(
                    AuditProblem(
                        seq, f"the audit key rotation is not signed by the key it replaces, {old.fingerprint}"
                    )
                )
                continue
            if not stretches:
                stretches.append((0, old))
            stretches.append((seq + 1, PublicAuditKey(said["new_public_key"], said["new"])))

        def key_at(seq: int) -> PublicAuditKey:
            chosen = stretches[0][1] if stretches else current
            for first, key in stretches:
                if seq >= first:
                    chosen = key
            assert chosen is not None
            return chosen

        return key_at, problems

    def audit_public_keys(self) -> list[str]:
        """Every audit key that ever signed an anchor line (the rotations on the chain name the
        earlier ones), oldest first, as TYPE BASE64."""
        found: list[str] = []
        with self.engine.connect() as conn:
            for (payload,) in conn.execute(
                sa.select(audit_table.c.payload)
                .where(audit_table.c.action == "audit_key.rotated")
                .order_by(audit_table.c.seq)
            ):
                said = json.loads(payload)
                found += [k for k in (said["old_public_key"], said["new_public_key"]) if k not in found]
        current = next((a.key.public_key() for a in self.anchors if a.key is not None), None)
        return found + ([current] if current and current not in found else [])

    def rotate_audit_key(self, actor: str, new: AuditKey) -> None:
        """Hand the anchors' signing over to `new`: an entry on the chain naming both keys,
        signed by the old one (whose line anchors it); every line after it is `new`'s."""
        old = next((a.key for a in self.anchors if a.key is not None), None)
        if old is None:
            raise AnchorError("no anchor is signed: there is no audit key to rotate")
        head = self.head()
        doc: dict[str, Any] = {
            "format": ROTATION,
            "old": old.fingerprint(),
            "old_public_key": old.public_key(),
            "new": new.fingerprint(),
            "new_public_key": new.public_key(),
            "after": {"seq": head["seq"], "hash": head["hash"]} if head else None,
        }
        doc["signature"] = old.sign(rotation_text(doc))
        with self.transaction() as conn:
            self.append_audit(conn, actor=actor, action="audit_key.rotated", request_id=None, payload=doc)
        self.anchors = [a.with_key(new) if a.key is not None else a for a in self.anchors]

    # ---------------------------------------------------------------- backups

    def record_backups(
        self,
        backups: Sequence[dict[str, Any]],
        *,
        run_id: str,
        actor: str,
        action: str = "backup.recorded",
    ) -> None:
        """Put published backups on the record, each with an audit entry of its hashes
        (`backup.adopted` for one an admin vouches for). One already recorded is left as it
        was (a report is written more than once)."""
        if not backups:
            return
        with self.transaction() as conn:
            for backup in backups:
                key = (backup["asset_id"], backup["item"], backup["backup_id"])
                if self._backup_state(conn, [key]):  # the chain's word, not a row's
                    continue
                artifacts = [
                    {k: a.get(k) for k in ("name", "role", "sha256", "size")} for a in backup["artifacts"]
                ]
                row = {
                    "asset_id": key[0],
                    "item": key[1],
                    "backup_id": key[2],
                    "kind": backup.get("kind") or "scheduled",
                    "request_id": backup.get("request_id"),
                    "manifest_sha256": backup["manifest_sha256"],
                    "artifacts": json.dumps(artifacts, sort_keys=True),
                    "run_id": run_id,
                    "recorded_at": iso(now()),
                }
                conn.execute(
                    sa.delete(backups_table).where(
                        backups_table.c.asset_id == key[0],
                        backups_table.c.item == key[1],
                        backups_table.c.backup_id == key[2],
                    )
                )
                conn.execute(sa.insert(backups_table).values(**row))
                seq = self.append_audit(
                    conn,
                    actor=actor,
                    action=action,
                    request_id=row["request_id"],
                    payload={**{k: v for k, v in row.items() if k != "recorded_at"}, "artifacts": artifacts},
                )
                self._index_backup_entry(conn, key, seq)

    def record_verifications(self, results: Sequence[dict[str, Any]], *, run_id: str, actor: str) -> int:
        """Put test restores on the record: each of a recorded backup whose manifest was the
        recorded one (`manifest_sha256`, as the verifier saw it). Others are left off (there is
        nothing to vouch for); returns how many went on."""
        written = 0
        with self.transaction() as conn:
            for result in results:
                key = (result["asset_id"], result["item"], result["backup_id"])
                known = self._backup_state(conn, [key]).get(":".join(key))
                if known is None or known["manifest_sha256"] != result.get("manifest_sha256"):
                    continue
                if (known["last_verification"] or {}).get("run_id") == run_id:  # written before
                    continue
                verified = result["status"] == "verified"
                seq = self.append_audit(
                    conn,
                    actor=actor,
                    action="backup.verified" if verified else "backup.verification_failed",
                    request_id=None,
                    payload={
                        "asset_id": key[0],
                        "item": key[1],
                        "backup_id": key[2],
                        "manifest_sha256": result["manifest_sha256"],
                        "status": result["status"],
                        "checks": result.get("checks") or [],
                        "verified_on": result.get("verified_on"),
                        "finished_at": result.get("finished_at"),
                        "error": result.get("error"),
                        "run_id": run_id,
                    },
                )
                self._index_backup_entry(conn, key, seq)
                written += 1
        return written

    def recorded_backups(self, pairs: Sequence[tuple[str, str]]) -> dict[str, dict[str, Any]]:
        """What the chain says of every backup of these (asset_id, item) pairs, keyed
        'ASSET:ITEM:BACKUP_ID': {manifest_sha256, verified, last_verification}. `verified`
        is the newest test restore's word on the record (a line in the repository's
        verifications.jsonl counts for nothing here)."""
        with self.engine.connect() as conn:
            keys = [
                (r.asset_id, r.item, r.backup_id)
                for asset_id, item in sorted(set(pairs))
                for r in conn.execute(
                    sa.select(
                        backup_events_table.c.asset_id,
                        backup_events_table.c.item,
                        backup_events_table.c.backup_id,
                    )
                    .where(backup_events_table.c.asset_id == asset_id, backup_events_table.c.item == item)
                    .distinct()
                )
            ]
            return self._backup_state(conn, keys)

    @staticmethod
    def _backup_state(conn: Connection, keys: Sequence[tuple[str, str, str]]) -> dict[str, dict[str, Any]]:
        """Each backup's state read from its entries on the chain, in order: the first recording
        fixes the manifest's digest; the newest verification of that manifest says whether it
        is verified. The index row only points; an entry about another backup is ignored."""
        found: dict[str, dict[str, Any]] = {}
        for key in keys:
            seqs = conn.execute(
                sa.select(backup_events_table.c.audit_seq).where(
                    backup_events_table.c.asset_id == key[0],
                    backup_events_table.c.item == key[1],
                    backup_events_table.c.backup_id == key[2],
                )
            ).scalars()
            entries = conn.execute(
                sa.select(audit_table.c.action, audit_table.c.payload)
                .where(audit_table.c.seq.in_(list(seqs)), audit_table.c.action.in_(BACKUP_ACTIONS))
                .order_by(audit_table.c.seq)
            ).all()
            state: dict[str, Any] | None = None
            for action, payload in entries:
                said = json.loads(payload)
                if (said.get("asset_id"), said.get("item"), said.get("backup_id")) != key:
                    continue
                if action in ("backup.recorded", "backup.adopted") and state is None:
                    state = {
                        "manifest_sha256": said["manifest_sha256"],
                        "verified": False,
                        "last_verification": None,
                        "adopted": action == "backup.adopted",
                    }
                elif state is not None and said.get("manifest_sha256") == state["manifest_sha256"]:
                    state["verified"] = action == "backup.verified"
                    state["last_verification"] = {
                        k: said.get(k) for k in ("status", "finished_at", "verified_on", "run_id", "error")
                    }
            if state is not None:
                found[":".join(key)] = state
        return found

    @staticmethod
    def _index_backup_entry(conn: Connection, key: tuple[str, str, str], seq: int) -> None:
        conn.execute(
            sa.insert(backup_events_table).values(
                asset_id=key[0], item=key[1], backup_id=key[2], audit_seq=seq
            )
        )

    # ---------------------------------------------------------------- runs

    def record_run(
        self,
        *,
        run_id: str,
        kind: str,
        status: str,
        started_at: str,
        finished_at: str | None,
        report: str | None,
        exit_code: int | None,
        actor: str,
        request_id: str | None = None,
    ) -> None:
        with self.transaction() as conn:
            conn.execute(sa.delete(runs_table).where(runs_table.c.run_id == run_id))
            conn.execute(
                sa.insert(runs_table).values(
                    run_id=run_id,
                    kind=kind,
                    request_id=request_id,
                    status=status,
                    started_at=started_at,
                    finished_at=finished_at,
                    report=report,
                    exit_code=exit_code,
                )
            )
            self.append_audit(
                conn,
                actor=actor,
                action=f"run.{kind}",
                request_id=request_id,
                payload={"run_id": run_id, "status": status, "exit_code": exit_code, "report": report},
            )

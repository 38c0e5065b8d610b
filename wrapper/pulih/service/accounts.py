"""Accounts, roles, SKPDs and API tokens: who may act, held in the store and changed only by
an admin through the service. Every change goes on the audit log.

Passwords are hashed with argon2id (argon2-cffi). Tokens are 32 random bytes shown once; the
store keeps their SHA-256 (a token has the entropy a password lacks, so a fast hash is
enough and a stolen store gives no token back)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import pwd
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyotp
import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.engine import Connection

from pulih import approvals, delegation
from pulih.mail import address_problem
from pulih.store import Store, accounts_table, iso, now, parse_iso, tokens_table

ROLES = ("requester", "receiver", "approver", "operator", "auditor", "admin")
# What a token may be used for; an account on the socket may do all its roles allow.
SCOPES = ("read", "backup", "request", "approve", "restore", "admin")
# The scopes each role's steps need: what a password login's token may do.
ROLE_SCOPES: dict[str, tuple[str, ...]] = {
    "requester": ("request", "read"),
    "receiver": ("approve", "read"),
    "approver": ("approve", "read"),
    "operator": ("backup", "restore", "read"),
    "auditor": ("read",),
    "admin": ("admin", "read"),
}
TOKEN_PREFIX = "pulih_"  # noqa: S105 - a prefix, no secret
_NAME = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
_SKPD = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_HASHER = PasswordHasher()
_BASE32 = re.compile(r"^[A-Z2-7]{32}$")  # pyotp.random_base32(): 160 bits
_CODE = re.compile(r"^[0-9]{6}$")
TOTP_ISSUER = "pulih"  # how an authenticator app names the entry


class FailureBudget:
    """How many refused logins a minute go on the audit log. Anyone who can reach the service
    can send wrong tokens, so each one logged would let a stranger fill the store's disk and
    bury the entries that matter: the first `per_minute` are logged, then one `auth_flood`
    entry says the rest of that minute is not, and the next logged refusal counts what was left
    out (`not_logged_before`)."""

    def __init__(self, per_minute: int = 30, clock: Callable[[], dt.datetime] = now) -> None:
        self.per_minute, self.clock = per_minute, clock
        self._lock = threading.Lock()
        self._minute = -1
        self._logged = 0
        self._dropped = 0

    def admit(self) -> tuple[str, dict[str, Any]] | None:
        """None: do not log this one; ('log', extra): log it with `extra` in its payload;
        ('flood', extra): log the one entry that says the rest of this minute is left out."""
        with self._lock:
            minute = int(self.clock().timestamp() // 60)
            if minute != self._minute:
                self._minute, self._logged = minute, 0
            self._logged += 1
            if self._logged > self.per_minute + 1:
                self._dropped += 1
                return None
            if self._logged == self.per_minute + 1:
                return "flood", {"logged_this_minute": self.per_minute}
            extra = {"not_logged_before": self._dropped} if self._dropped else {}
            self._dropped = 0
            return "log", extra


class LoginThrottle:
    """Password guessing, slowed per account name: after `failures` wrong passwords within
    `window`, that name's logins are refused until the window has passed since the first of
    them, the right password too (so a guesser learns nothing while it lasts). Held in memory:
    a restart forgets it, and the audit log keeps every refusal it saw."""

    def __init__(
        self,
        failures: int = 5,
        window: dt.timedelta = dt.timedelta(minutes=15),
        clock: Callable[[], dt.datetime] = now,
        names: int = 10_000,
    ) -> None:
        self.failures, self.window, self.clock, self.names = failures, window, clock, names
        self._lock = threading.Lock()
        self._failed: dict[str, list[dt.datetime]] = {}

    def blocked_until(self, name: str) -> dt.datetime | None:
        with self._lock:
            recent = self._recent(name)
            return recent[0] + self.window if len(recent) >= self.failures else None

    def failed(self, name: str) -> None:
        with self._lock:
            self._failed[name] = [*self._recent(name), self.clock()]
            if len(self._failed) > self.names:  # a flood of made-up names: forget the oldest
                del self._failed[next(iter(self._failed))]

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failed.pop(name, None)

    def _recent(self, name: str) -> list[dt.datetime]:
        start = self.clock() - self.window
        return [at for at in self._failed.get(name, []) if at > start]


class AccountError(Exception):
    """A refusal with a message id: bad input (`kind` 'input'), a missing account
    ('not_found'), or a rule of the record ('refused')."""

    def __init__(self, kind: str, message_id: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message_id = message_id


@dataclass(frozen=True)
class Account:
    name: str
    roles: tuple[str, ...]
    skpds: tuple[str, ...] = ()
    email: str | None = None
    unix_user: str | None = None
    unix_uid: int | None = None
    disabled: bool = False
    created_at: str = ""
    totp: bool = False  # a password login needs a second-factor code too

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "roles": list(self.roles),
            "skpds": list(self.skpds),
            "email": self.email,
            "unix_user": self.unix_user,
            "disabled": self.disabled,
            "created_at": self.created_at,
            "totp": self.totp,
        }


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: the account, how it was proved, and what it may use."""

    account: Account
    via: str  # "socket" (kernel peer credentials) or "token"
    scopes: tuple[str, ...] = field(default=SCOPES)
    token_id: str | None = None


def _account(row: Any) -> Account:
    return Account(
        name=row.name,
        roles=tuple(json.loads(row.roles)),
        skpds=tuple(json.loads(row.skpds)),
        email=row.email,
        unix_user=row.unix_user,
        unix_uid=row.unix_uid,
        disabled=bool(row.disabled),
        created_at=row.created_at,
        totp=row.totp_secret is not None,
    )


def _checked_name(name: str) -> str:
    if not _NAME.match(name):
        raise AccountError(
            "input", "account.name", f"account name {name!r}: lower-case letters, digits, '.', '_' or '-'"
        )
    return name


def _checked_roles(roles: list[str]) -> list[str]:
    unknown = sorted(set(roles) - set(ROLES))
    if unknown or not roles:
        raise AccountError(
            "input", "account.roles", f"roles {unknown or roles}: give one or more of {', '.join(ROLES)}"
        )
    return sorted(set(roles), key=ROLES.index)


def _checked_skpds(skpds: list[str]) -> list[str]:
    for code in skpds:
        if not _SKPD.match(code):
            raise AccountError("input", "account.skpd", f"SKPD {code!r}: a lower-case code such as 'bkpsdm'")
    return sorted(set(skpds))


def _matching_step(secret: str, code: str, *, after: int | None) -> int | None:
    """The time step (RFC 6238, 30 s) within one of now whose code `code` is, if newer than
    `after`."""
    if not _CODE.match(code.strip()):
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now())
    for step in (current - 1, current, current + 1):
        if (after is None or step > after) and hmac.compare_digest(totp.generate_otp(step), code.strip()):
            return step
    return None


def _checked_password(password: str) -> str:
    if len(password) < 12:
        raise AccountError("input", "account.password", "a password has at least 12 characters")
    if len(password) > 1024:
        raise AccountError("input", "account.password", "a password has at most 1024 characters")
    return password


def unix_uid(user: str) -> int:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise AccountError(
            "input", "account.unix_user", f"there is no OS user {user!r} on this machine"
        ) from None


class Accounts:
    def __init__(
        self, store: Store, failures: FailureBudget | None = None, throttle: LoginThrottle | None = None
    ) -> None:
        self.throttle = throttle or LoginThrottle()
        self.store = store
        self.failures = failures or FailureBudget()

    def log_refusal(self, action: str, actor: str, payload: dict[str, Any]) -> None:
        """A refused login or token on the audit log, within the failure budget."""
        admitted = self.failures.admit()
        if admitted is None:
            return
        kind, extra = admitted
        with self.store.transaction() as conn:
            if kind == "flood":
                self.store.append_audit(
                    conn,
                    actor="-",
                    action="auth_flood",
                    request_id=None,
                    payload={**extra, "why": "more refused logins this minute are not logged one by one"},
                )
            else:
                self.store.append_audit(
                    conn, actor=actor, action=action, request_id=None, payload={**payload, **extra}
                )

    def refuse_socket(self, uid: int, account: Account | None) -> None:
        """An OS user on the socket with no account, or a disabled one: on the audit log."""
        self.log_refusal(
            "auth_failed",
            account.name if account else "-",
            {"via": "socket", "uid": uid, "why": "disabled" if account else "no account"},
        )

    # ---------------------------------------------------------------- accounts

    def get(self, name: str, conn: Connection | None = None) -> Account:
        query = sa.select(accounts_table).where(accounts_table.c.name == name)
        if conn is not None:
            row = conn.execute(query).first()
        else:
            with self.store.engine.connect() as own:
                row = own.execute(query).first()
        if row is None:
            raise AccountError("not_found", "account.unknown", f"there is no account {name!r}")
        return _account(row)

    def all(self, conn: Connection | None = None) -> list[Account]:
        query = sa.select(accounts_table).order_by(accounts_table.c.name)
        if conn is not None:  # inside the caller's transaction (the outbox, in a step's)
            return [_account(r) for r in conn.execute(query).all()]
        with self.store.engine.connect() as own:
            rows = own.execute(query).all()
        return [_account(r) for r in rows]

    def count(self) -> int:
        with self.store.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(accounts_table)).scalar() or 0)

    def by_uid(self, uid: int) -> Account | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(accounts_table).where(accounts_table.c.unix_uid == uid)).first()
        return _account(row) if row else None

    def add(
        self,
        by: str,
        name: str,
        *,
        roles: list[str],
        skpds: list[str] | None = None,
        email: str | None = None,
        unix_user: str | None = None,
        password: str | None = None,
    ) -> Account:
        _checked_name(name)
        values = {
            "name": name,
            "roles": json.dumps(_checked_roles(roles)),
            "skpds": json.dumps(_checked_skpds(skpds or [])),
            "email": email,
            "unix_user": unix_user,
            "unix_uid": unix_uid(unix_user) if unix_user else None,
            "password_hash": _HASHER.hash(password) if password else None,
            "disabled": False,
            "created_at": iso(now()),
        }
        problem = address_problem(email) if email is not None else None
        if problem:  # the outbox mails it: a plain address, no header or control character in it
            raise AccountError("input", "account.email", f"e-mail {email!r} {problem}")
        if password is not None:
            _checked_password(password)
        with self.store.transaction() as conn:
            if conn.execute(sa.select(accounts_table.c.name).where(accounts_table.c.name == name)).first():
                raise AccountError("refused", "account.exists", f"account {name!r} exists already")
            if (
                values["unix_uid"] is not None
                and conn.execute(
                    sa.select(accounts_table.c.name).where(accounts_table.c.unix_uid == values["unix_uid"])
                ).first()
            ):
                raise AccountError(
                    "refused",
                    "account.unix_user_taken",
                    f"OS user {unix_user!r} already belongs to an account",
                )
            conn.execute(sa.insert(accounts_table).values(**values))
            account = self.get(name, conn)
            self.store.append_audit(
                conn, actor=by, action="account_added", request_id=None, payload=account.as_dict()
            )
        return account

    # ---------------------------------------------------------------- signing keys

    def add_key(self, by: str, name: str, public_key: str) -> dict[str, Any]:
        """Register an SSH public key with which `name` signs approvals (on the chain only:
        key.added; the gate and `pulih audit export-signers` read it there)."""
        self.get(name)
        try:
            line, fingerprint = approvals.checked_public_key(public_key)
        except approvals.SignatureError as exc:
            raise AccountError("input", "key.invalid", str(exc)) from None
        if any(k.fingerprint == fingerprint for k in approvals.keys_on_chain(self.store)):
            raise AccountError(
                "refused", "key.exists", f"key {fingerprint} is registered already (to one account, once)"
            )
        return self._key_entry(by, "key.added", name, fingerprint, public_key=line)

    def revoke_key(self, by: str, name: str, fingerprint: str) -> dict[str, Any]:
        """Take a key back: an approval it signs from now on fails (the allowed-signers line gets
        valid-before), those it signed before stand."""
        held = [k for k in approvals.keys_on_chain(self.store, name) if k.fingerprint == fingerprint]
        if not held:
            raise AccountError("not_found", "key.unknown", f"{name} has no key {fingerprint}")
        if held[0].revoked_at:
            raise AccountError(
                "refused", "key.revoked", f"key {fingerprint} was revoked at {held[0].revoked_at}"
            )
        return self._key_entry(by, "key.revoked", name, fingerprint)

    def _key_entry(self, by: str, action: str, name: str, fingerprint: str, **more: str) -> dict[str, Any]:
        """Put a key's registration or revocation on the chain; the key as the chain now says."""
        with self.store.transaction() as conn:
            self.store.append_audit(
                conn,
                actor=by,
                action=action,
                request_id=None,
                payload={"account": name, "fingerprint": fingerprint, **more},
            )
        return next(
            k.as_dict() for k in approvals.keys_on_chain(self.store, name) if k.fingerprint == fingerprint
        )

    def keys(self, name: str | None = None) -> list[dict[str, Any]]:
        if name is not None:
            self.get(name)
        return [k.as_dict() for k in approvals.keys_on_chain(self.store, name)]

    def _keep_an_admin(self, conn: Connection, account: Account) -> None:
        """AccountError when `account` is the last enabled admin (about to stop being one)."""
        if "admin" not in account.roles or account.disabled:
            return
        # Every account row locked while counting: two admins disabled at once would each
        # count two, and the office would be left with none (SQLite's transactions are
        # already one at a time).
        query = sa.select(accounts_table)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        admins = [
            a
            for a in (_account(r) for r in conn.execute(query).all())
            if "admin" in a.roles and not a.disabled
        ]
        if len(admins) <= 1:
            raise AccountError(
                "refused", "account.last_admin", f"{account.name} is the last admin: add another admin first"
            )

    def set_roles(self, by: str, name: str, roles: list[str], skpds: list[str]) -> Account:
        """An account's roles and SKPDs, changed by an admin (never the last admin's admin role).
        Its tokens keep the scopes they were made with; its next login gets the new ones."""
        checked_roles, checked_skpds = _checked_roles(roles), _checked_skpds(skpds)
        with self.store.transaction() as conn:
            account = self.get(name, conn)
            if "admin" not in checked_roles:
                self._keep_an_admin(conn, account)
            conn.execute(
                sa.update(accounts_table)
                .where(accounts_table.c.name == name)
                .values(roles=json.dumps(checked_roles), skpds=json.dumps(checked_skpds))
            )
            changed = self.get(name, conn)
            self.store.append_audit(
                conn,
                actor=by,
                action="account_roles_set",
                request_id=None,
                payload={"name": name, "roles": list(changed.roles), "skpds": list(changed.skpds)},
            )
            return changed

    def set_disabled(self, by: str, name: str, disabled: bool) -> Account:
        with self.store.transaction() as conn:
            account = self.get(name, conn)
            if disabled:
                self._keep_an_admin(conn, account)
            conn.execute(
                sa.update(accounts_table).where(accounts_table.c.name == name).values(disabled=disabled)
            )
            self.store.append_audit(
                conn,
                actor=by,
                action="account_disabled" if disabled else "account_enabled",
                request_id=None,
                payload={"name": name},
            )
            return self.get(name, conn)

    # ---------------------------------------------------------------- passwords

    def change_password(self, name: str, current: str | None, new: str, *, keep_token: str | None) -> None:
        """An account's own new password. The current one must be given when there is one (a
        stolen session alone cannot lock its owner out); only an account without a password,
        reached over the socket (the kernel vouches), sets a first one without. Every other
        session of the account ends: whoever else held one must log in with the new password."""
        _checked_password(new)
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(accounts_table).where(accounts_table.c.name == name)).first()
        if row is None:
            raise AccountError("not_found", "account.unknown", f"there is no account {name!r}")
        if row.password_hash or current is not None:
            # The same throttle as the login: a stolen session cannot guess the password here.
            until = self.throttle.blocked_until(name)
            if until is not None:
                raise AccountError(
                    "throttled",
                    "auth.login_throttled",
                    f"too many wrong passwords for {name}: try again after {iso(until)}",
                )
            if current is None or self.check_password(name, current) is None:
                self.throttle.failed(name)
                self.log_refusal("password_change_refused", name, {"name": name})
                raise AccountError("refused", "account.password_current", "the current password is wrong")
        if current is not None and secrets.compare_digest(current, new):
            raise AccountError("input", "account.password_same", "the new password is the current one")
        self._set_password(name, name, new, "password_changed", keep_token=keep_token)

    def reset_password(self, by: str, name: str) -> str:
        """An admin's reset: a new random password, shown once to the admin (who hands it over);
        every session of the account ends. An admin changes their own with change_password."""
        if by == name:
            raise AccountError(
                "input", "account.password_own", "change your own password with your current one"
            )
        new = secrets.token_urlsafe(12)  # 16 characters, 96 bits
        self._set_password(by, name, new, "password_reset", keep_token=None)
        return new

    def _set_password(self, by: str, name: str, new: str, action: str, *, keep_token: str | None) -> None:
        at = iso(now())
        with self.store.transaction() as conn:
            self.get(name, conn)
            conn.execute(
                sa.update(accounts_table)
                .where(accounts_table.c.name == name)
                .values(password_hash=_HASHER.hash(new))
            )
            ended = sa.update(tokens_table).where(
                tokens_table.c.account == name, tokens_table.c.revoked_at.is_(None)
            )
            if keep_token is not None:
                ended = ended.where(tokens_table.c.id != keep_token)
            count = conn.execute(ended.values(revoked_at=at)).rowcount
            # The audit entry names who and how many sessions ended; never the password.
            self.store.append_audit(
                conn, actor=by, action=action, request_id=None, payload={"name": name, "tokens_ended": count}
            )

    # ---------------------------------------------------------------- second factor

    def totp_offer(self, name: str) -> dict[str, str]:
        """A new TOTP secret for `name` to put in an authenticator app; nothing is stored until
        a code made with it comes back (totp_enable), so a secret never seen again is no harm."""
        account = self.get(name)
        secret = pyotp.random_base32()
        uri = pyotp.TOTP(secret).provisioning_uri(name=account.name, issuer_name=TOTP_ISSUER)
        return {"secret": secret, "uri": uri}

    def totp_enable(self, name: str, secret: str, code: str) -> Account:
        if not _BASE32.match(secret):
            raise AccountError("input", "account.totp_secret", "the secret is not one the service offered")
        step = _matching_step(secret, code, after=None)
        if step is None:
            raise AccountError("refused", "account.totp_code", "the code does not match the secret")
        with self.store.transaction() as conn:
            if self.get(name, conn).totp:
                raise AccountError("refused", "account.totp_on", f"{name} has a second factor already")
            conn.execute(
                sa.update(accounts_table)
                .where(accounts_table.c.name == name)
                .values(totp_secret=secret, totp_last_step=step)
            )
            self.store.append_audit(
                conn, actor=name, action="totp_enabled", request_id=None, payload={"name": name}
            )
            return self.get(name, conn)

    def totp_disable(self, by: str, name: str, code: str | None) -> Account:
        """Off by its owner with a code (the phone still in hand), or by an admin's reset for
        someone who lost it (`code` None; the API allows that to admins only)."""
        if by == name and (code is None or not self._code_accepted(name, code)):
            raise AccountError("refused", "account.totp_code", "the code is wrong")
        with self.store.transaction() as conn:
            if not self.get(name, conn).totp:
                raise AccountError("input", "account.totp_off", f"{name} has no second factor")
            conn.execute(
                sa.update(accounts_table)
                .where(accounts_table.c.name == name)
                .values(totp_secret=None, totp_last_step=None)
            )
            action = "totp_disabled" if by == name else "totp_reset"
            self.store.append_audit(conn, actor=by, action=action, request_id=None, payload={"name": name})
            return self.get(name, conn)

    def _code_accepted(self, name: str, code: str) -> bool:
        """The code is the account's for now (one step of clock drift either way) and newer
        than the last one accepted, which it then becomes: a code seen once is spent."""
        with self.store.transaction() as conn:
            row = conn.execute(
                sa.select(accounts_table.c.totp_secret, accounts_table.c.totp_last_step).where(
                    accounts_table.c.name == name
                )
            ).first()
            if row is None or row.totp_secret is None:
                return False
            step = _matching_step(row.totp_secret, code, after=row.totp_last_step)
            if step is None:
                return False
            conn.execute(
                sa.update(accounts_table).where(accounts_table.c.name == name).values(totp_last_step=step)
            )
        return True

    def check_password(self, name: str, password: str) -> Account | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(accounts_table).where(accounts_table.c.name == name)).first()
        if row is None or not row.password_hash:
            _HASHER.hash(password)  # as slow as a real check: the timing names no account
            return None
        try:
            _HASHER.verify(row.password_hash, password)
        except (VerificationError, InvalidHashError):
            return None
        account = _account(row)
        return None if account.disabled else account

    def login(
        self, name: str, password: str, *, hours: int = 12, totp: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        """A password login: a token of the account's own scopes (from its roles), for `hours`.
        A wrong name and a wrong password are one answer; both go on the audit log."""
        until = self.throttle.blocked_until(name)
        if until is not None:
            self.log_refusal("login_throttled", "-", {"name": name[:64]})
            raise AccountError(
                "throttled",
                "auth.login_throttled",
                f"too many wrong passwords for {name[:64]!r}: logins with that name are refused "
                f"until {iso(until)}",
            )
        account = self.check_password(name, password)
        # A missing or wrong code is answered as a wrong password: the answer never says that
        # the password was right.
        if account is None or (account.totp and not self._code_accepted(account.name, totp or "")):
            self.throttle.failed(name)
            self.log_refusal(
                "login_failed", "-", {"name": name[:64], "why": "code" if account else "password"}
            )
            raise AccountError(
                "refused",
                "auth.login",
                "wrong account name, password or code (or the account is disabled)",
            )
        self.throttle.succeeded(name)
        roles = set(account.roles)
        with self.store.engine.connect() as conn:  # a Plh. in force acts in the approver's role
            if delegation.active_for(conn, account.name, "approver", now()) is not None:
                roles.add("approver")
        scopes = sorted({scope for role in roles for scope in ROLE_SCOPES[role]})
        secret, record = self.create_token(
            account.name, account.name, scopes=scopes, expires_in=dt.timedelta(hours=hours)
        )
        with self.store.transaction() as conn:
            self.store.append_audit(
                conn, actor=account.name, action="login", request_id=None, payload={"token": record["id"]}
            )
        return secret, record

    # ---------------------------------------------------------------- tokens

    def create_token(
        self, by: str, name: str, *, scopes: list[str], expires_in: dt.timedelta
    ) -> tuple[str, dict[str, Any]]:
        """A new token for account `name`; returns the secret (shown once) and its record."""
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown or not scopes:
            raise AccountError(
                "input",
                "token.scopes",
                f"scopes {unknown or scopes}: give one or more of {', '.join(SCOPES)}",
            )
        if not dt.timedelta(minutes=1) <= expires_in <= dt.timedelta(days=366):
            raise AccountError("input", "token.expires_in", "a token expires within 1 minute to 366 days")
        token_id = secrets.token_hex(6)
        secret = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        created = now()
        record = {
            "id": token_id,
            "account": name,
            "scopes": sorted(set(scopes), key=SCOPES.index),
            "created_at": iso(created),
            "expires_at": iso(created + expires_in),
            "revoked_at": None,
        }
        with self.store.transaction() as conn:
            self.get(name, conn)
            conn.execute(
                sa.insert(tokens_table).values(
                    **{**record, "scopes": json.dumps(record["scopes"])},
                    digest=hashlib.sha256(secret.encode()).hexdigest(),
                )
            )
            self.store.append_audit(conn, actor=by, action="token_created", request_id=None, payload=record)
        return secret, record

    def tokens(self) -> list[dict[str, Any]]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(tokens_table).order_by(tokens_table.c.created_at)).all()
        return [
            {
                "id": r.id,
                "account": r.account,
                "scopes": json.loads(r.scopes),
                "created_at": r.created_at,
                "expires_at": r.expires_at,
                "revoked_at": r.revoked_at,
                "last_used_at": r.last_used_at,
            }
            for r in rows
        ]

    def revoke_token(self, by: str, token_id: str) -> None:
        with self.store.transaction() as conn:
            done = conn.execute(
                sa.update(tokens_table)
                .where(tokens_table.c.id == token_id, tokens_table.c.revoked_at.is_(None))
                .values(revoked_at=iso(now()))
            )
            if done.rowcount != 1:
                raise AccountError("not_found", "token.unknown", f"there is no unrevoked token {token_id!r}")
            self.store.append_audit(
                conn, actor=by, action="token_revoked", request_id=None, payload={"id": token_id}
            )

    def by_token(self, secret: str) -> Caller:
        """The caller a token proves, or AccountError('refused') saying why not; every refusal
        goes on the audit log."""
        digest = hashlib.sha256(secret.encode()).hexdigest()
        with self.store.transaction() as conn:
            row = conn.execute(sa.select(tokens_table).where(tokens_table.c.digest == digest)).first()
            account = self.get(row.account, conn) if row is not None else None
            why = _token_refusal(row, account)
            if why is None and row is not None:
                conn.execute(
                    sa.update(tokens_table).where(tokens_table.c.id == row.id).values(last_used_at=iso(now()))
                )
        if why is not None:
            self.log_refusal(
                "auth_failed",
                account.name if account else "-",
                {"via": "token", "token": row.id if row else None, "why": why[0]},
            )
        if why is not None or row is None or account is None:
            raise AccountError("refused", *(why or ("token.unknown", "unknown token")))
        return Caller(account=account, via="token", scopes=tuple(json.loads(row.scopes)), token_id=row.id)


def _token_refusal(row: Any, account: Account | None) -> tuple[str, str] | None:
    if row is None or account is None:
        return "token.unknown", "the token is not one this service issued"
    if row.revoked_at:
        return "token.revoked", f"token {row.id} was revoked at {row.revoked_at}"
    if parse_iso(row.expires_at) <= now():
        return "token.expired", f"token {row.id} expired at {row.expires_at}"
    if account.disabled:
        return "account.disabled", f"account {account.name} is disabled"
    return None

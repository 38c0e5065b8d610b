"""pulih serve's HTTP API (FastAPI): identities, accounts and tokens.

Every caller is authenticated: on the Unix socket by the uid the kernel reports (an account
whose OS user it is), anywhere by an API token (``Authorization: Bearer pulih_...``). A token
on the socket acts as its own account and scopes. Nothing the caller sends names who they
are. Every refusal has one envelope::

    {"error": {"code": EXIT_CODE, "id": "token.expired", "message": "...", "details": {}}}

where ``code`` is the exit code the CLI gives it (2 bad input, 3 refused)."""

import datetime as dt
import os
import pwd
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field

from pulih import approvals, delegation
from pulih import register as reg
from pulih import report as reports
from pulih.anchors import NAMESPACE
from pulih.desk import app as desk
from pulih.exitcodes import Exit
from pulih.requests import BACKUP_NEXT, PROCEDURES, STEPS, Config, Refused, Requests
from pulih.service import repository
from pulih.service.accounts import (
    ROLES,
    SCOPES,
    AccountError,
    Accounts,
    Caller,
    FailureBudget,
    LoginThrottle,
)
from pulih.service.delegations_api import router as delegations_router
from pulih.service.jobs import JobRefused, Jobs
from pulih.service.outbox import STATUSES as OUTBOX_STATUSES
from pulih.service.outbox import Outbox
from pulih.service.outbox import listing as outbox_rows
from pulih.service.peer import EXTENSION, Peer
from pulih.service.requests_api import acting
from pulih.service.requests_api import router as requests_router
from pulih.service.restores import RestoreOrder, closed_windows
from pulih.store import Store, now

API = "/v1"
PROGRESS_EVENTS = ("task", "stream", "host")  # a job's lines of progress, as the CLI prints them
DEMO_ACTOR_HEADER = "x-pulih-demo-actor"  # honoured only by pulih serve --demo-actors
_DURATION = re.compile(r"^([1-9][0-9]{0,5})([mhd])$")


class ApiError(Exception):
    def __init__(self, status: int, code: Exit, message_id: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message_id, self.details = status, code, message_id, details


def _from_account_error(exc: AccountError) -> ApiError:
    status, code = {
        "input": (400, Exit.BAD_INPUT),
        "not_found": (404, Exit.BAD_INPUT),
        "throttled": (429, Exit.REFUSED),
    }.get(exc.kind, (403, Exit.REFUSED))
    return ApiError(status, code, exc.message_id, str(exc))


def parse_duration(text: str) -> dt.timedelta:
    """'30m', '12h', '90d'."""
    match = _DURATION.match(text)
    if not match:
        raise ApiError(400, Exit.BAD_INPUT, "duration", f"{text!r} is not a duration such as 30m, 12h or 90d")
    count, unit = int(match.group(1)), match.group(2)
    return {"m": dt.timedelta(minutes=count), "h": dt.timedelta(hours=count), "d": dt.timedelta(days=count)}[
        unit
    ]


class NewAccount(BaseModel):
    name: str = Field(max_length=64)
    roles: list[str] = Field(max_length=6)
    skpds: list[str] = Field(default_factory=list, max_length=64)
    email: str | None = Field(default=None, max_length=256)
    unix_user: str | None = Field(default=None, max_length=64)
    password: str | None = Field(default=None, max_length=1024)


class AccountRoles(BaseModel):
    roles: list[str] = Field(max_length=6)
    skpds: list[str] = Field(default_factory=list, max_length=64)


class Policy(BaseModel):
    # Pairs of roles that must be different people on one request (unset: as it was).
    distinct: list[list[str]] | None = Field(default=None, max_length=15)
    # Which approvals must be signed by the approver's SSH key (unset: as it was).
    signed_approvals: Literal["none", "in_place", "all"] | None = None
    # Whether an approver may name their own acting approver (Plh.); else only an admin does.
    approvers_delegate: bool | None = None


class NewKey(BaseModel):
    public_key: str = Field(max_length=16384)


class KeyRevocation(BaseModel):
    fingerprint: str = Field(max_length=128)


class NewJob(BaseModel):
    kind: str = Field(max_length=16)
    limit: str | None = Field(default=None, max_length=1000)
    items: list[str] = Field(default_factory=list, max_length=200)
    verify: bool = True
    check: bool = False
    age_recipients: list[str] = Field(default_factory=list, max_length=20)  # public keys: no secret
    backups: list[str] = Field(default_factory=list, max_length=200)  # verify these backup ids


class Adoption(BaseModel):
    backup_id: str = Field(max_length=64)
    asset: str | None = Field(default=None, max_length=64)
    item: str | None = Field(default=None, max_length=128)
    reason: str = Field(max_length=2000)  # why the admin vouches for it: on the record


class NewRestore(BaseModel):
    request: str = Field(max_length=64)
    items: list[str] = Field(default_factory=list, max_length=200)
    backups: list[str] = Field(default_factory=list, max_length=200)
    target: dict[str, Any] | None = None
    attempts: int | None = Field(default=None, ge=1, le=20)
    check: bool = False


class RequestBackup(BaseModel):
    check: bool = False  # ask the gate only; back up nothing


class CancelJob(BaseModel):
    reason: str = Field(default="", max_length=64)  # e.g. Ctrl-C or SIGTERM at the client


class GateQuestion(BaseModel):
    host: str = Field(max_length=255)
    item: str = Field(max_length=64)


class Login(BaseModel):
    name: str = Field(max_length=64)
    password: str = Field(max_length=1024)
    hours: int = Field(default=12, ge=1, le=24)
    totp: str | None = Field(default=None, max_length=16)  # the code, for an account with one


class TotpOn(BaseModel):
    secret: str = Field(max_length=64)  # as POST /v1/totp/offer gave it
    code: str = Field(max_length=16)


class TotpOff(BaseModel):
    code: str = Field(max_length=16)


class PasswordChange(BaseModel):
    current: str | None = Field(default=None, max_length=1024)  # needed whenever there is one
    new: str = Field(max_length=1024)


class NewToken(BaseModel):
    account: str = Field(max_length=64)
    scopes: list[str] = Field(max_length=len(SCOPES))
    expires_in: str = Field(default="90d", max_length=8)


def create_app(
    store: Store,
    *,
    demo: bool = False,
    register: Path | None = None,
    config: Config | None = None,
    socket_path: Path | None = None,
    age_identity: str | None = None,
    clock: Callable[[], dt.datetime] = now,
) -> FastAPI:
    """`config`: the service's settings (approval validity, restore attempts); `socket_path`:
    its own Unix socket, which its restore jobs' playbooks use to ask the gate before a swap;
    `clock`: the record's time (a property test moves it on)."""
    accounts = Accounts(store, FailureBudget(clock=clock), LoginThrottle(clock=clock))
    settings = config or Config()

    def roles_of(name: str) -> set[str]:
        try:
            account = accounts.get(name)
        except AccountError:
            return set()
        return set() if account.disabled else set(account.roles)

    # Mail only when config.yml has a `mail:` section; pulih serve starts its sender thread.
    outbox = Outbox(store, settings.mail, settings.standard_minutes) if settings.mail else None
    requests = Requests(
        store,
        settings,
        clock,
        roles_of=roles_of,
        roles_from="the service's accounts (pulih admin user)",
        on_step=outbox.on_step if outbox else None,
    )
    app = FastAPI(
        title="pulih",
        version="1",
        description="Backups, verified restores and the approval record around them.",
    )
    app.state.outbox = outbox

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status,
            content={
                "error": {
                    "code": int(exc.code),
                    "id": exc.message_id,
                    "message": str(exc),
                    "details": exc.details,
                }
            },
        )

    @app.exception_handler(JobRefused)
    async def job_refused(request: Request, exc: JobRefused) -> JSONResponse:
        status = {Exit.BAD_INPUT: 400, Exit.REFUSED: 409}.get(exc.code, 503)
        details = {"run_id": exc.run_id} if exc.run_id else {}
        return await api_error(request, ApiError(status, exc.code, exc.message_id, str(exc), **details))

    @app.exception_handler(AccountError)
    async def account_error(request: Request, exc: AccountError) -> JSONResponse:
        return await api_error(request, _from_account_error(exc))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # Never a traceback to a caller; the envelope, with the kind of failure.
        return JSONResponse(
            status_code=500,
            content={
                "error": {
                    "code": int(Exit.FAILED),
                    "id": "service.unexpected",
                    "message": f"the service failed: {type(exc).__name__}: "
                    + " ".join(str(exc).split())[:300],
                    "details": {},
                }
            },
        )

    @app.exception_handler(RequestValidationError)
    async def bad_body(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
        return JSONResponse(
            status_code=400,
            content={
                "error": {
                    "code": int(Exit.BAD_INPUT),
                    "id": "request.invalid",
                    "message": "; ".join(problems),
                    "details": {},
                }
            },
        )

    def caller(request: Request) -> Caller:
        named = request.headers.get(DEMO_ACTOR_HEADER)
        if demo and named:  # demo mode only: a script plays the SOP's people (the store says demo)
            played = accounts.get(named)
            if played.disabled:
                raise ApiError(403, Exit.REFUSED, "auth.disabled", f"account {played.name} is disabled")
            return Caller(account=played, via="demo")
        header = request.headers.get("authorization", "")
        if header:
            scheme, _, secret = header.partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                raise ApiError(
                    401, Exit.REFUSED, "auth.header", "send a token as 'Authorization: Bearer pulih_...'"
                )
            return accounts.by_token(secret.strip())
        peer: Peer | None = (request.scope.get("extensions") or {}).get(EXTENSION)
        if peer is None:
            raise ApiError(
                401,
                Exit.REFUSED,
                "auth.missing",
                "log in with a token (PULIH_TOKEN): this is no local socket",
            )
        account = accounts.by_uid(peer.uid)
        if account is None or account.disabled:
            try:
                user = pwd.getpwuid(peer.uid).pw_name
            except KeyError:
                user = f"uid {peer.uid}"
            accounts.refuse_socket(peer.uid, account)
            why = "is disabled" if account else "has no pulih account"
            raise ApiError(403, Exit.REFUSED, "auth.no_account", f"OS user {user} {why}: ask an admin")
        return Caller(account=account, via="socket")

    Authenticated = Annotated[Caller, Depends(caller)]

    def require(who: Caller, *, role: str, scope: str) -> None:
        if scope not in who.scopes:
            raise ApiError(
                403,
                Exit.REFUSED,
                "auth.scope",
                f"this token may {', '.join(who.scopes)}; {scope!r} needs a token with that scope",
            )
        if role not in who.account.roles:
            raise ApiError(
                403,
                Exit.REFUSED,
                "auth.role",
                f"{who.account.name} is not {role} (roles: {', '.join(who.account.roles)})",
            )

    @app.get(f"{API}/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "demo": demo}

    @app.post(f"{API}/login")
    def login(body: Login) -> dict[str, Any]:
        """A password login (the desk's, or a script's without a token): a token of the
        account's own scopes, for at most a day; the token is shown once."""
        secret, record = accounts.login(body.name, body.password, hours=body.hours, totp=body.totp)
        return {**record, "token": secret}

    @app.post(f"{API}/logout")
    def logout(who: Authenticated) -> dict[str, Any]:
        """The caller's own token, revoked (the desk's log out)."""
        if who.token_id is None:
            raise ApiError(400, Exit.BAD_INPUT, "auth.logout", "only a token logs out; a socket has none")
        accounts.revoke_token(who.account.name, who.token_id)
        return {"status": "ok", "revoked": who.token_id}

    @app.get(f"{API}/whoami")
    def whoami(who: Authenticated) -> dict[str, Any]:
        with store.engine.connect() as conn:  # a Plh. in force: the role they act in, for whom
            acting = delegation.active_for(conn, who.account.name, "approver", clock())
        return {
            **who.account.as_dict(),
            "via": who.via,
            "scopes": list(who.scopes),
            "token": who.token_id,
            "demo": demo,
            "acting": [acting.as_dict()] if acting else [],
        }

    @app.post(f"{API}/password")
    def change_password(body: PasswordChange, who: Authenticated) -> dict[str, Any]:
        """The caller's own new password; their other sessions end. A first password without a
        current one only over the socket, where the kernel says who asks: a token alone (which
        may be narrower than the account's roles) never buys a password login."""
        if body.current is None and who.via != "socket":
            raise ApiError(
                400, Exit.BAD_INPUT, "account.password_current", "give the current password as well"
            )
        accounts.change_password(who.account.name, body.current, body.new, keep_token=who.token_id)
        return {"name": who.account.name, "status": "changed"}

    @app.post(f"{API}/totp/offer")
    def totp_offer(who: Authenticated) -> dict[str, str]:
        """A new second-factor secret for the caller (and its otpauth:// URI for an app); it
        counts only once a code made with it comes back to POST /v1/totp/enable."""
        return accounts.totp_offer(who.account.name)

    @app.post(f"{API}/totp/enable")
    def totp_enable(body: TotpOn, who: Authenticated) -> dict[str, Any]:
        return accounts.totp_enable(who.account.name, body.secret, body.code).as_dict()

    @app.post(f"{API}/totp/disable")
    def totp_disable(body: TotpOff, who: Authenticated) -> dict[str, Any]:
        """The caller's own second factor off, with a code of it."""
        return accounts.totp_disable(who.account.name, who.account.name, body.code).as_dict()

    @app.get(f"{API}/sop")
    def sop(who: Authenticated) -> dict[str, Any]:
        """The SOP's steps as the record runs them: role, what may follow, standard minutes per
        procedure (the service's configured ones), the form and the names; the desk and the CLI
        read them from here rather than keeping a copy."""
        minutes = settings.standard_minutes
        return {
            "procedures": dict(PROCEDURES),
            "steps": [
                {
                    "name": spec.name,
                    "role": spec.role,
                    "next": list(spec.next),
                    "standard_minutes": {p: minutes[p].get(spec.name) for p in PROCEDURES},
                    "form": spec.form,
                    "label": dict(spec.label),
                }
                for spec in STEPS
            ],
            # A backup request's steps where they differ from a restore's (no assessment).
            "backup_next": {status: list(steps) for status, steps in BACKUP_NEXT.items()},
        }

    # ---------------------------------------------------------------- admin

    @app.get(f"{API}/admin/users")
    def users(who: Authenticated) -> dict[str, Any]:
        require(who, role="admin", scope="admin")
        return {"users": [a.as_dict() for a in accounts.all()]}

    @app.get(f"{API}/admin/users/{{name}}")
    def user(name: str, who: Authenticated) -> dict[str, Any]:
        require(who, role="admin", scope="admin")
        return accounts.get(name).as_dict()

    @app.post(f"{API}/admin/users", status_code=201)
    def add_user(body: NewAccount, who: Authenticated) -> dict[str, Any]:
        require(who, role="admin", scope="admin")
        account = accounts.add(
            who.account.name,
            body.name,
            roles=body.roles,
            skpds=body.skpds,
            email=body.email,
            unix_user=body.unix_user,
            password=body.password,
        )
        return account.as_dict()

    @app.post(f"{API}/admin/users/{{name}}/password")
    def reset_password(name: str, who: Authenticated) -> dict[str, Any]:
        """A new random password for `name`, shown once (the admin hands it over); every session
        of the account ends."""
        require(who, role="admin", scope="admin")
        return {"name": name, "password": accounts.reset_password(who.account.name, name)}

    @app.post(f"{API}/admin/users/{{name}}/totp/reset")
    def totp_reset(name: str, who: Authenticated) -> dict[str, Any]:
        """An account's second factor off, for someone who lost it (they set up a new one)."""
        require(who, role="admin", scope="admin")
        if name == who.account.name:
            raise ApiError(
                400, Exit.BAD_INPUT, "account.totp_own", "turn your own second factor off with a code of it"
            )
        return accounts.totp_disable(who.account.name, name, None).as_dict()

    @app.put(f"{API}/admin/users/{{name}}/roles")
    def set_roles(name: str, body: AccountRoles, who: Authenticated) -> dict[str, Any]:
        require(who, role="admin", scope="admin")
        return accounts.set_roles(who.account.name, name, body.roles, body.skpds).as_dict()

    @app.post(f"{API}/admin/users/{{name}}/disable")
    def disable(name: str, who: Authenticated) -> dict[str, Any]:
        require(who, role="admin", scope="admin")
        return accounts.set_disabled(who.account.name, name, True).as_dict()

    @app.post(f"{API}/admin/users/{{name}}/enable")
    def enable(name: str, who: Authenticated) -> dict[str, Any]:
        require(who, role="admin", scope="admin")
        return accounts.set_disabled(who.account.name, name, False).as_dict()

    @app.get(f"{API}/admin/policy")
    def policy(who: Authenticated) -> dict[str, Any]:
        require(who, role="admin", scope="admin")
        return store.policy()

    @app.put(f"{API}/admin/policy")
    def set_policy(body: Policy, who: Authenticated) -> dict[str, Any]:
        require(who, role="admin", scope="admin")
        policy = store.policy()
        if body.signed_approvals is not None:
            policy["signed_approvals"] = body.signed_approvals
        if body.approvers_delegate is not None:
            policy["approvers_delegate"] = body.approvers_delegate
        if body.distinct is None:
            store.set_policy(who.account.name, policy)
            return store.policy()
        pairs = []
        for pair in body.distinct:
            if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(ROLES):
                raise ApiError(
                    400,
                    Exit.BAD_INPUT,
                    "policy.pair",
                    f"{pair}: a pair of two different roles of {', '.join(ROLES)}",
                )
            pairs.append(sorted(pair, key=ROLES.index))
        store.set_policy(who.account.name, {**policy, "distinct": sorted(pairs)})
        return store.policy()

    @app.get(f"{API}/admin/users/{{name}}/keys")
    def user_keys(name: str, who: Authenticated) -> dict[str, Any]:
        require(who, role="admin", scope="admin")
        return {"keys": accounts.keys(name)}

    @app.post(f"{API}/admin/users/{{name}}/keys", status_code=201)
    def add_key(name: str, body: NewKey, who: Authenticated) -> dict[str, Any]:
        require(who, role="admin", scope="admin")
        return accounts.add_key(who.account.name, name, body.public_key)

    @app.post(f"{API}/admin/users/{{name}}/keys/revoke")
    def revoke_key(name: str, body: KeyRevocation, who: Authenticated) -> dict[str, Any]:
        require(who, role="admin", scope="admin")
        return accounts.revoke_key(who.account.name, name, body.fingerprint)

    @app.post(f"{API}/admin/tokens", status_code=201)
    def create_token(body: NewToken, who: Authenticated) -> dict[str, Any]:
        require(who, role="admin", scope="admin")
        secret, record = accounts.create_token(
            who.account.name, body.account, scopes=body.scopes, expires_in=parse_duration(body.expires_in)
        )
        return {**record, "token": secret}

    @app.get(f"{API}/admin/outbox")
    def outbox_listing(
        who: Authenticated,
        status: str | None = None,
        limit: int = Query(default=200, ge=1, le=1000),
    ) -> dict[str, Any]:
        """The mail outbox, newest first (never a mail's body, nor anything of the SMTP
        password): pending, failed with the last attempt's error, sent, skipped with why."""
        require(who, role="admin", scope="admin")
        if status is not None and status not in OUTBOX_STATUSES:
            known = ", ".join(OUTBOX_STATUSES)
            raise ApiError(400, Exit.BAD_INPUT, "outbox.status", f"status {status!r}: one of {known}")
        summary = outbox.settings.summary() if outbox else None
        return {"mail": summary, "mails": outbox_rows(store, status, limit)}

    @app.get(f"{API}/admin/tokens")
    def tokens(who: Authenticated) -> dict[str, Any]:
        require(who, role="admin", scope="admin")
        return {"tokens": accounts.tokens()}

    @app.post(f"{API}/admin/tokens/{{token_id}}/revoke")
    def revoke(token_id: str, who: Authenticated) -> dict[str, Any]:
        require(who, role="admin", scope="admin")
        accounts.revoke_token(who.account.name, token_id)
        return {"id": token_id, "revoked": True}

    jobs = Jobs(register, demo=demo, recorded=store.recorded_backups)

    @app.post(f"{API}/jobs", status_code=202)
    def start_job(body: NewJob, who: Authenticated) -> dict[str, Any]:
        require(who, role="operator", scope="backup")
        if body.kind == "adopt":
            raise ApiError(
                400, Exit.BAD_INPUT, "job.kind", "an adoption is an admin's: pulih backups adopt BACKUP_ID"
            )
        extravars: dict[str, Any] = {}
        if body.kind == "backup":
            extravars["pulih_backup_verify"] = body.verify
            if body.items:
                extravars["pulih_backup_items"] = body.items
            if body.age_recipients:
                extravars["pulih_backup_age_recipients"] = body.age_recipients
        else:
            if body.items:
                extravars["pulih_verify_items"] = body.items
            if body.backups:
                extravars["pulih_verify_backup_ids"] = body.backups
        if age_identity:  # the service holds the private key; a caller never sends one
            extravars["pulih_verify_age_identity_file"] = age_identity
        job = jobs.start(
            who.account.name,
            body.kind,
            limit=body.limit,
            items=body.items,
            extravars=extravars,
            check=body.check,
        )
        return job.as_dict()

    @app.post(f"{API}/backups/adopt", status_code=202)
    def adopt(body: Adoption, who: Authenticated) -> dict[str, Any]:
        """An admin vouches for a backup the service never saw published (plain Ansible's, or
        one from before backups were recorded): it is verified by a test restore, the
        repository trusted for that once, and goes on the record (backup.adopted) if it passes."""
        require(who, role="admin", scope="admin")
        if not body.reason.strip():
            raise ApiError(400, Exit.BAD_INPUT, "adopt.reason", "--reason is needed: it goes on the record")
        if register is None:
            raise ApiError(503, Exit.FAILED, "service.register", "the service's config names no register")
        try:
            listed = repository.listing(register, asset=body.asset, item=body.item)
        except repository.RepositoryError as exc:
            raise ApiError(503, exc.code, exc.message_id, str(exc)) from None
        found = [b for b in listed if b["backup_id"] == body.backup_id]
        if len(found) != 1:
            raise ApiError(
                404 if not found else 400,
                Exit.UNUSABLE if not found else Exit.BAD_INPUT,
                "adopt.backup",
                f"there is no published backup {body.backup_id}"
                + (f" of {body.asset or '*'}:{body.item or '*'}" if body.asset or body.item else "")
                if not found
                else f"{len(found)} published backups are named {body.backup_id}: "
                "say which with --asset and --item",
            )
        backup = found[0]
        key = repository.key_of(backup)
        if key in store.recorded_backups([(backup["asset_id"], backup["item"])]):
            raise ApiError(400, Exit.BAD_INPUT, "adopt.recorded", f"backup {key} is on the record already")
        try:
            hostname = next(
                a.hostname for a in reg.load_inventory(register).hosts() if a.asset_id == backup["asset_id"]
            )
        except reg.RegisterError as exc:
            raise ApiError(
                503,
                Exit.FAILED,
                "service.register",
                "the service's register is invalid: " + str(exc.problems[0]),
            ) from None
        except StopIteration:
            raise ApiError(
                400,
                Exit.BAD_INPUT,
                "adopt.asset",
                f"asset {backup['asset_id']} is not a registered server in operation",
            ) from None
        extravars: dict[str, Any] = {
            "pulih_verify_items": [backup["item"]],
            "pulih_verify_backup_ids": [backup["backup_id"]],
        }
        if age_identity:
            extravars["pulih_verify_age_identity_file"] = age_identity
        job = jobs.start(
            who.account.name,
            "adopt",
            limit=hostname,
            items=[backup["item"]],
            extravars=extravars,
            check=False,
        )
        with store.transaction() as conn:
            store.append_audit(
                conn,
                actor=who.account.name,
                action="backup.adoption_asked",
                request_id=None,
                payload={"backup": key, "reason": body.reason.strip(), "job": job.id, "run_id": job.run_id},
            )
        return job.as_dict()

    def may_read(who: Caller, scopes: set[str], what: str) -> None:
        """Jobs, runs, reports and the audit check: operators, auditors and admins, with a token
        of one of `scopes`."""
        if not scopes & set(who.scopes):
            raise ApiError(403, Exit.REFUSED, "auth.scope", f"reading {what} needs a token with scope read")
        if not {"operator", "auditor", "admin"} & set(who.account.roles):
            raise ApiError(
                403, Exit.REFUSED, "auth.role", f"{who.account.name} is no operator, auditor or admin"
            )

    def may_read_jobs(who: Caller) -> None:
        may_read(who, {"read", "backup", "restore"}, "jobs")

    @app.get(f"{API}/jobs")
    def list_jobs(who: Authenticated) -> dict[str, Any]:
        may_read_jobs(who)
        return {"jobs": [j.as_dict() for j in jobs.all()]}

    @app.get(f"{API}/jobs/{{job_id}}")
    def show_job(job_id: str, who: Authenticated, events: bool = False) -> dict[str, Any]:
        """The job; with `events`, its progress so far (what the event stream has sent)."""
        may_read_jobs(who)
        job = jobs.get(job_id)
        shown = [e for e in list(job.events) if e.get("type") in PROGRESS_EVENTS] if events else None
        return {**job.as_dict(), **({"events": shown} if events else {})}

    @app.get(f"{API}/jobs/{{job_id}}/events")
    def job_events(job_id: str, who: Authenticated) -> StreamingResponse:
        may_read_jobs(who)
        return StreamingResponse(jobs.follow(jobs.get(job_id)), media_type="application/x-ndjson")

    @app.post(f"{API}/jobs/{{job_id}}/cancel")
    def cancel_job(job_id: str, who: Authenticated, body: CancelJob | None = None) -> dict[str, Any]:
        job = jobs.get(job_id)
        # A restore's check run (restore_check) is a restore's as much as the restore itself.
        require(who, role="operator", scope="restore" if job.kind.startswith("restore") else "backup")
        if not job.cancel.is_set():
            why = body.reason if body and body.reason else "pulih jobs cancel"
            job.cancel.reason = f"cancelled by {who.account.name}: {why}"
        job.cancel.set()
        with store.transaction() as conn:
            store.append_audit(
                conn, actor=who.account.name, action="job_cancelled", request_id=None, payload={"job": job_id}
            )
        return job.as_dict()

    @app.post(f"{API}/restores", status_code=202)
    def start_restore(body: NewRestore, who: Authenticated) -> dict[str, Any]:
        require(who, role="operator", scope="restore")
        order = RestoreOrder(
            request_id=body.request,
            items=body.items,
            backups=body.backups,
            target=body.target,
            attempts=body.attempts,
            check=body.check,
        )
        job = jobs.start_restore(
            who.account.name,
            order,
            acting(requests, who),
            attempts=settings.restore_attempts,
            retry_seconds=settings.restore_retry_seconds,
            gate_socket=str(socket_path) if socket_path else None,
            age_identity=age_identity,
        )
        return job.as_dict()

    @app.post(f"{API}/requests/{{request_id}}/backup", status_code=202)
    def start_request_backup(request_id: str, body: RequestBackup, who: Authenticated) -> dict[str, Any]:
        """A backup request's run (SOP B): its items backed up and verified, on its record."""
        require(who, role="operator", scope="backup")
        job = jobs.start_request_backup(
            who.account.name, request_id, acting(requests, who), check=body.check, age_identity=age_identity
        )
        return job.as_dict()

    @app.post(f"{API}/internal/jobs/{{job_id}}/gate")
    def gate_before_swap(job_id: str, body: GateQuestion, request: Request) -> JSONResponse:
        """Asked by a restore job's playbook, right before it swaps an item in: only the
        service's own processes (the kernel says so) ask, and only about a running restore."""
        peer: Peer | None = (request.scope.get("extensions") or {}).get(EXTENSION)
        if peer is None or peer.uid != os.getuid():
            raise ApiError(403, Exit.REFUSED, "auth.internal", "only the service's own jobs ask this")
        job = jobs.get(job_id)
        if job.kind != "restore" or job.status != "running" or job.order is None:
            return JSONResponse({"allowed": False, "reason": f"job {job_id} is no running restore"}, 403)
        order: RestoreOrder = job.order
        scope = [dict(zip(("asset_id", "item"), i.split(":", 1), strict=True)) for i in job.items]
        try:
            approved = order.target or requests.get(order.request_id)["target"]
            closed = (
                closed_windows(reg.load_inventory(register), scope, approved, clock()) if register else []
            )
            requests.gate(
                job.account,
                order.request_id,
                run_scope=scope,
                target=order.target,
                run_targets=job.targets,
                closed_windows=closed,
            )
        except reg.RegisterError as exc:
            return JSONResponse(
                {"allowed": False, "reason": f"the register is invalid: {exc.problems[0]}"}, 403
            )
        except Refused as exc:
            return JSONResponse({"allowed": False, "reason": str(exc)}, 403)
        return JSONResponse({"allowed": True, "host": body.host, "item": body.item})

    def may_read_record(who: Caller) -> None:
        may_read(who, {"read"}, "the record")

    @app.get(f"{API}/runs")
    def runs(who: Authenticated) -> dict[str, Any]:
        may_read_record(who)
        keys = ("run_id", "kind", "status", "exit_code", "started_at", "operator", "request_id")
        return {"runs": [{k: r.get(k) for k in keys} for r in reports.list_runs()]}

    @app.get(f"{API}/runs/{{run_id}}", response_model=None)
    def run_report(
        run_id: str, who: Authenticated, format: str = "json", lang: str = "en"
    ) -> dict[str, Any] | HTMLResponse:
        may_read_record(who)
        if not reports.RUN_ID.match(run_id):  # an id, never a path
            raise ApiError(
                400,
                Exit.BAD_INPUT,
                "run.id",
                f"RUN_ID: {run_id!r} is not a run id "
                "(like 20261121T020000Z-backup-1a2b; see pulih runs list)",
            )
        try:
            doc = reports.load(run_id)
        except (OSError, ValueError):
            raise ApiError(404, Exit.BAD_INPUT, "run.unknown", f"no report for run {run_id!r}") from None
        if format == "html":
            return HTMLResponse(reports.render_html(doc, lang if lang in ("en", "id") else "en"))
        return doc

    @app.get(f"{API}/audit")
    def audit_log(
        who: Authenticated,
        before: int | None = Query(default=None, ge=1),
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> dict[str, Any]:
        """The audit log, newest first, `limit` entries before `before` (a seq): as stored, so
        a reader sees exactly what POST /v1/audit/verify checks."""
        may_read_record(who)
        entries = store.audit_page(before=before, limit=limit)
        return {"entries": entries, "total": store.audit_count()}

    @app.post(f"{API}/audit/verify")
    def audit_verify(who: Authenticated) -> dict[str, Any]:
        may_read_record(who)
        problems = store.verify_audit()
        count = store.audit_count()  # a count, not the whole chain read a second time
        report = reports.RunReport(
            kind="audit", command=["pulih", "audit", "verify"], operator=who.account.name, demo=demo
        )
        report.errors = [str(p) for p in problems]
        report.finish("failed" if problems else "succeeded", int(Exit.FAILED if problems else Exit.OK))
        report.write()
        return {
            "status": "tampered" if problems else "intact",
            "entries": count,
            "problems": [{"seq": p.seq, "message": p.message} for p in problems],
            "anchors": [a.name for a in store.anchors],
            "run_id": report.run_id,
        }

    @app.get(f"{API}/audit/signers", response_class=PlainTextResponse)
    def audit_signers(who: Authenticated) -> str:
        """ssh-keygen's allowed-signers file for checking the record offline: every approval key
        the chain ever registered (each within the window it was valid in) and the audit key
        that signs the anchors."""
        may_read_record(who)
        text = approvals.allowed_signers(approvals.keys_on_chain(store))
        for public_key in store.audit_public_keys():
            text += f'{NAMESPACE} namespaces="{NAMESPACE}" {public_key}\n'
        return text

    app.include_router(requests_router(requests, Authenticated, register, ApiError, demo=demo))
    app.include_router(delegations_router(requests, Authenticated, ApiError))
    if socket_path is not None:  # the desk calls the API back over the service's own socket
        desk.mount(app, socket_path)
    return app

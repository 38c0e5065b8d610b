"""pulih serve's HTTP API (FastAPI): identities, accounts and tokens.

Every caller is authenticated: on the Unix socket by the uid the kernel reports (an account
whose OS user it is), anywhere by an API token (``Authorization: Bearer pulih_...``). A token
on the socket acts as its own account and scopes. Nothing the caller sends names who they
are. Every refusal has one envelope::

    {"error": {"code": EXIT_CODE, "id": "token.expired", "message": "...", "details": {}}}

where ``code`` is the exit code the CLI gives it (2 bad input, 3 refused)."""

import datetime as dt
import pwd
import re
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from pulih.exitcodes import Exit
from pulih.requests import Config, Requests
from pulih.service.accounts import ROLES, SCOPES, AccountError, Accounts, Caller
from pulih.service.jobs import JobRefused, Jobs
from pulih.service.peer import EXTENSION, Peer
from pulih.service.requests_api import router as requests_router
from pulih.store import Store

API = "/v1"
DEMO_ACTOR_HEADER = "x-pulih-demo-actor"  # honoured only by pulih serve --demo-actors
_DURATION = re.compile(r"^([1-9][0-9]{0,5})([mhd])$")


class ApiError(Exception):
    def __init__(self, status: int, code: Exit, message_id: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message_id, self.details = status, code, message_id, details


def _from_account_error(exc: AccountError) -> ApiError:
    status, code = {"input": (400, Exit.BAD_INPUT), "not_found": (404, Exit.BAD_INPUT)}.get(
        exc.kind, (403, Exit.REFUSED)
    )
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


class Policy(BaseModel):
    # Pairs of roles that must be different people on one request.
    distinct: list[list[str]] = Field(default_factory=list, max_length=15)


class NewJob(BaseModel):
    kind: str = Field(max_length=16)
    limit: str | None = Field(default=None, max_length=1000)
    items: list[str] = Field(default_factory=list, max_length=200)
    verify: bool = True
    check: bool = False


class NewToken(BaseModel):
    account: str = Field(max_length=64)
    scopes: list[str] = Field(max_length=len(SCOPES))
    expires_in: str = Field(default="90d", max_length=8)


def create_app(store: Store, *, demo: bool = False, register: Path | None = None) -> FastAPI:
    accounts = Accounts(store)

    def roles_of(name: str) -> set[str]:
        try:
            account = accounts.get(name)
        except AccountError:
            return set()
        return set() if account.disabled else set(account.roles)

    requests = Requests(
        store, Config(), roles_of=roles_of, roles_from="the service's accounts (pulih admin user)"
    )
    app = FastAPI(
        title="pulih",
        version="1",
        description="Backups, verified restores and the approval record around them.",
    )

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
        return await api_error(request, ApiError(status, exc.code, exc.message_id, str(exc)))

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
            with store.transaction() as conn:
                store.append_audit(
                    conn,
                    actor=account.name if account else "-",
                    action="auth_failed",
                    request_id=None,
                    payload={
                        "via": "socket",
                        "uid": peer.uid,
                        "why": "disabled" if account else "no account",
                    },
                )
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

    @app.get(f"{API}/whoami")
    def whoami(who: Authenticated) -> dict[str, Any]:
        return {
            **who.account.as_dict(),
            "via": who.via,
            "scopes": list(who.scopes),
            "token": who.token_id,
            "demo": demo,
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
        store.set_policy(who.account.name, {"distinct": sorted(pairs)})
        return store.policy()

    @app.post(f"{API}/admin/tokens", status_code=201)
    def create_token(body: NewToken, who: Authenticated) -> dict[str, Any]:
        require(who, role="admin", scope="admin")
        secret, record = accounts.create_token(
            who.account.name, body.account, scopes=body.scopes, expires_in=parse_duration(body.expires_in)
        )
        return {**record, "token": secret}

    @app.get(f"{API}/admin/tokens")
    def tokens(who: Authenticated) -> dict[str, Any]:
        require(who, role="admin", scope="admin")
        return {"tokens": accounts.tokens()}

    @app.post(f"{API}/admin/tokens/{{token_id}}/revoke")
    def revoke(token_id: str, who: Authenticated) -> dict[str, Any]:
        require(who, role="admin", scope="admin")
        accounts.revoke_token(who.account.name, token_id)
        return {"id": token_id, "revoked": True}

    jobs = Jobs(register)

    @app.post(f"{API}/jobs", status_code=202)
    def start_job(body: NewJob, who: Authenticated) -> dict[str, Any]:
        require(who, role="operator", scope="backup")
        extravars: dict[str, Any] = {}
        if body.kind == "backup":
            extravars["pulih_backup_verify"] = body.verify
            if body.items:
                extravars["pulih_backup_items"] = body.items
        elif body.items:
            extravars["pulih_verify_items"] = body.items
        job = jobs.start(
            who.account.name,
            body.kind,
            limit=body.limit,
            items=body.items,
            extravars=extravars,
            check=body.check,
        )
        return job.as_dict()

    def may_read_jobs(who: Caller) -> None:
        """Operators, auditors and admins see jobs, with any token that may read or run them."""
        if not {"read", "backup"} & set(who.scopes):
            raise ApiError(403, Exit.REFUSED, "auth.scope", "reading jobs needs a token with scope read")
        if not {"operator", "auditor", "admin"} & set(who.account.roles):
            raise ApiError(
                403, Exit.REFUSED, "auth.role", f"{who.account.name} is no operator, auditor or admin"
            )

    @app.get(f"{API}/jobs")
    def list_jobs(who: Authenticated) -> dict[str, Any]:
        may_read_jobs(who)
        return {"jobs": [j.as_dict() for j in jobs.all()]}

    @app.get(f"{API}/jobs/{{job_id}}")
    def show_job(job_id: str, who: Authenticated) -> dict[str, Any]:
        may_read_jobs(who)
        return jobs.get(job_id).as_dict()

    @app.get(f"{API}/jobs/{{job_id}}/events")
    def job_events(job_id: str, who: Authenticated) -> StreamingResponse:
        may_read_jobs(who)
        return StreamingResponse(jobs.follow(jobs.get(job_id)), media_type="application/x-ndjson")

    @app.post(f"{API}/jobs/{{job_id}}/cancel")
    def cancel_job(job_id: str, who: Authenticated) -> dict[str, Any]:
        require(who, role="operator", scope="backup")
        job = jobs.get(job_id)
        job.cancel.set()
        with store.transaction() as conn:
            store.append_audit(
                conn, actor=who.account.name, action="job_cancelled", request_id=None, payload={"job": job_id}
            )
        return job.as_dict()

    app.include_router(requests_router(requests, Authenticated, register, ApiError))
    return app

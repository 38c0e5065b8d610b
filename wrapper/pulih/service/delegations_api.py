"""Acting approvers' routes (pulih.delegation): an admin, or an approver for their own role
where the policy allows, names who acts in their place (Plt./Plh.) from when to when; anyone
who reads the record sees who may approve for whom."""

# No `from __future__ import annotations`: FastAPI reads the routes' `authenticated` (a local
# of router()) from their signatures, which must stay objects, not strings.
import datetime as dt
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from pulih import delegation
from pulih.exitcodes import Exit
from pulih.requests import Requests
from pulih.service.accounts import Caller
from pulih.store import parse_iso


class NewDelegation(BaseModel):
    delegator: str = Field(max_length=64)  # the approver who is away
    delegate: str = Field(max_length=64)  # who acts in their place
    starts: str | None = Field(default=None, max_length=40)  # ISO 8601 with a zone; default now
    ends: str = Field(max_length=40)
    reason: str = Field(max_length=2000)  # e.g. the letter that appoints the Plh.


def router(requests: Requests, authenticated: Any, api_error: Any) -> APIRouter:
    routes = APIRouter()

    def moment(text: str, what: str) -> dt.datetime:
        try:
            parsed = parse_iso(text)
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            raise api_error(
                400,
                Exit.BAD_INPUT,
                "delegation.input",
                f"{what} {text!r} is not a moment with its time zone (2026-12-07T08:00+07:00)",
            )
        return parsed

    def scoped(who: Caller, admin: bool) -> None:
        wanted = "admin" if admin else "approve"
        if wanted not in who.scopes:
            raise api_error(
                403,
                Exit.REFUSED,
                "auth.scope",
                f"this token may {', '.join(who.scopes)}; this needs '{wanted}'",
            )

    def context(who: Caller) -> dict[str, Any]:
        return {"via": who.via, **({"token": who.token_id} if who.token_id else {})}

    def refused(exc: delegation.DelegationError) -> Exception:
        if exc.refused:
            error: Exception = api_error(403, Exit.REFUSED, "delegation.refused", f"refused: {exc}")
        else:
            error = api_error(400, Exit.BAD_INPUT, "delegation.input", str(exc))
        return error

    @routes.get("/v1/delegations")
    def listing(who: authenticated) -> dict[str, Any]:
        if "read" not in who.scopes:
            raise api_error(403, Exit.REFUSED, "auth.scope", "reading the delegations needs scope read")
        at = requests.clock()
        return {"delegations": [d.as_dict(at) for d in delegation.listed(requests.store)]}

    @routes.post("/v1/delegations", status_code=201)
    def grant(body: NewDelegation, who: authenticated) -> dict[str, Any]:
        is_admin = "admin" in who.account.roles
        scoped(who, is_admin)
        at = requests.clock()
        try:
            granted = delegation.grant(
                requests.store,
                by=who.account.name,
                by_is_admin=is_admin,
                delegator=body.delegator,
                delegate=body.delegate,
                starts=moment(body.starts, "--starts") if body.starts else at,
                ends=moment(body.ends, "--until"),
                reason=body.reason,
                roles_of=requests.roles_of,
                at=at,
                audit_context=context(who),
            )
        except delegation.DelegationError as exc:
            raise refused(exc) from None
        return granted.as_dict(at)

    @routes.post("/v1/delegations/{delegation_id}/end")
    def end(delegation_id: int, who: authenticated) -> dict[str, Any]:
        is_admin = "admin" in who.account.roles
        scoped(who, is_admin)
        at = requests.clock()
        try:
            ended = delegation.end(
                requests.store,
                delegation_id,
                by=who.account.name,
                by_is_admin=is_admin,
                at=at,
                audit_context=context(who),
            )
        except delegation.DelegationError as exc:
            raise refused(exc) from None
        return ended.as_dict(at)

    return routes

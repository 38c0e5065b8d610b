"""The request record's routes: the SOP's steps, done by the authenticated caller in one of
their roles, with the rules of pulih.requests (one place for the SOP's logic). The caller's
name on the record is their account's; nothing in the body names who acts.

Token scopes: 'request' files and confirms; 'approve' receives, approves, rejects and closes
(the receiver's and approver's steps); 'restore' assesses (the operator's); 'read' lists and
shows. A requester files only for
the SKPDs of their account, and only for registered items of that SKPD's servers."""

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from pulih import register as reg
from pulih.exitcodes import Exit
from pulih.requests import BadRequestInput, Refused, Requests
from pulih.service.accounts import Caller


class ScopeItem(BaseModel):
    asset_id: str = Field(max_length=64)
    item: str = Field(max_length=64)


class NewRequest(BaseModel):
    procedure: str = Field(default="recovery", max_length=32)
    skpd: str = Field(max_length=64)
    contact: str = Field(max_length=256)
    scope: list[ScopeItem] = Field(min_length=1, max_length=200)
    reason: str = Field(max_length=32)
    reason_text: str = Field(default="", max_length=2000)
    restore_point: str | None = Field(default=None, max_length=32)
    target: dict[str, Any] | None = None


class Note(BaseModel):
    note: str = Field(default="", max_length=2000)


class Approval(Note):
    valid_hours: int | None = Field(default=None, ge=1, le=720)


class Rejection(BaseModel):
    reason: str = Field(max_length=2000)


class Assessment(Note):
    data_exists: bool
    damage: str = Field(max_length=32)


def router(requests: Requests, authenticated: Any, register_path: Path | None, api_error: Any) -> APIRouter:
    """`authenticated` is the app's caller dependency; `api_error(status, code, id, message)`
    builds its error."""
    routes = APIRouter()

    def scoped(who: Caller, scope: str) -> str:
        if scope not in who.scopes:
            raise api_error(
                403,
                Exit.REFUSED,
                "auth.scope",
                f"this token may {', '.join(who.scopes)}; this step needs '{scope}'",
            )
        return who.account.name

    def record(call: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = call()
        except Refused as exc:
            raise api_error(403, Exit.REFUSED, "record.refused", str(exc)) from None
        except BadRequestInput as exc:
            raise api_error(400, Exit.BAD_INPUT, "record.input", str(exc)) from None
        return result

    def own_items(who: Caller, skpd: str, scope: list[ScopeItem]) -> None:
        """A requester files for their own SKPD's registered items, and only those."""
        if skpd not in who.account.skpds:
            mine = ", ".join(who.account.skpds) or "none"
            raise api_error(
                403, Exit.REFUSED, "request.skpd", f"{who.account.name} files for SKPD {mine}, not {skpd!r}"
            )
        if register_path is None:
            raise api_error(
                503, Exit.FAILED, "service.register", "the service's config names no register: ask an admin"
            )
        try:
            register = reg.load_inventory(register_path)
        except reg.RegisterError as exc:
            raise api_error(
                503,
                Exit.FAILED,
                "service.register",
                "the service's register is invalid: " + str(exc.problems[0]),
            ) from None
        for wanted in scope:
            asset = register.by_id(wanted.asset_id)
            if asset is None or wanted.item not in {d.name for d in asset.data}:
                raise api_error(
                    400,
                    Exit.BAD_INPUT,
                    "request.item",
                    f"{wanted.asset_id}:{wanted.item} is not a registered data item",
                )
            if asset.skpd != skpd:
                raise api_error(
                    403,
                    Exit.REFUSED,
                    "request.skpd",
                    f"{wanted.asset_id}:{wanted.item} belongs to SKPD {asset.skpd}, not {skpd}",
                )

    def acting(who: Caller) -> Requests:
        """The record's rules for this caller: their steps' audit entries say how they were proved."""
        return Requests(
            requests.store,
            requests.config,
            requests.clock,
            roles_of=requests.roles_of,
            roles_from=requests.roles_from,
            audit_context={"via": who.via, **({"token": who.token_id} if who.token_id else {})},
        )

    def hidden(who: Caller, request_id: str) -> None:
        """A requester sees only their SKPDs' requests: another's is answered exactly as one
        that does not exist, so its id, status and requester stay unknown."""
        if set(who.account.roles) - {"requester"}:
            return
        try:
            skpd = requests.get(request_id)["skpd"]
        except Refused:
            skpd = None
        if skpd not in who.account.skpds:
            raise api_error(403, Exit.REFUSED, "record.refused", f"there is no request {request_id!r}")

    @routes.post("/v1/requests", status_code=201)
    def file_request(body: NewRequest, who: authenticated) -> dict[str, Any]:
        actor = scoped(who, "request")
        own_items(who, body.skpd, body.scope)
        return record(
            lambda: acting(who).new(
                actor,
                procedure=body.procedure,
                skpd=body.skpd,
                contact=body.contact,
                scope=[s.model_dump() for s in body.scope],
                reason=body.reason,
                reason_text=body.reason_text,
                restore_point=body.restore_point,
                target=body.target,
            )
        )

    @routes.get("/v1/requests")
    def list_requests(who: authenticated) -> dict[str, Any]:
        scoped(who, "read")
        mine = set(who.account.roles) == {"requester"}
        listed = [r for r in requests.all() if not mine or r["skpd"] in who.account.skpds]
        return {"requests": listed}

    @routes.get("/v1/requests/{request_id}")
    def show_request(request_id: str, who: authenticated) -> dict[str, Any]:
        scoped(who, "read")
        hidden(who, request_id)
        return record(lambda: requests.get(request_id))

    @routes.post("/v1/requests/{request_id}/receive")
    def receive(request_id: str, body: Note, who: authenticated) -> dict[str, Any]:
        actor = scoped(who, "approve")
        return record(lambda: acting(who).receive(actor, request_id, body.note))

    @routes.post("/v1/requests/{request_id}/approve")
    def approve(request_id: str, body: Approval, who: authenticated) -> dict[str, Any]:
        actor = scoped(who, "approve")
        return record(
            lambda: acting(who).approve(actor, request_id, valid_hours=body.valid_hours, note=body.note)
        )

    @routes.post("/v1/requests/{request_id}/reject")
    def reject(request_id: str, body: Rejection, who: authenticated) -> dict[str, Any]:
        actor = scoped(who, "approve")
        return record(lambda: acting(who).reject(actor, request_id, body.reason))

    @routes.post("/v1/requests/{request_id}/assess")
    def assess(request_id: str, body: Assessment, who: authenticated) -> dict[str, Any]:
        actor = scoped(who, "restore")
        return record(
            lambda: acting(who).assess(
                actor, request_id, data_exists=body.data_exists, damage=body.damage, note=body.note
            )
        )

    @routes.post("/v1/requests/{request_id}/confirm")
    def confirm(request_id: str, body: Note, who: authenticated) -> dict[str, Any]:
        actor = scoped(who, "request")
        hidden(who, request_id)
        return record(lambda: acting(who).confirm(actor, request_id, body.note))

    @routes.post("/v1/requests/{request_id}/not-restored")
    def not_restored(request_id: str, body: Note, who: authenticated) -> dict[str, Any]:
        actor = scoped(who, "request")
        hidden(who, request_id)
        return record(lambda: acting(who).not_restored(actor, request_id, body.note))

    @routes.post("/v1/requests/{request_id}/close")
    def close(request_id: str, body: Note, who: authenticated) -> dict[str, Any]:
        actor = scoped(who, "approve")
        return record(lambda: acting(who).close(actor, request_id, body.note))

    return routes

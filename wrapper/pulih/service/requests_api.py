"""The request record's routes: the SOP's steps, done by the authenticated caller in one of
their roles, with the rules of pulih.requests (one place for the SOP's logic). The caller's
name on the record is their account's; nothing in the body names who acts.

Token scopes: 'request' files and confirms; 'approve' receives, approves, rejects and closes
(the receiver's and approver's steps); 'restore' assesses (the operator's); 'read' lists and
shows. A requester files only for
the SKPDs of their account, and only for registered items of that SKPD's servers."""

from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from pulih import forms, restoring
from pulih import register as reg
from pulih.exitcodes import Exit
from pulih.requests import LETTER_MAX_BYTES, BadRequestInput, Refused, Requests, check_new
from pulih.service import repository
from pulih.service.accounts import Caller
from pulih.service.restores import restore_keys


def acting(requests: Requests, who: Caller) -> Requests:
    """The record's rules for this caller: their steps' audit entries say how they were proved."""
    return Requests(
        requests.store,
        requests.config,
        requests.clock,
        roles_of=requests.roles_of,
        roles_from=requests.roles_from,
        audit_context={"via": who.via, **({"token": who.token_id} if who.token_id else {})},
        on_step=requests.on_step,  # the outbox: a caller's steps mail as every step does
    )


class ScopeItem(BaseModel):
    asset_id: str = Field(max_length=64)
    item: str = Field(max_length=64)


class NewRequest(BaseModel):
    # Generous bounds here; the record's own limits (pulih.requests.check_new) name the field.
    procedure: str = Field(default="recovery", max_length=256)
    kind: str = Field(default="restore", max_length=32)  # restore | backup (procedure B)
    skpd: str = Field(max_length=4096)
    contact: str = Field(max_length=4096)
    scope: list[ScopeItem] = Field(min_length=1, max_length=200)
    reason: str = Field(max_length=256)
    reason_text: str = Field(default="", max_length=16384)
    restore_point: str | None = Field(default=None, max_length=4096)
    target: dict[str, Any] | None = None


class Note(BaseModel):
    note: str = Field(default="", max_length=2000)


class Approval(Note):
    valid_hours: int | None = Field(default=None, ge=1, le=720)
    # A signed approval: the statement the service gave (pulih request statement) and the
    # approver's `ssh-keygen -Y sign -n pulih-approval` signature of its canonical bytes.
    statement: dict[str, Any] | None = None
    signature: str | None = Field(default=None, max_length=16384)
    outside_window: bool = False  # the restore may run in place outside the maintenance windows


class Rejection(BaseModel):
    reason: str = Field(max_length=2000)


class BackupCheck(Note):
    query: bool = True  # read the repository (default), or only record the note


class Plan(Note):
    backups: dict[str, str] = Field(max_length=200)  # ASSET_ID:ITEM -> BACKUP_ID
    window: str = Field(default="", max_length=256)
    unverified: str | None = Field(default=None, max_length=2000)  # the reason to plan one anyway
    query: bool = True  # check and protect the backups in the repository


class Assessment(Note):
    data_exists: bool
    damage: str = Field(max_length=32)


def router(
    requests: Requests, authenticated: Any, register_path: Path | None, api_error: Any, *, demo: bool = False
) -> APIRouter:
    """`authenticated` is the app's caller dependency; `api_error(status, code, id, message)`
    builds its error; `demo`: a demo store's service, whose forms say so."""
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
            raise api_error(403, Exit.REFUSED, exc.message_id, f"refused: {exc}") from None
        except BadRequestInput as exc:
            raise api_error(400, Exit.BAD_INPUT, "record.input", str(exc)) from None
        return result

    def the_register() -> reg.Register:
        if register_path is None:
            raise api_error(
                503, Exit.FAILED, "service.register", "the service's config names no register: ask an admin"
            )
        try:
            return reg.load_inventory(register_path)
        except reg.RegisterError as exc:
            raise api_error(
                503,
                Exit.FAILED,
                "service.register",
                "the service's register is invalid: " + str(exc.problems[0]),
            ) from None

    def repo(call: Any) -> Any:
        """A repository question; its refusal in the service's envelope."""
        try:
            return call()
        except repository.RepositoryError as exc:
            status = 409 if exc.code == Exit.UNUSABLE else 503
            raise api_error(status, exc.code, exc.message_id, str(exc)) from None

    def own_items(who: Caller, skpd: str, scope: list[ScopeItem]) -> None:
        """A requester files for their own SKPD's registered items, and only those."""
        if skpd not in who.account.skpds:
            mine = ", ".join(who.account.skpds) or "none"
            raise api_error(
                403, Exit.REFUSED, "request.skpd", f"{who.account.name} files for SKPD {mine}, not {skpd!r}"
            )
        register = the_register()
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
            raise api_error(
                403, Exit.REFUSED, "record.refused", f"refused: there is no request {request_id!r}"
            )

    @routes.post("/v1/requests", status_code=201)
    def file_request(body: NewRequest, who: authenticated) -> dict[str, Any]:
        actor = scoped(who, "request")
        try:
            check_new(
                procedure=body.procedure,
                skpd=body.skpd,
                contact=body.contact,
                reason=body.reason,
                reason_text=body.reason_text,
                restore_point=body.restore_point,
                kind=body.kind,
            )
        except BadRequestInput as exc:
            raise api_error(400, Exit.BAD_INPUT, "record.input", str(exc)) from None
        if "requester" not in who.account.roles:  # before the SKPD: the first reason is the role
            held = ", ".join(who.account.roles) or "none"
            raise api_error(
                403,
                Exit.REFUSED,
                "record.refused",
                f"refused: {actor} may not file a request: it needs the role 'requester' (theirs: {held})",
            )
        own_items(who, body.skpd, body.scope)
        target = body.target or ({} if body.kind == "backup" else {"kind": "in_place"})
        if body.kind == "backup":
            if target:
                raise api_error(
                    400, Exit.BAD_INPUT, "request.target", "a backup request has no target (--target)"
                )
        elif target.get("kind") == "alternate":
            hosts = {a.hostname for a in the_register().hosts()}
            if target.get("host") not in hosts:
                raise api_error(
                    400,
                    Exit.BAD_INPUT,
                    "request.target",
                    f"--target: {target.get('host')} is not a registered server in operation",
                )
        elif target != {"kind": "in_place"}:
            raise api_error(
                400, Exit.BAD_INPUT, "request.target", "--target: in-place or alternate:HOST[:NAME]"
            )
        return record(
            lambda: acting(requests, who).new(
                actor,
                procedure=body.procedure,
                skpd=body.skpd,
                contact=body.contact,
                scope=[s.model_dump() for s in body.scope],
                reason=body.reason,
                reason_text=body.reason_text,
                restore_point=body.restore_point,
                target=target,
                kind=body.kind,
            )
        )

    @routes.get("/v1/register/items")
    def register_items(who: authenticated) -> dict[str, Any]:
        """The registered data items the caller may see: a requester their SKPDs' only, the
        others all (what a request may name, for the desk's form)."""
        scoped(who, "read")
        loaded = the_register()
        only_own = set(who.account.roles) == {"requester"}
        items = [
            {
                "asset_id": asset.asset_id,
                "hostname": asset.hostname,
                "skpd": asset.skpd,
                "skpd_name": asset.skpd_name,
                "item": data.name,
                "engine": data.engine,
                "description": data.description,
                "in_operation": asset.in_operation,
            }
            for asset in loaded.assets
            if not only_own or asset.skpd in who.account.skpds
            for data in asset.data
        ]
        return {"items": items, "hosts": sorted(a.hostname for a in loaded.hosts())}

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

    @routes.get("/v1/requests/{request_id}/backups")
    def request_backups(request_id: str, who: authenticated) -> dict[str, Any]:
        """The repository's backups of a request's items, verified or not, with when each was
        taken: what an approver weighs before approving and an operator before planning. It
        reads the repository and records nothing (the check-backups step records)."""
        scoped(who, "read")
        if not set(who.account.roles) - {"requester"}:
            raise api_error(
                403, Exit.REFUSED, "auth.role", f"{who.account.name} reads the steps, not the repository"
            )
        scope = record(lambda: requests.get(request_id))["scope"]
        found = repo(lambda: repository.found_for(register_path_or_fail(), scope, recorded_of(scope)))
        return {"request": request_id, "backups": found}

    @routes.get(
        "/v1/requests/{request_id}/form",
        response_class=HTMLResponse,
        responses={200: {"content": {"application/pdf": {}}}},
    )
    def request_form(
        request_id: str,
        who: authenticated,
        form: str = "ppd",
        lang: str = forms.DEFAULT_LANG,
        format: str = "html",
    ) -> Response:
        """Form PPD or Form PD of a request on A4 under the office's letterhead, as HTML or PDF,
        printed by the service (which alone knows whether its store is a demo's) for the CLI
        and the desk alike."""
        scoped(who, "read")
        hidden(who, request_id)
        if form not in forms.FORMS or lang not in forms.LANGS or format not in ("html", "pdf"):
            raise api_error(
                400,
                Exit.BAD_INPUT,
                "form.input",
                "form is ppd or pd, lang is id or en, format is html or pdf",
            )
        doc = record(lambda: requests.get(request_id))
        office = requests.config.office
        if format == "pdf":
            return Response(
                forms.pdf(doc, form, lang, office=office, demo=demo),
                media_type="application/pdf",
                headers={"Content-Disposition": f'inline; filename="{doc["id"]}-{form}.pdf"'},
            )
        return HTMLResponse(forms.render(doc, form, lang, office=office, demo=demo))

    @routes.post("/v1/requests/{request_id}/letter", status_code=201)
    async def attach_letter(request_id: str, request: Request, who: authenticated, filename: str = "") -> Any:
        """The request's letter (surat permohonan) as the body, a PDF, PNG or JPEG of at most
        10 MiB, its type read from its bytes; `filename` is only what the forms show."""
        actor = scoped(who, "approve" if set(who.account.roles) - {"requester"} else "request")
        await run_in_threadpool(hidden, who, request_id)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > LETTER_MAX_BYTES:
            raise api_error(
                413,
                Exit.BAD_INPUT,
                "letter.size",
                f"the letter is {declared} bytes; at most {LETTER_MAX_BYTES // (1024 * 1024)} MiB",
            )
        content = bytearray()
        async for chunk in request.stream():  # never more than the limit in memory
            content += chunk
            if len(content) > LETTER_MAX_BYTES:
                raise api_error(
                    413, Exit.BAD_INPUT, "letter.size", f"the letter is over {LETTER_MAX_BYTES} bytes"
                )
        return await run_in_threadpool(
            record,
            lambda: acting(requests, who).attach_letter(actor, request_id, bytes(content), filename),
        )

    @routes.get("/v1/requests/{request_id}/letter", response_class=Response)
    def show_letter(request_id: str, who: authenticated, letter: int | None = None) -> Response:
        """The request's letter (the newest, or `letter` by its id), held to its hash on the chain."""
        scoped(who, "read")
        hidden(who, request_id)
        try:
            meta, content = requests.letter(request_id, letter)
        except Refused as exc:
            status = 409 if exc.message_id == "letter.tampered" else 404
            raise api_error(status, Exit.REFUSED, exc.message_id, f"refused: {exc}") from None
        return Response(
            content,
            media_type=meta["media_type"],
            headers={
                "Content-Disposition": f"inline; filename*=UTF-8''{quote(meta['filename'])}",
                "X-Pulih-Sha256": meta["sha256"],
                "X-Content-Type-Options": "nosniff",
                # A scan is shown, never run: no script, no other origin, even if it were HTML.
                "Content-Security-Policy": "default-src 'none'; img-src 'self'; object-src 'self'; sandbox",
            },
        )

    @routes.post("/v1/requests/{request_id}/receive")
    def receive(request_id: str, body: Note, who: authenticated) -> dict[str, Any]:
        actor = scoped(who, "approve")
        return record(lambda: acting(requests, who).receive(actor, request_id, body.note))

    def approved_targets(request_id: str) -> list[str]:
        """What an approval of the request covers, resolved now: the gate holds every restore to it."""
        request = record(lambda: requests.get(request_id))
        try:
            return restore_keys(the_register(), request["scope"], request["target"])
        except (restoring.RestoreInputError, KeyError, StopIteration):
            raise api_error(
                400,
                Exit.BAD_INPUT,
                "request.register",
                f"request {request_id} names an item or target the register no longer holds: reject it",
            ) from None

    @routes.get("/v1/requests/{request_id}/statement")
    def statement(
        request_id: str,
        who: authenticated,
        valid_hours: int | None = None,
        note: str = "",
        outside_window: bool = False,
    ) -> dict[str, Any]:
        """The statement the caller signs to approve the request so (pulih.approvals)."""
        actor = scoped(who, "approve")
        if valid_hours is not None and not 1 <= valid_hours <= 720:
            raise api_error(400, Exit.BAD_INPUT, "request.valid_hours", "valid hours are 1 to 720")
        targets = approved_targets(request_id)
        return record(
            lambda: requests.approval_statement(
                actor,
                request_id,
                valid_hours=valid_hours,
                note=note,
                targets=targets,
                outside_window=outside_window,
            )
        )

    @routes.post("/v1/requests/{request_id}/approve")
    def approve(request_id: str, body: Approval, who: authenticated) -> dict[str, Any]:
        actor = scoped(who, "approve")
        targets = approved_targets(request_id)
        if (body.statement is None) != (body.signature is None):
            raise api_error(
                400,
                Exit.BAD_INPUT,
                "request.signed",
                "a signed approval carries both its statement and its signature",
            )
        signed = (
            None if body.signature is None else {"statement": body.statement, "signature": body.signature}
        )
        return record(
            lambda: acting(requests, who).approve(
                actor,
                request_id,
                valid_hours=body.valid_hours,
                note=body.note,
                targets=targets,
                signed=signed,
                outside_window=body.outside_window,
            )
        )

    @routes.post("/v1/requests/{request_id}/reject")
    def reject(request_id: str, body: Rejection, who: authenticated) -> dict[str, Any]:
        actor = scoped(who, "approve")
        return record(lambda: acting(requests, who).reject(actor, request_id, body.reason))

    @routes.post("/v1/requests/{request_id}/revoke")
    def revoke(request_id: str, body: Rejection, who: authenticated) -> dict[str, Any]:
        actor = scoped(who, "approve")
        return record(lambda: acting(requests, who).revoke(actor, request_id, body.reason))

    @routes.post("/v1/requests/{request_id}/assess")
    def assess(request_id: str, body: Assessment, who: authenticated) -> dict[str, Any]:
        actor = scoped(who, "restore")
        return record(
            lambda: acting(requests, who).assess(
                actor, request_id, data_exists=body.data_exists, damage=body.damage, note=body.note
            )
        )

    @routes.get("/v1/backups")
    def backups(who: authenticated, asset: str | None = None, item: str | None = None) -> dict[str, Any]:
        """The repository's list: for operators, auditors and admins."""
        scoped(who, "read")
        if not {"operator", "auditor", "admin"} & set(who.account.roles):
            raise api_error(
                403, Exit.REFUSED, "auth.role", f"{who.account.name} is no operator, auditor or admin"
            )
        listed = repo(
            lambda: repository.listing(
                register_path_or_fail(), asset=asset, item=item, recorded=recorded_in(the_register())
            )
        )
        return {"status": "ok", "backups": listed}

    def recorded_in(register: reg.Register) -> repository.Recorded:
        """The record of every registered item's backups."""
        return requests.store.recorded_backups(
            [(a.asset_id, d.name) for a in register.assets for d in a.data]
        )

    @routes.post("/v1/requests/{request_id}/check-backups")
    def check_backups(request_id: str, body: BackupCheck, who: authenticated) -> dict[str, Any]:
        actor = scoped(who, "restore")
        scope = record(lambda: requests.get(request_id))["scope"]
        found = (
            repo(lambda: repository.found_for(register_path_or_fail(), scope, recorded_of(scope)))
            if body.query
            else []
        )
        return record(lambda: acting(requests, who).check_backups(actor, request_id, found, body.note))

    @routes.post("/v1/requests/{request_id}/plan")
    def plan(request_id: str, body: Plan, who: authenticated) -> dict[str, Any]:
        """Each named backup must be in the repository and verified (exit 4 otherwise, unless
        `unverified` says why); it is then protected from retention until the request closes."""
        actor = scoped(who, "restore")
        if record(lambda: requests.get(request_id))["kind"] == "backup":  # its run makes the backups
            return record(
                lambda: acting(requests, who).plan(
                    actor, request_id, backups=body.backups, window=body.window, note=body.note
                )
            )
        if body.unverified is not None and not body.unverified.strip():
            raise api_error(
                400,
                Exit.BAD_INPUT,
                "plan.unverified",
                "--unverified needs a reason, which goes on the record",
            )
        if not body.query and body.unverified is None:
            raise api_error(
                400,
                Exit.BAD_INPUT,
                "plan.no_query",
                "--no-query plans without asking the repository whether the backups exist and verified: "
                "say why with --unverified REASON",
            )
        record(lambda: requests.get(request_id))  # an unknown request is refused before the repository
        note = body.note
        if body.query:
            repo(
                lambda: repository.protect(
                    register_path_or_fail(),
                    request_id,
                    body.backups,
                    allow_unverified=body.unverified is not None,
                    recorded=recorded_of(
                        [{"asset_id": k.partition(":")[0], "item": k.partition(":")[2]} for k in body.backups]
                    ),
                )
            )
        if body.unverified is not None:
            how = (
                "planned without asking the repository" if not body.query else "planned although not verified"
            )
            note = f"{note} [{how}: {body.unverified.strip()}]".strip()
        return record(
            lambda: acting(requests, who).plan(
                actor, request_id, backups=body.backups, window=body.window, note=note, protected=body.query
            )
        )

    def recorded_of(scope: list[dict[str, str]]) -> repository.Recorded:
        return requests.store.recorded_backups([(s["asset_id"], s["item"]) for s in scope])

    def register_path_or_fail() -> Path:
        the_register()
        assert register_path is not None
        return register_path

    @routes.post("/v1/requests/{request_id}/confirm")
    def confirm(request_id: str, body: Note, who: authenticated) -> dict[str, Any]:
        actor = scoped(who, "request")
        hidden(who, request_id)
        return record(lambda: acting(requests, who).confirm(actor, request_id, body.note))

    @routes.post("/v1/requests/{request_id}/not-restored")
    def not_restored(request_id: str, body: Note, who: authenticated) -> dict[str, Any]:
        actor = scoped(who, "request")
        hidden(who, request_id)
        return record(lambda: acting(requests, who).not_restored(actor, request_id, body.note))

    @routes.post("/v1/requests/{request_id}/close")
    def close(request_id: str, body: Note, who: authenticated) -> dict[str, Any]:
        actor = scoped(who, "approve")
        closed = record(lambda: acting(requests, who).close(actor, request_id, body.note))
        warnings = []
        if (closed.get("plan") or {}).get("protected"):
            try:
                repository.protect(register_path_or_fail(), request_id, {}, lift=True)
            except repository.RepositoryError as exc:  # closed all the same; its backups stay protected
                warnings.append(str(exc))
        return {**closed, "warnings": warnings}

    return routes

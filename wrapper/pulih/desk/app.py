"""The request desk: the SOP's steps in a browser for the people with no shell (SKPD
requesters, receivers, approvers), served by pulih serve under /desk/.

The desk holds nothing of its own. A login asks the service's API for a token (POST
/v1/login) and keeps it in an HttpOnly, SameSite=Strict cookie; every page then calls the
API over the service's own Unix socket with that token, exactly as the CLI does with
PULIH_TOKEN, so the API's roles, SKPD scoping and the record's rules decide everything and
the desk cannot bypass them. It never opens the store (a contract test checks its imports).

Every form carries a CSRF token derived from the session's secret (HMAC), which another site
can neither read nor make; the login form, before any session, a random double-submit value.
Pages are sent with a Content-Security-Policy that allows no script and no other origin."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlencode

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from pulih import client, printing, report, signing
from pulih.client import ServiceError, Via
from pulih.desk import i18n, words

PREFIX: Final = "/desk"
SESSION: Final = "pulih_desk"
PRE_SESSION: Final = "pulih_desk_login"
LANG: Final = "pulih_lang"
HERE: Final = Path(__file__).parent
_REQUEST_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_FORM: Final = re.compile(_REQUEST_ID.pattern.rstrip("$") + "/(ppd|pd)$")  # REQUEST_ID/FORM
_JOB_ID: Final = re.compile(r"^job-[0-9a-f]{1,32}$")
_RUN_ID: Final = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[a-z_]+-[0-9a-f]{1,16}$")
_ACCOUNT: Final = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
_TOKEN_ID: Final = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
AUDIT_PAGE: Final = 100  # audit entries per page, newest first
# An admin's buttons on an account, and the API route each posts to.
ACCOUNT_STEPS: Final = {
    "disable": "disable",
    "enable": "enable",
    "password": "password",
    "totp-reset": "totp/reset",
}
OUTBOX_SHOWN: Final = 50  # the newest mails on the admin's page (pulih admin outbox: all)
# Who reads what beyond the requests (the service decides; the desk only leaves out links).
READERS: Final = frozenset({"operator", "auditor", "admin"})
# Who weighs the repository's backups of a request: the approver before approving.
BACKUP_READERS: Final = frozenset({"receiver", "approver", "operator", "auditor", "admin"})
REFRESH_SECONDS: Final = 2  # a running job's page reloads itself (no script: the CSP allows none)
SESSION_HOURS: Final = 12
# No script, nothing from another origin, no framing, forms only back to the desk.
CSP: Final = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
# Forms PPD and PD are the service's printable pages, with their own inline styles.
FORM_CSP: Final = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"
HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# A step of the record's SOP, the desk's action for it, and the API route that takes it.
ACTIONS: Final = {
    "received": "receive",
    "approved": "approve",
    "rejected": "reject",
    "revoked": "revoke",
    "assessed": "assess",
    "backups_checked": "check-backups",
    "planned": "plan",
    "executed": "restore",  # the operator starts the restore job (POST /v1/restores); a backup
    # request's the backup job (POST /v1/requests/ID/backup): see _actions
    "confirmed": "confirm",
    "not_restored": "not-restored",
    "closed": "close",
}


def csrf_of(secret: str) -> str:
    """The session's form token: only someone holding the session's secret can make it."""
    return hmac.new(secret.encode(), b"pulih-desk-form", hashlib.sha256).hexdigest()


class LoggedOut(Exception):
    """A page that needs a session, asked for without one (or with an expired one)."""


class DeskRefusal(Exception):
    """A refusal the desk itself gives (a forged form, bad input) before asking the service."""

    def __init__(self, status: int, message_id: str, message: str = "") -> None:
        super().__init__(message)
        self.status, self.message_id = status, message_id


@dataclass
class Page:
    """One browser request: its language, and the account behind its session (if any)."""

    lang: str
    via: Via | None = None
    who: dict[str, Any] | None = None
    secret: str | None = None
    secure: bool = False  # reached over HTTPS: its cookies are Secure
    path: str = PREFIX + "/"  # where the language switch comes back to
    cookies: dict[str, str] = field(default_factory=dict)

    @property
    def csrf(self) -> str:
        return csrf_of(self.secret) if self.secret else ""

    @property
    def roles(self) -> set[str]:
        """The account's roles, and the one it acts in as a Plh. (the service decides each step)."""
        who = self.who or {}
        return set(who.get("roles", [])) | {d["role"] for d in who.get("acting") or []}


def _environment(lang: str) -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["j2", "html"]),
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_translations(i18n.translations(lang), newstyle=True)  # type: ignore[attr-defined]
    return env


def mount(app: FastAPI, socket_path: Path) -> None:
    """The desk's pages and static files on the service's app."""
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="desk-static")
    app.include_router(_router(socket_path, {lang: _environment(lang) for lang in i18n.LANGS}))
    app.add_exception_handler(LoggedOut, _to_login)


def _router(socket_path: Path, envs: dict[str, Environment]) -> APIRouter:
    routes = APIRouter(include_in_schema=False)
    where = f"unix:{socket_path}"

    def render(page: Page, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        env = envs[page.lang]
        html = env.get_template(template).render(
            page=page,
            who=page.who,
            lang=page.lang,
            langs=i18n.LANGS,
            prefix=PREFIX,
            csrf=page.csrf,
            words=words,
            back=page.path,
            **context,
        )
        response = HTMLResponse(html, status_code=status, headers=HEADERS)
        for name, value in page.cookies.items():
            _set_cookie(response, name, value, secure=page.secure)
        return response

    def refused(page: Page, exc: ServiceError | DeskRefusal) -> HTMLResponse:
        if isinstance(exc, ServiceError):
            status = exc.status or 503
            summary = words.REFUSALS.get(exc.message_id, words.REFUSED)
            detail = str(exc)
        else:
            status, summary, detail = exc.status, words.REFUSALS[exc.message_id], str(exc)
        return render(page, "refused.html.j2", status, summary=summary, detail=detail)

    async def api(page: Page, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        assert page.via is not None
        return await run_in_threadpool(client.call, method, path, body, via=page.via, raw=False)

    def fresh(request: Request) -> Page:
        return Page(
            lang=i18n.chosen(request.cookies.get(LANG)),
            secure=request.url.scheme == "https",
            path=request.url.path if request.method == "GET" else PREFIX + "/",
        )

    async def session(request: Request) -> Page:
        page = fresh(request)
        secret = request.cookies.get(SESSION)
        if secret:
            page.via, page.secret = Via(where, secret), secret
            try:
                page.who = await api(page, "GET", "/whoami")
            except ServiceError as exc:
                if exc.status not in (401, 403):
                    raise
                page.via = page.secret = None  # expired, revoked or unknown: log in again
        return page

    async def signed_in(request: Request) -> Page:
        """The session's page, or LoggedOut (the browser goes to the login)."""
        page = await session(request)
        if page.who is None:
            raise LoggedOut
        return page

    async def checked_form(request: Request, page: Page) -> dict[str, str]:
        """The posted form, if its CSRF token is the session's; else DeskRefusal 403."""
        form = await request.form()
        sent = str(form.get("csrf", ""))
        if not page.secret or not hmac.compare_digest(sent, page.csrf):
            raise DeskRefusal(403, "desk.csrf")
        return {k: str(v) for k, v in form.items() if isinstance(v, str)}

    def request_id(text: str) -> str:
        if not _REQUEST_ID.match(text):
            raise DeskRefusal(404, "desk.input", f"there is no request {text[:64]!r}")
        return text

    # ---------------------------------------------------------------- sessions

    @routes.get(PREFIX, response_model=None)
    @routes.get(f"{PREFIX}/", response_model=None)
    async def home(request: Request) -> Response:
        page = await session(request)
        return RedirectResponse(f"{PREFIX}/requests" if page.who else f"{PREFIX}/login", status_code=303)

    @routes.get(f"{PREFIX}/login", response_model=None)
    async def login_page(request: Request) -> Response:
        page = fresh(request)
        pre = secrets.token_urlsafe(24)
        page.cookies[PRE_SESSION] = pre
        return render(page, "login.html.j2", pre=pre)

    @routes.post(f"{PREFIX}/login", response_model=None)
    async def login(request: Request) -> Response:
        page = fresh(request)
        form = await request.form()
        pre = request.cookies.get(PRE_SESSION, "")
        if not pre or not hmac.compare_digest(str(form.get("pre", "")), pre):
            return refused(page, DeskRefusal(403, "desk.csrf"))
        body = {"name": str(form.get("name", ""))[:64], "password": str(form.get("password", ""))[:1024]}
        code = str(form.get("totp", "")).strip()[:16] or None
        try:
            answer = await run_in_threadpool(
                client.call, "POST", "/login", {**body, "hours": SESSION_HOURS, "totp": code}, via=Via(where)
            )
        except ServiceError as exc:
            again = secrets.token_urlsafe(24)
            page.cookies[PRE_SESSION] = again
            summary = words.REFUSALS.get(exc.message_id, words.REFUSED)
            return render(
                page, "login.html.j2", exc.status or 503, pre=again, error=summary, name=body["name"]
            )
        response = RedirectResponse(f"{PREFIX}/requests", status_code=303)
        _set_cookie(response, SESSION, str(answer["token"]), secure=page.secure, max_age=SESSION_HOURS * 3600)
        response.delete_cookie(PRE_SESSION, path=PREFIX)
        return response

    @routes.post(f"{PREFIX}/logout", response_model=None)
    async def logout(request: Request) -> Response:
        page = await signed_in(request)
        try:
            await checked_form(request, page)
            await api(page, "POST", "/logout")
        except (ServiceError, DeskRefusal) as exc:
            return refused(page, exc)
        return await _to_login()

    @routes.get(f"{PREFIX}/lang/{{code}}", response_model=None)
    async def language(request: Request, code: str, back: str = f"{PREFIX}/") -> Response:
        # Back only to a page of the desk: never an open redirect.
        target = back if back.startswith(f"{PREFIX}/") and "//" not in back else f"{PREFIX}/"
        response = RedirectResponse(target, status_code=303)
        secure = request.url.scheme == "https"
        _set_cookie(response, LANG, i18n.chosen(code), secure=secure, max_age=365 * 86400)
        return response

    # ---------------------------------------------------------------- requests

    @routes.get(f"{PREFIX}/requests", response_model=None)
    async def requests_page(request: Request) -> Response:
        page = await signed_in(request)
        try:
            listed = (await api(page, "GET", "/requests"))["requests"]
            sop = await api(page, "GET", "/sop")
        except ServiceError as exc:
            return refused(page, exc)
        steps = {s["name"]: s for s in sop["steps"]}
        for doc in listed:
            doc["yours"] = sorted(
                {steps[n]["role"] for n in steps[doc["status"]]["next"] if n in ACTIONS} & page.roles
            )
        return render(page, "requests.html.j2", requests=listed, steps=steps)

    @routes.get(f"{PREFIX}/requests/new", response_model=None)
    async def new_request_page(request: Request) -> Response:
        page = await signed_in(request)
        return await new_request_form(page)

    async def new_request_form(
        page: Page, status: int = 200, error: str = "", form: dict[str, str] | None = None
    ) -> Response:
        if "requester" not in page.roles:
            return refused(page, DeskRefusal(403, "auth.role"))
        try:
            found = await api(page, "GET", "/register/items")
        except ServiceError as exc:
            return refused(page, exc)
        return render(
            page,
            "new_request.html.j2",
            status,
            items=found["items"],
            hosts=found["hosts"],
            skpds=page.who["skpds"] if page.who else [],
            error=error,
            form=form or {},
        )

    @routes.post(f"{PREFIX}/requests", response_model=None)
    async def file_request(request: Request) -> Response:
        page = await signed_in(request)
        try:
            _bounded(request, LETTER_FORM_MAX)
            form = await checked_form(request, page)
        except DeskRefusal as exc:
            return refused(page, exc)
        posted = await request.form()
        picked = posted.getlist("items")
        scope = []
        for key in picked:
            asset_id, _, item = str(key).partition(":")
            scope.append({"asset_id": asset_id, "item": item})
        backup = form.get("kind") == "backup"
        target: dict[str, Any] | None = None if backup else {"kind": "in_place"}
        if not backup and form.get("target") == "alternate":
            target = {"kind": "alternate", "host": form.get("alternate_host", "")}
            if form.get("alternate_name", "").strip():
                target["name"] = form["alternate_name"].strip()
        body = {
            "procedure": "backup_restore" if backup else form.get("procedure", "recovery"),
            "kind": "backup" if backup else "restore",
            "skpd": form.get("skpd", ""),
            "contact": form.get("contact", ""),
            "scope": scope,
            "reason": form.get("reason", ""),
            "reason_text": form.get("reason_text", ""),
            "restore_point": None if backup else form.get("restore_point", "").strip() or None,
            "target": target,
        }
        if not scope:
            return await new_request_form(page, 400, page_text(page, words.NO_ITEMS), form)
        try:
            letter = await _letter_of(posted)
            filed = await api(page, "POST", "/requests", body)
        except ServiceError as exc:
            summary = words.REFUSALS.get(exc.message_id, words.REFUSED)
            error = f"{page_text(page, summary)} {exc}"
            return await new_request_form(page, exc.status or 503, error, form)
        where = f"{PREFIX}/requests/{quote(filed['id'])}"
        if letter is not None:
            try:
                await send_letter(page, filed["id"], *letter)
            except ServiceError as exc:  # filed all the same: its page says the letter was refused
                return refused(page, exc)
        return RedirectResponse(f"{where}?done=filed", status_code=303)

    @routes.get(f"{PREFIX}/requests/{{rid}}", response_model=None)
    async def request_page(request: Request, rid: str, done: str = "", backups: bool = False) -> Response:
        page = await signed_in(request)
        try:
            doc = await api(page, "GET", f"/requests/{request_id(rid)}")
            sop = await api(page, "GET", "/sop")
        except (ServiceError, DeskRefusal) as exc:
            return refused(page, exc)
        steps = {s["name"]: s for s in sop["steps"]}
        actions = _actions(doc, sop, page.roles)
        available, unavailable = None, ""
        if backups and page.roles & BACKUP_READERS:
            # On asking only: reading the repository takes a playbook run, seconds, not a page's.
            try:
                available = (await api(page, "GET", f"/requests/{rid}/backups"))["backups"]
                for backup in available:
                    backup["age"] = _age(backup.get("finished_at"))
            except ServiceError as exc:  # the repository unreachable: the page, saying so
                unavailable = str(exc)
        return render(
            page,
            "request.html.j2",
            doc=doc,
            steps=steps,
            actions=actions,
            done=done if done in steps or done == "letter" else "",
            available=available,
            unavailable=unavailable,
            may_see_backups=bool(page.roles & BACKUP_READERS),
        )

    @routes.post(f"{PREFIX}/requests/{{rid}}/letter", response_model=None)
    async def attach_letter(request: Request, rid: str) -> Response:
        """The request's letter, uploaded: the service checks its type and size."""
        page = await signed_in(request)
        try:
            rid = request_id(rid)
            _bounded(request, LETTER_FORM_MAX)
            await checked_form(request, page)
            sent = await _letter_of(await request.form())
            if sent is None:
                raise DeskRefusal(400, "desk.letter", "choose the letter's file")
            await send_letter(page, rid, *sent)
        except (ServiceError, DeskRefusal) as exc:
            return refused(page, exc)
        return RedirectResponse(f"{PREFIX}/requests/{quote(rid)}?done=letter", status_code=303)

    async def send_letter(page: Page, rid: str, name: str, content: bytes) -> None:
        assert page.via is not None
        path = f"/requests/{rid}/letter?{urlencode({'filename': name})}"
        await run_in_threadpool(client.call, "POST", path, via=page.via, content=content)

    @routes.post(f"{PREFIX}/requests/{{rid}}/{{action}}", response_model=None)
    async def act(request: Request, rid: str, action: str) -> Response:
        page = await signed_in(request)
        try:
            _bounded(request)
            form = await checked_form(request, page)
            rid = request_id(rid)
            if action in ("restore", "backup"):  # a job of the service; the job page shows it
                path, body = (
                    ("/restores", {"request": rid})
                    if action == "restore"
                    else (f"/requests/{rid}/backup", {})
                )
                job = await api(page, "POST", path, body)
                return RedirectResponse(f"{PREFIX}/jobs/{quote(job['id'])}", status_code=303)
            body = _action_body(action, form)
            if action == "approve":
                body = await _signed(await request.form(), body)
            await api(page, "POST", f"/requests/{rid}/{action}", body)
        except ServiceError as exc:
            return refused(page, exc)
        except DeskRefusal as exc:
            return refused(page, exc)
        step = next(name for name, route in ACTIONS.items() if route == action)
        return RedirectResponse(f"{PREFIX}/requests/{quote(rid)}?done={step}", status_code=303)

    @routes.get(f"{PREFIX}/requests/{{rid}}/letter/{{letter_id}}", response_model=None)
    async def letter(request: Request, rid: str, letter_id: int) -> Response:
        """A request's letter, as the service holds it to its hash on the audit chain: shown
        inline in a sandbox (a PDF or an image; never run as a page of the desk)."""
        page = await signed_in(request)
        try:
            rid = request_id(rid)
            doc = await api(page, "GET", f"/requests/{rid}")
            meta = next((m for m in doc.get("letters") or [] if m["id"] == letter_id), None)
            if meta is None:
                raise DeskRefusal(404, "desk.input", f"request {rid} has no letter {letter_id}")
            assert page.via is not None
            path = f"/requests/{rid}/letter?letter={letter_id}"
            content = await run_in_threadpool(client.call, "GET", path, via=page.via, raw=True, binary=True)
        except (ServiceError, DeskRefusal) as exc:
            return refused(page, exc)
        return Response(
            content,
            media_type=meta["media_type"],
            headers={
                **HEADERS,
                "Content-Security-Policy": "default-src 'none'; img-src 'self'; object-src 'self'; sandbox",
                "Content-Disposition": f"inline; filename*=UTF-8''{quote(meta['filename'])}",
            },
        )

    @routes.get(f"{PREFIX}/requests/{{rid}}/statement", response_model=None)
    async def statement(
        request: Request, rid: str, valid_hours: str = "", note: str = "", outside_window: str = ""
    ) -> Response:
        """The statement an approval so signs, as the exact bytes to sign, for the approver to
        sign on their own machine (ssh-keygen -Y sign): their private key never comes here."""
        page = await signed_in(request)
        try:
            rid = request_id(rid)
            asked = _action_body(
                "approve", {"valid_hours": valid_hours, "note": note, "outside_window": outside_window}
            )
            query = urlencode({k: "true" if v is True else v for k, v in asked.items() if v != ""})
            doc = await api(page, "GET", f"/requests/{rid}/statement?{query}")
        except (ServiceError, DeskRefusal) as exc:
            return refused(page, exc)
        # The approve form takes this file back as it is (_signed); rid matched _REQUEST_ID.
        disposition = f'attachment; filename="{rid}-statement.json"'
        return Response(
            signing.canonical(doc),
            media_type="application/json",
            headers={**HEADERS, "Content-Disposition": disposition},
        )

    @routes.get(f"{PREFIX}/jobs/{{job_id}}", response_model=None)
    async def job_page(request: Request, job_id: str) -> Response:
        page = await signed_in(request)
        try:
            if not _JOB_ID.match(job_id):
                raise DeskRefusal(404, "desk.input", f"there is no job {job_id[:64]!r}")
            job = await api(page, "GET", f"/jobs/{job_id}?events=true")
        except (ServiceError, DeskRefusal) as exc:
            return refused(page, exc)
        return render(
            page, "job.html.j2", job=job, refresh=REFRESH_SECONDS if job["status"] == "running" else None
        )

    async def printed(page: Page, check: Any, path: str) -> Response:
        """One of the service's printable pages (a run report, Form PPD or PD) in the reader's
        language, after `check` (a DeskRefusal on a bad id)."""
        try:
            check()
            assert page.via is not None
            html = await run_in_threadpool(client.call, "GET", path, via=page.via, raw=True)
        except (ServiceError, DeskRefusal) as exc:
            return refused(page, exc)
        return HTMLResponse(html, headers={**HEADERS, "Content-Security-Policy": FORM_CSP})

    def matching(pattern: re.Pattern[str], text: str, what: str) -> Any:
        def check() -> None:
            if not pattern.match(text):
                raise DeskRefusal(404, "desk.input", f"there is no {what} {text[:64]!r}")

        return check

    @routes.get(f"{PREFIX}/runs/{{run_id}}", response_model=None)
    async def run_report(request: Request, run_id: str) -> Response:
        page = await signed_in(request)
        path = f"/runs/{run_id}?format=html&lang={page.lang}"
        return await printed(page, matching(_RUN_ID, run_id, "run"), path)

    @routes.get(f"{PREFIX}/requests/{{rid}}/form/{{form}}.pdf", response_model=None)
    async def printable_pdf(request: Request, rid: str, form: str) -> Response:
        """The form as the PDF the office files (the service renders it). Routed before the
        HTML form's route, whose {form} would take "ppd.pdf" too."""
        page = await signed_in(request)
        try:
            matching(_FORM, f"{rid}/{form}", "form")()
            assert page.via is not None
            path = f"/requests/{rid}/form?form={form}&lang={page.lang}&format=pdf"
            pdf = await run_in_threadpool(client.call, "GET", path, via=page.via, raw=True, binary=True)
        except (ServiceError, DeskRefusal) as exc:
            return refused(page, exc)
        disposition = f'inline; filename="{rid}-{form}.pdf"'  # rid matched _REQUEST_ID: no quote in it
        return Response(
            pdf, media_type="application/pdf", headers={**HEADERS, "Content-Disposition": disposition}
        )

    @routes.get(f"{PREFIX}/requests/{{rid}}/form/{{form}}", response_model=None)
    async def printable(request: Request, rid: str, form: str) -> Response:
        page = await signed_in(request)
        path = f"/requests/{rid}/form?form={form}&lang={page.lang}"
        return await printed(page, matching(_FORM, f"{rid}/{form}", "form"), path)

    # ---------------------------------------------------------------- auditors

    @routes.get(f"{PREFIX}/runs", response_model=None)
    async def runs_page(request: Request) -> Response:
        page = await signed_in(request)
        try:
            runs = (await api(page, "GET", "/runs"))["runs"]
        except ServiceError as exc:
            return refused(page, exc)
        # A run's kind by the name its printed report gives it (the forms' catalog).
        kinds = {code: printing.CATALOG.gettext(page.lang, name) for code, name in report.KINDS.items()}
        ordered = sorted(runs, key=lambda r: r["run_id"], reverse=True)
        return render(page, "runs.html.j2", runs=ordered, kinds=kinds)

    async def audit_view(
        page: Page, before: int | None, verification: dict[str, Any] | None = None
    ) -> Response:
        query = f"/audit?limit={AUDIT_PAGE}" + (f"&before={before}" if before else "")
        try:
            shown = await api(page, "GET", query)
        except ServiceError as exc:
            return refused(page, exc)
        entries = shown["entries"]
        older = entries[-1]["seq"] if len(entries) == AUDIT_PAGE and entries[-1]["seq"] > 1 else None
        return render(
            page,
            "audit.html.j2",
            entries=entries,
            total=shown["total"],
            older=older,
            verification=verification,
        )

    @routes.get(f"{PREFIX}/audit", response_model=None)
    async def audit_page(request: Request, before: int | None = None) -> Response:
        page = await signed_in(request)
        return await audit_view(page, before if before and before > 0 else None)

    @routes.post(f"{PREFIX}/audit/verify", response_model=None)
    async def audit_verify(request: Request) -> Response:
        """The whole chain checked by the service (every entry's hash, the anchors, the
        signatures), its answer shown above the newest entries."""
        page = await signed_in(request)
        try:
            await checked_form(request, page)
            verification = await api(page, "POST", "/audit/verify")
        except (ServiceError, DeskRefusal) as exc:
            return refused(page, exc)
        return await audit_view(page, None, verification)

    # ---------------------------------------------------------------- admins

    async def admin_view(page: Page, status: int = 200, **flash: Any) -> Response:
        try:
            users = (await api(page, "GET", "/admin/users"))["users"]
            tokens = (await api(page, "GET", "/admin/tokens"))["tokens"]
            policy = await api(page, "GET", "/admin/policy")
            outbox = await api(page, "GET", f"/admin/outbox?limit={OUTBOX_SHOWN}")
        except ServiceError as exc:
            return refused(page, exc)
        # In use: neither revoked nor expired (an expiry still to come has no age yet).
        live = [t for t in tokens if not t["revoked_at"] and _age(t["expires_at"]) is None]
        return render(
            page,
            "admin.html.j2",
            status,
            users=users,
            tokens=live,
            policy=policy,
            all_roles=list(words.ROLES),
            outbox=outbox,
            **flash,
        )

    @routes.get(f"{PREFIX}/admin", response_model=None)
    async def admin_page(request: Request) -> Response:
        page = await signed_in(request)
        return await admin_view(page)

    @routes.post(f"{PREFIX}/admin/users", response_model=None)
    async def add_account(request: Request) -> Response:
        page = await signed_in(request)
        try:
            form = await checked_form(request, page)
            posted = await request.form()
            body: dict[str, Any] = {
                "name": form.get("name", "").strip(),
                "roles": [str(r) for r in posted.getlist("roles")],
                "skpds": [s for s in re.split(r"[\s,]+", form.get("skpds", "")) if s],
                "email": form.get("email", "").strip() or None,
            }
            await api(page, "POST", "/admin/users", body)
            new_password = await api(page, "POST", f"/admin/users/{quote(body['name'])}/password")
        except (ServiceError, DeskRefusal) as exc:
            return refused(page, exc)
        # The first password is made by the service and shown once, like a reset's.
        return await admin_view(page, done="added", account=body["name"], password=new_password["password"])

    @routes.post(f"{PREFIX}/admin/users/{{name}}/{{action}}", response_model=None)
    async def account_action(request: Request, name: str, action: str) -> Response:
        page = await signed_in(request)
        try:
            await checked_form(request, page)
            if not _ACCOUNT.match(name) or action not in ACCOUNT_STEPS:
                raise DeskRefusal(404, "desk.input", f"there is no account step {action[:16]!r}")
            answer = await api(page, "POST", f"/admin/users/{name}/{ACCOUNT_STEPS[action]}")
        except (ServiceError, DeskRefusal) as exc:
            return refused(page, exc)
        return await admin_view(page, done=action, account=name, password=answer.get("password"))

    @routes.post(f"{PREFIX}/admin/roles", response_model=None)
    async def set_roles(request: Request) -> Response:
        page = await signed_in(request)
        try:
            form = await checked_form(request, page)
            name = form.get("name", "")
            if not _ACCOUNT.match(name):
                raise DeskRefusal(404, "desk.input", f"there is no account {name[:64]!r}")
            roles = [str(r) for r in (await request.form()).getlist("roles")]
            skpds = [s for s in re.split(r"[\s,]+", form.get("skpds", "")) if s]
            await api(page, "PUT", f"/admin/users/{name}/roles", {"roles": roles, "skpds": skpds})
        except (ServiceError, DeskRefusal) as exc:
            return refused(page, exc)
        return await admin_view(page, done="roles", account=name)

    @routes.post(f"{PREFIX}/admin/tokens/{{token_id}}/revoke", response_model=None)
    async def revoke_token(request: Request, token_id: str) -> Response:
        page = await signed_in(request)
        try:
            await checked_form(request, page)
            if not _TOKEN_ID.match(token_id):
                raise DeskRefusal(404, "desk.input", f"there is no token {token_id[:32]!r}")
            await api(page, "POST", f"/admin/tokens/{token_id}/revoke")
        except (ServiceError, DeskRefusal) as exc:
            return refused(page, exc)
        return await admin_view(page, done="revoked", account=token_id)

    @routes.post(f"{PREFIX}/admin/policy", response_model=None)
    async def set_policy(request: Request) -> Response:
        page = await signed_in(request)
        try:
            form = await checked_form(request, page)
            posted = await request.form()
            pairs = [str(p).split(",", 1) for p in posted.getlist("distinct") if "," in str(p)]
            body = {"signed_approvals": form.get("signed_approvals", "none"), "distinct": pairs}
            await api(page, "PUT", "/admin/policy", body)
        except (ServiceError, DeskRefusal) as exc:
            return refused(page, exc)
        return await admin_view(page, done="policy")

    # ---------------------------------------------------------------- everyone

    @routes.get(f"{PREFIX}/account", response_model=None)
    async def account_page(request: Request) -> Response:
        page = await signed_in(request)
        return render(page, "account.html.j2")

    def account_again(page: Page, exc: ServiceError, where: str) -> Response:
        """The account page again with the refusal in the form's place (`where`) when it is
        about what was typed; any other refusal, on its own page."""
        if exc.status in (400, 403, 409, 429):
            summary = words.REFUSALS.get(exc.message_id, words.REFUSED)
            return render(page, "account.html.j2", exc.status or 400, **{where: summary})
        return refused(page, exc)

    @routes.post(f"{PREFIX}/account/password", response_model=None)
    async def change_password(request: Request) -> Response:
        page = await signed_in(request)
        try:
            form = await checked_form(request, page)
            if form.get("new", "") != form.get("again", ""):
                return render(page, "account.html.j2", 400, error=words.PASSWORDS_DIFFER)
            body = {"current": form.get("current", "")[:1024], "new": form.get("new", "")[:1024]}
            await api(page, "POST", "/password", body)
        except ServiceError as exc:
            return account_again(page, exc, "error")
        except DeskRefusal as exc:
            return refused(page, exc)
        return render(page, "account.html.j2", changed=True)

    @routes.post(f"{PREFIX}/account/totp/{{step}}", response_model=None)
    async def second_factor(request: Request, step: str) -> Response:
        """Set up a second factor (offer, then enable with a code made from the offered
        secret, which rides in the form) or turn it off with a code."""
        page = await signed_in(request)
        try:
            form = await checked_form(request, page)
            if step == "offer":
                offer = await api(page, "POST", "/totp/offer")
                return render(page, "account.html.j2", offer=offer)
            if step not in ("enable", "disable"):
                raise DeskRefusal(404, "desk.input", f"there is no step {step[:16]!r}")
            body = {"code": form.get("code", "").strip()[:16]}
            if step == "enable":
                body["secret"] = form.get("secret", "")[:64]
            page.who = await api(page, "POST", f"/totp/{step}", body)
        except ServiceError as exc:
            return account_again(page, exc, "totp_error")
        except DeskRefusal as exc:
            return refused(page, exc)
        return render(page, "account.html.j2", totp_done=step)

    return routes


def _age(stamp: Any) -> float | None:
    """Hours since an ISO time in the past (None: no time, or one still to come)."""
    try:
        then = dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=dt.UTC)
    hours = (dt.datetime.now(dt.UTC) - then).total_seconds() / 3600
    return round(hours, 1) if hours >= 0 else None


async def _to_login(*_: Any) -> Response:
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(SESSION, path=PREFIX)
    return response


def page_text(page: Page, message: str) -> str:
    return i18n.translations(page.lang).gettext(message)


def _action_body(action: str, form: dict[str, str]) -> dict[str, Any]:
    """The API body of a step, from its form; DeskRefusal 400 on a field that cannot be one."""
    note = form.get("note", "")
    if action in ("receive", "confirm", "not-restored", "close"):
        return {"note": note}
    if action in ("reject", "revoke"):
        return {"reason": form.get("reason", "")}
    if action == "approve":
        hours = form.get("valid_hours", "").strip()
        if hours and not (hours.isascii() and hours.isdigit() and len(hours) <= 4):
            raise DeskRefusal(400, "desk.input", f"valid hours {hours[:16]!r} is no whole number")
        if len(note) > NOTE_MAX:  # the service's bound, here before a statement is made of it
            raise DeskRefusal(400, "desk.input", f"a note is at most {NOTE_MAX} characters")
        outside = {"outside_window": True} if form.get("outside_window") == "yes" else {}
        return {"note": note, **({"valid_hours": int(hours)} if hours else {}), **outside}
    if action == "assess":
        return {
            "note": note,
            "data_exists": form.get("data_exists") == "yes",
            "damage": form.get("damage", ""),
        }
    if action == "check-backups":
        return {"note": note, "query": True}
    if action == "plan":
        backups = {
            key[len("backup:") :]: value for key, value in form.items() if key.startswith("backup:") and value
        }
        body: dict[str, Any] = {"note": note, "backups": backups, "window": form.get("window", "")}
        if form.get("unverified", "").strip():
            body["unverified"] = form["unverified"].strip()
        return body
    raise DeskRefusal(404, "desk.input", f"there is no step {action[:32]!r}")


NOTE_MAX: Final = 2000
FORM_MAX: Final = 64 * 1024  # any step's form, a signed approval's two files included
FILE_MAX: Final = 16 * 1024  # a statement is about 1 KiB, an SSH signature some 300 bytes
LETTER_MAX: Final = 10 * 1024 * 1024  # the service's bound on a request letter (pulih.requests)
LETTER_FORM_MAX: Final = LETTER_MAX + FORM_MAX  # a letter and the fields of its form
SIGNATURE_ARMOUR: Final = "-----BEGIN SSH SIGNATURE-----"


def _bounded(request: Request, limit: int = FORM_MAX) -> None:
    """DeskRefusal 413 for a form larger than `limit` (any step's, or a letter's), before its
    body is read (the multipart parser would spool it to disk whole)."""
    chunked = "transfer-encoding" in request.headers  # no stated length: refused too
    length = request.headers.get("content-length", "" if chunked else "0")
    if not length.isdigit() or int(length) > limit:
        raise DeskRefusal(413, "desk.too_large", f"the form is at most {limit} bytes")


def _actions(doc: dict[str, Any], sop: dict[str, Any], roles: set[str]) -> list[tuple[str, str]]:
    """The steps the reader may take next on a request, each with the desk's action for it:
    a backup request's next steps are its own, and its 'executed' is the backup job."""
    steps = {s["name"]: s for s in sop["steps"]}
    backup = doc.get("kind") == "backup"
    following = (sop.get("backup_next") or {}).get(doc["status"]) if backup else None
    return [
        (name, "backup" if backup and name == "executed" else ACTIONS[name])
        for name in following or steps[doc["status"]]["next"]
        if name in ACTIONS and steps[name]["role"] in roles
    ]


async def _letter_of(posted: FormData) -> tuple[str, bytes] | None:
    """The posted letter's file name and bytes (at most LETTER_MAX + 1: the service says how
    large is too large), or None when no file was chosen."""
    sent = posted.get("letter")
    if sent is None or isinstance(sent, str):
        return None
    data = await sent.read(LETTER_MAX + 1)
    return (sent.filename or "letter", data) if data else None


async def _upload(posted: FormData, name: str) -> bytes:
    """A posted file's bytes (or a pasted field's), at most FILE_MAX; empty: none sent."""
    sent = posted.get(name)
    if sent is None:
        return b""
    data = sent.encode() if isinstance(sent, str) else await sent.read(FILE_MAX + 1)
    if len(data) > FILE_MAX:
        raise DeskRefusal(413, "desk.too_large", f"the {name} is more than {FILE_MAX} bytes")
    return data


async def _signed(posted: FormData, body: dict[str, Any]) -> dict[str, Any]:
    """The approval's body with the statement and the signature the approver sent (no files:
    unsigned, as it was); DeskRefusal 400 on files that cannot be those.

    The statement is the file the approver downloaded and signed, carried as it is: fetched
    again, it would name the audit chain's head of now, which any step or login since has
    moved, and the signature would cover other bytes. The service checks it whole either way:
    every field against this approval, its chain head on the log, the signature against the
    keys the chain says the approver holds."""
    statement, signature = await _upload(posted, "statement"), await _upload(posted, "signature")
    if not statement and not signature:
        return body
    if not statement or not signature:
        raise DeskRefusal(400, "desk.signed_pair", "a signed approval sends the statement and its .sig")
    try:
        doc = json.loads(statement)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested past the parser
        doc = None
    # Only a canonical file is, byte for byte, what the service will check the signature over.
    if not isinstance(doc, dict) or signing.canonical(doc) != statement:
        raise DeskRefusal(
            400, "desk.statement_file", "the statement is not the file the desk gave, unchanged"
        )
    text = signature.decode("ascii", errors="replace")
    if not text.lstrip().startswith(SIGNATURE_ARMOUR):
        raise DeskRefusal(400, "desk.signature_file", "the signature is not an SSH signature (ssh-keygen -Y)")
    signed = {**body, "statement": doc, "signature": text}
    # Approved as signed: the statement's validity and note, unless the form gives its own
    # (which the service then refuses if they differ from the statement's).
    hours = doc.get("valid_hours")
    if "valid_hours" not in body and isinstance(hours, int) and not isinstance(hours, bool):
        signed["valid_hours"] = hours
    if not body["note"] and isinstance(doc.get("note"), str):
        signed["note"] = doc["note"]
    if doc.get("outside_window") is True:  # signed as allowing it: approved so
        signed["outside_window"] = True
    return signed


def _set_cookie(
    response: Response,
    name: str,
    value: str,
    *,
    secure: bool,
    max_age: int | None = None,
) -> None:
    """The desk's cookies: only to the desk's own path and site, never to a script; Secure
    whenever the desk is reached over HTTPS."""
    response.set_cookie(
        name, value, max_age=max_age, path=PREFIX, httponly=True, samesite="strict", secure=secure
    )

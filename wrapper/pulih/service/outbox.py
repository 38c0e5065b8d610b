"""The mail outbox of pulih serve: each mail is a row written in the transaction of the step
that causes it (a step on the record is never a mail lost), delivered later by the sender
thread, tried again with a growing wait until the server takes it.

One row per event and account (unique: the same event written twice never mails twice): the
steps of `pulih.mail.MAILS` to the accounts it names, and a step left longer than the SOP's
standard time without its next step (overdue) to the accounts `mail.escalation` names, once
per request and step. An account without an address, a disabled one or none at all is a row
`skipped` with the reason, so an admin sees who was not told (GET /v1/admin/outbox).

Statuses: pending (not tried yet), failed (the last attempt failed: tried again at
`next_attempt_at`, its error in `last_error`), sent, skipped. The SMTP password is read from
its file at each login and is never written anywhere here, nor in a log."""

from __future__ import annotations

import datetime as dt
import json
import logging
import smtplib
import ssl
import threading
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from pulih import delegation
from pulih import mail as mails
from pulih.mail import MailSettings
from pulih.requests import STEP, last_step, next_steps
from pulih.service.accounts import Account, Accounts
from pulih.store import Store, iso, now, outbox_table, parse_iso, requests_table, steps_table

log = logging.getLogger(__name__)

STATUSES: Final = ("pending", "failed", "sent", "skipped")
DUE: Final = ("pending", "failed")
# A row being sent is held this long: a service killed mid-send tries it again after it.
LEASE: Final = dt.timedelta(minutes=10)
BATCH: Final = 50
NOBODY: Final = "-"  # the account of a row that says no account was there to tell
CLOSED: Final = ("closed", "rejected")

# (account name, address or None, why it is not sent or None)
Recipient = tuple[str, str | None, str | None]


def _second(at: dt.datetime) -> dt.datetime:
    return at.astimezone(dt.UTC).replace(microsecond=0)


def shown_time(text: str) -> str:
    return parse_iso(text).strftime("%Y-%m-%d %H:%M UTC")


class Outbox:
    def __init__(
        self, store: Store, settings: MailSettings, standard_minutes: dict[str, dict[str, int | None]]
    ) -> None:
        self.store, self.settings, self.standard_minutes = store, settings, standard_minutes
        self.accounts = Accounts(store)

    # ---------------------------------------------------------------- writing

    def on_step(self, conn: Connection, request_id: str) -> None:
        """The mails of the step just recorded on `request_id`, in the step's transaction
        (pulih.requests.OnStep)."""
        step = last_step(conn, request_id)
        assert step is not None  # called right after a step was written
        mail = mails.MAILS.get(step["step"])
        if mail is None:
            return
        request = dict(
            conn.execute(sa.select(requests_table).where(requests_table.c.id == request_id)).mappings().one()
        )
        values, facts = self._about(request, step)
        recipients = self._recipients(conn, mail.to, request, actor=step["actor"])
        self._write(conn, request, step, step["step"], mail, values, facts, recipients, step["at"])

    def _about(self, request: dict[str, Any], step: Any) -> tuple[dict[str, str], list[tuple[str, str]]]:
        """The placeholders' values and the fact lines of a mail about `request` at `step`."""
        lang = self.settings.lang
        scope = json.loads(request["scope"])
        values = {
            "request_id": request["id"],
            "skpd": request["skpd"],
            "actor": step["actor"],
            "expires": shown_time(request["approval_expires_at"]) if request["approval_expires_at"] else "",
            "reason": request["rejected_reason"] or "",
            "outcome": "",
        }
        facts = [
            ("request", request["id"]),
            ("skpd", request["skpd"]),
            ("items", ", ".join(f"{s['asset_id']}:{s['item']}" for s in scope)),
            ("status", STEP[step["step"]].label[lang]),
        ]
        if step["step"] == "rejected":
            facts.append(("reason", values["reason"]))
        if step["step"] == "planned" and request["plan"]:
            plan = json.loads(request["plan"])
            backups = ", ".join(f"{k} \u2190 {v}" for k, v in sorted((plan.get("backups") or {}).items()))
            facts += [("backups", backups), ("window", plan.get("window") or "")]
        if step["step"] == "executed":
            outcome, _, detail = str(step["note"]).partition(": ")
            known = mails.OUTCOMES.get(outcome)
            values["outcome"] = mails.translate(lang, known) if known else outcome
            facts.append(("details", " ".join(detail.split()) if known else ""))
        return values, facts

    def _recipients(
        self, conn: Connection, to: str, request: dict[str, Any], *, actor: str
    ) -> list[Recipient]:
        """Who hears of it: the requester, the escalation accounts, or every enabled account
        of role `to` whose SKPDs (when it has any) hold the request's, but the one who acted."""
        if to in ("requester", "escalation"):
            names = [request["requester"]] if to == "requester" else list(self.settings.escalation)
            known = {a.name: a for a in self.accounts.all(conn)}
            if not names:
                return [(NOBODY, None, "mail.escalation names no account")]
            return [_recipient(name, known.get(name)) for name in names]
        acting = delegation.delegates(conn, to, now())  # a Plh. in force hears as the approver
        chosen = [
            a
            for a in self.accounts.all(conn)
            if (to in a.roles or a.name in acting)
            and not a.disabled
            and a.name != actor
            and (not a.skpds or request["skpd"] in a.skpds)
        ]
        if not chosen:
            return [(NOBODY, None, f"no enabled account of role {to} for SKPD {request['skpd']}")]
        return [_recipient(a.name, a) for a in chosen]

    def _write(
        self,
        conn: Connection,
        request: dict[str, Any],
        step: Any,
        event: str,
        mail: mails.Mail,
        values: dict[str, str],
        facts: list[tuple[str, str]],
        recipients: list[Recipient],
        at: str,
    ) -> None:
        for account, address, why in recipients:
            subject, body = mails.compose(
                mail,
                lang=self.settings.lang,
                recipient=account,
                link=self.settings.link(request["id"]),
                values=values,
                facts=facts,
            )
            conn.execute(
                sa.insert(outbox_table).values(
                    request_id=request["id"],
                    event=event,
                    step=step["step"],
                    step_id=step["id"],
                    account=account,
                    recipient=address,
                    subject=subject,
                    body=body,
                    status="pending" if address else "skipped",
                    attempts=0,
                    next_attempt_at=at if address else None,
                    last_error=why,
                    created_at=at,
                )
            )

    # ---------------------------------------------------------------- overdue

    def check_overdue(self, at: dt.datetime) -> int:
        """Mail the escalation accounts of every open request whose last step has waited past
        the SOP's standard time for its next step; once per request and step. Returns how many
        requests were found overdue for the first time."""
        at = _second(at)
        with self.store.engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.select(requests_table)
                    .where(requests_table.c.status.not_in(CLOSED))
                    .order_by(requests_table.c.id)
                )
                .mappings()
                .all()
            )
        found = 0
        for request in rows:
            waited = self._overdue(dict(request), at)
            if waited is None:
                continue
            step, minutes, awaited = waited
            try:
                with self.store.transaction() as conn:
                    if self._written(conn, request["id"], "overdue", step["id"]):
                        continue
                    found += 1
                    values, facts = self._about(dict(request), step)
                    lang = self.settings.lang
                    values.update(
                        step=STEP[step["step"]].label[lang],
                        since=shown_time(step["at"]),
                        minutes=str(minutes),
                        next_steps=" / ".join(STEP[n].label[lang] for n in awaited),
                        role=mails.translate(lang, mails.ROLE_NAMES[STEP[awaited[0]].role]),
                    )
                    recipients = self._recipients(conn, "escalation", dict(request), actor="")
                    self._write(
                        conn,
                        dict(request),
                        step,
                        "overdue",
                        mails.OVERDUE,
                        values,
                        facts,
                        recipients,
                        iso(at),
                    )
            except IntegrityError:  # another service wrote it first: once is once
                continue
        return found

    def _overdue(self, request: dict[str, Any], at: dt.datetime) -> tuple[Any, int, list[str]] | None:
        """(the last step, the standard minutes, the steps awaited) when the request's last step
        has waited longer than the SOP's standard time of what comes next, else None."""
        standard = self.standard_minutes.get(request["procedure"], {})
        following = next_steps(request.get("kind") or "restore", request["status"])  # a backup's own
        awaited = [n for n in following if standard.get(n) is not None]
        if not awaited:
            return None
        minutes = min(int(standard[n] or 0) for n in awaited)
        with self.store.engine.connect() as conn:
            step = (
                conn.execute(
                    sa.select(steps_table)
                    .where(steps_table.c.request_id == request["id"])
                    .order_by(steps_table.c.id.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
            if step is None or parse_iso(step["at"]) + dt.timedelta(minutes=minutes) >= at:
                return None
            if self._written(conn, request["id"], "overdue", step["id"]):
                return None
        return step, minutes, awaited

    @staticmethod
    def _written(conn: Connection, request_id: str, event: str, step_id: int) -> bool:
        return (
            conn.execute(
                sa.select(outbox_table.c.id)
                .where(
                    outbox_table.c.request_id == request_id,
                    outbox_table.c.event == event,
                    outbox_table.c.step_id == step_id,
                )
                .limit(1)
            ).first()
            is not None
        )

    # ---------------------------------------------------------------- sending

    def deliver_due(self, at: dt.datetime) -> dict[str, int]:
        """Send every row due at `at` over one SMTP connection; a failure is recorded on its
        row, which is tried again after a wait that doubles up to `retry_max_seconds`."""
        at = _second(at)
        claimed = self._claim(at)
        done = {"sent": 0, "failed": 0}
        smtp: smtplib.SMTP | None = None
        try:
            for index, row in enumerate(claimed):
                if smtp is None:
                    try:
                        smtp = smtp_connection(self.settings)
                    except (smtplib.SMTPException, OSError, ValueError) as exc:
                        for rest in claimed[index:]:  # no server to talk to: each attempt failed
                            self._failed(rest, at, exc)
                        done["failed"] += len(claimed) - index
                        break
                try:
                    smtp.send_message(self.message(row), to_addrs=[row["recipient"]])
                except (smtplib.SMTPException, OSError, ValueError) as exc:
                    self._failed(row, at, exc)
                    done["failed"] += 1
                    _quit(smtp)  # a fresh connection for the next: this one may be in any state
                    smtp = None
                    continue
                self._sent(row, at)
                done["sent"] += 1
        finally:
            if smtp is not None:
                _quit(smtp)
        return done

    def _claim(self, at: dt.datetime) -> list[dict[str, Any]]:
        """The due rows, each held for LEASE so that a second sender (a second service on a
        shared store) does not send it too."""
        claimed: list[dict[str, Any]] = []
        with self.store.engine.connect() as conn:  # most rounds find nothing: no write lock for that
            if not conn.execute(
                sa.select(outbox_table.c.id)
                .where(outbox_table.c.status.in_(DUE), outbox_table.c.next_attempt_at <= iso(at))
                .limit(1)
            ).first():
                return claimed
        with self.store.transaction() as conn:
            due = (
                conn.execute(
                    sa.select(outbox_table)
                    .where(outbox_table.c.status.in_(DUE), outbox_table.c.next_attempt_at <= iso(at))
                    .order_by(outbox_table.c.next_attempt_at, outbox_table.c.id)
                    .limit(BATCH)
                )
                .mappings()
                .all()
            )
            for row in due:
                held = conn.execute(
                    sa.update(outbox_table)
                    .where(
                        outbox_table.c.id == row["id"],
                        outbox_table.c.next_attempt_at == row["next_attempt_at"],
                    )
                    .values(next_attempt_at=iso(at + LEASE))
                )
                if held.rowcount == 1:
                    claimed.append(dict(row))
        return claimed

    def message(self, row: dict[str, Any]) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.settings.sender
        message["To"] = row["recipient"]
        message["Subject"] = row["subject"]
        message["Date"] = format_datetime(parse_iso(row["created_at"]))
        domain = parseaddr(self.settings.sender)[1].rpartition("@")[2]
        # The same id on every attempt: a server that did take a mail we think failed can tell.
        message["Message-ID"] = f"<pulih.{row['request_id']}.{row['id']}@{domain}>"
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(row["body"])
        return message

    def _sent(self, row: dict[str, Any], at: dt.datetime) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                sa.update(outbox_table)
                .where(outbox_table.c.id == row["id"])
                .values(status="sent", attempts=row["attempts"] + 1, sent_at=iso(at), next_attempt_at=None)
            )
        log.info("mail %s to %s (%s of %s) sent", row["id"], row["account"], row["event"], row["request_id"])

    def _failed(self, row: dict[str, Any], at: dt.datetime, exc: BaseException) -> None:
        attempts = row["attempts"] + 1
        wait = min(self.settings.retry_seconds * 2 ** (attempts - 1), self.settings.retry_max_seconds)
        later = iso(at + dt.timedelta(seconds=wait))
        error = self.error_text(exc)
        with self.store.transaction() as conn:
            conn.execute(
                sa.update(outbox_table)
                .where(outbox_table.c.id == row["id"])
                .values(status="failed", attempts=attempts, last_error=error, next_attempt_at=later)
            )
        log.warning(
            "mail %s to %s: attempt %d failed (%s); next at %s",
            row["id"],
            row["account"],
            attempts,
            error,
            later,
        )

    def error_text(self, exc: BaseException) -> str:
        """What went wrong, in one line, and never the password (a server that echoes it back
        is not one to trust with it, but the record keeps it out all the same)."""
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            text = "; ".join(
                f"{who}: {_response(code, said)}" for who, (code, said) in exc.recipients.items()
            )
        elif isinstance(exc, smtplib.SMTPResponseException):
            text = _response(exc.smtp_code, exc.smtp_error)
        else:
            text = str(exc) or type(exc).__name__
        text = f"{type(exc).__name__}: {' '.join(text.split())}"[:500]
        try:
            password = self.settings.password()
        except OSError:
            password = None
        return text.replace(password, "***") if password else text


def listing(store: Store, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """The outbox's rows, newest first, without their bodies (rows of a time the service had
    mail configured too)."""
    query = (
        sa.select(*(c for c in outbox_table.columns if c.name != "body"))
        .order_by(outbox_table.c.id.desc())
        .limit(limit)
    )
    if status is not None:
        query = query.where(outbox_table.c.status == status)
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def _recipient(name: str, account: Account | None) -> Recipient:
    if account is None:
        return name, None, f"there is no account {name}"
    if account.disabled:
        return name, None, f"account {name} is disabled"
    if not account.email:
        return name, None, f"account {name} has no e-mail address"
    return name, account.email, None


def _response(code: int, said: bytes | str) -> str:
    text = said.decode("utf-8", "replace") if isinstance(said, bytes) else str(said)
    return f"{code} {text}"


def _quit(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def smtp_connection(settings: MailSettings) -> smtplib.SMTP:
    """A connection to the mail server as the settings say: TLS from the start (ssl), or
    STARTTLS before anything is sent (never falling back to plain text), certificates checked;
    logged in when a user is named."""
    context = ssl.create_default_context()
    timeout = settings.timeout_seconds
    smtp: smtplib.SMTP
    if settings.security == "ssl":
        smtp = smtplib.SMTP_SSL(settings.smtp_host, settings.smtp_port, timeout=timeout, context=context)
    else:
        smtp = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout)
    try:
        if settings.security == "starttls":
            smtp.starttls(context=context)
        if settings.user:
            smtp.login(settings.user, settings.password() or "")
    except BaseException:
        smtp.close()
        raise
    return smtp


class Sender:
    """The thread of pulih serve that checks for overdue steps and delivers due mail every
    `interval_seconds`; `stop()` ends it at its next wait."""

    def __init__(self, outbox: Outbox, clock: Callable[[], dt.datetime] = now) -> None:
        self.outbox, self.clock = outbox, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pulih-mail", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 60) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def round(self) -> None:
        self.outbox.check_overdue(self.clock())
        self.outbox.deliver_due(self.clock())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.round()
            except Exception as exc:  # a store that is busy or gone: the next round tries again
                log.warning("mail: the sender's round failed: %s", self.outbox.error_text(exc))
            self._stop.wait(self.outbox.settings.interval_seconds)

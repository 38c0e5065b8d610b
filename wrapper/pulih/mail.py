"""The service's mail: its settings (the `mail:` section of config.yml) and what each mail says.

    mail:
      smtp_host: smtp.diskominfo.example.go.id
      smtp_port: 587                  # default: 587 starttls, 465 ssl, 25 none
      security: starttls              # starttls | ssl | none
      user: pulih                     # optional: log in as this
      password_file: /etc/pulih/smtp-password   # with user: a file only the service can read
      from: "pulih <pulih@diskominfo.example.go.id>"
      base_url: https://pulih.diskominfo.example.go.id   # links: BASE_URL/desk/requests/ID
      escalation: [kasubkor]          # accounts told of a step overdue by the SOP's standard time
      lang: id                        # id (default) | en
      interval_seconds: 30            # how often the sender looks for due mail and overdue steps
      retry_seconds: 60               # the first retry's wait, doubled each time...
      retry_max_seconds: 3600         # ...up to this

The password is read from its file when the sender logs in, never kept in the settings, the
store, the outbox, a mail or a log. Every text is an English gettext message translated by the
`mail` catalog (`locale/id/LC_MESSAGES/mail.po`); Indonesian unless `lang: en`."""

from __future__ import annotations

import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import formataddr, parseaddr
from pathlib import Path
from typing import Any, Final, Literal, cast
from urllib.parse import urlsplit

from pulih.i18n import DEFAULT, LANGS, Catalog

Security = Literal["starttls", "ssl", "none"]
SECURITY: Final = ("starttls", "ssl", "none")
PORTS: Final[dict[str, int]] = {"starttls": 587, "ssl": 465, "none": 25}
CATALOG: Final = Catalog("mail", Path(__file__).parent / "locale")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A plain address: ASCII, a local part without leading, trailing or doubled dots, and a domain of
# at least two labels (no quoted local parts, IP literals or comments: no office needs them).
_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.:-]{0,251}[A-Za-z0-9])?$")
_ACCOUNT = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")  # an account's name (pulih.service.accounts)


def address_problem(address: str) -> str | None:
    """Why `address` is not a plain e-mail address (None when it is one)."""
    if _CONTROL.search(address):
        return "holds a control character"
    local, at, domain = address.rpartition("@")
    labels = domain.split(".")
    if (
        not at
        or len(address) > 254
        or len(local) > 64
        or not _LOCAL.match(local)
        or len(labels) < 2
        or not all(_LABEL.match(label) for label in labels)
    ):
        return "is not an address like name@dinas.example.go.id"
    return None


@dataclass(frozen=True)
class MailSettings:
    """The `mail:` section, checked. `sender` is the From header (the section's `from`)."""

    smtp_host: str
    smtp_port: int
    security: Security
    sender: str
    base_url: str
    user: str | None = None
    password_file: Path | None = None
    escalation: tuple[str, ...] = ()
    lang: str = DEFAULT
    interval_seconds: float = 30.0
    retry_seconds: float = 60.0
    retry_max_seconds: float = 3600.0
    timeout_seconds: float = 30.0

    def link(self, request_id: str) -> str:
        return f"{self.base_url}/desk/requests/{request_id}"

    def password(self) -> str | None:
        """The SMTP password, read now from its file (so a changed one needs no restart)."""
        if self.password_file is None:
            return None
        return self.password_file.read_text(encoding="utf-8").rstrip("\r\n")

    def summary(self) -> dict[str, Any]:
        """What an admin may see of them: never the password, nor where it is kept."""
        return {
            "smtp_host": self.smtp_host,
            "smtp_port": self.smtp_port,
            "security": self.security,
            "user": self.user,
            "from": self.sender,
            "base_url": self.base_url,
            "escalation": list(self.escalation),
            "lang": self.lang,
        }


FIELDS: Final = (
    "smtp_host",
    "smtp_port",
    "security",
    "user",
    "password_file",
    "from",
    "base_url",
    "escalation",
    "lang",
    "interval_seconds",
    "retry_seconds",
    "retry_max_seconds",
    "timeout_seconds",
)


def settings_from(raw: Any, where: Path | str, error: type[Exception]) -> MailSettings | None:
    """The `mail:` section of `where` (None: no mail), or `error` naming the field that is wrong."""
    if raw is None:
        return None

    def bad(key: str, why: str) -> Exception:
        return error(f"{where}: field 'mail.{key}': {why}")

    if not isinstance(raw, dict):
        raise error(f"{where}: field 'mail': a mapping ({', '.join(FIELDS)})")
    if "password" in raw:
        raise bad(
            "password",
            "a password is never written in the config: put it in a file only the service can read "
            "and name that file in mail.password_file",
        )
    unknown = sorted(str(k) for k in set(raw) - set(FIELDS))
    if unknown:
        raise bad(unknown[0], f"unknown (the fields are {', '.join(FIELDS)})")

    def text(key: str, *, required: bool = False) -> str | None:
        value = raw.get(key)
        if value is None:
            if required:
                raise bad(key, "missing")
            return None
        if not isinstance(value, str) or not value.strip():
            raise bad(key, f"{value!r} is not a text")
        if _CONTROL.search(value):
            raise bad(key, "holds a control character")
        return value.strip()

    def number(key: str, default: float, low: float, high: float) -> float:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise bad(key, f"{value!r} is not a number from {low:g} to {high:g}")
        return float(value)

    host = cast(str, text("smtp_host", required=True))
    if not _HOST.match(host):
        raise bad("smtp_host", f"{host!r} is not a host name or address")
    security = raw.get("security", "starttls")
    if security not in SECURITY:
        raise bad("security", f"{security!r}: one of {', '.join(SECURITY)}")
    port = raw.get("smtp_port", PORTS[security])
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise bad("smtp_port", f"{port!r} is not a port (1 to 65535)")
    user = text("user")
    password_file = _password_file(text("password_file"), bad)
    if (user is None) != (password_file is None):
        raise bad(
            "password_file" if user else "user",
            "user and password_file go together (a login needs both; no login neither)",
        )
    if user and security == "none" and host not in ("localhost", "127.0.0.1", "::1"):
        raise bad("security", f"'none' would send the password to {host} in the clear: use starttls or ssl")
    sender = cast(str, text("from", required=True))
    name, address = parseaddr(sender)
    problem = address_problem(address) if address else "is not an address"
    if problem:
        raise bad("from", f"{sender!r} {problem}")
    base_url = cast(str, text("base_url", required=True)).rstrip("/")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise bad("base_url", f"{base_url!r} is not an http(s) address such as https://pulih.example.go.id")
    escalation = raw.get("escalation") or []
    if not isinstance(escalation, list) or not all(
        isinstance(n, str) and _ACCOUNT.match(n) for n in escalation
    ):
        raise bad("escalation", f"{escalation!r}: a list of account names, such as [kasubkor]")
    lang = raw.get("lang", DEFAULT)
    if lang not in LANGS:
        raise bad("lang", f"{lang!r}: one of {', '.join(LANGS)}")
    retry = number("retry_seconds", 60, 0.1, 86400)
    return MailSettings(
        smtp_host=host,
        smtp_port=port,
        security=security,
        sender=formataddr((name, address)),
        base_url=base_url,
        user=user,
        password_file=password_file,
        escalation=tuple(dict.fromkeys(escalation)),
        lang=lang,
        interval_seconds=number("interval_seconds", 30, 0.05, 3600),
        retry_seconds=retry,
        retry_max_seconds=number("retry_max_seconds", 3600, retry, 7 * 86400),
        timeout_seconds=number("timeout_seconds", 30, 1, 300),
    )


def _password_file(value: str | None, bad: Any) -> Path | None:
    """The password's file: absolute, a regular file, readable by its owner alone."""
    if value is None:
        return None
    path = Path(value)
    if not path.is_absolute():
        raise bad("password_file", f"{value!r} is not an absolute path")
    try:
        info = path.stat()
    except OSError as exc:
        raise bad("password_file", f"{value}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise bad("password_file", f"{value} is not a file")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise bad(
            "password_file",
            f"{value} has mode {stat.S_IMODE(info.st_mode):04o}: only the service may read it (chmod 600)",
        )
    return path


# ---------------------------------------------------------------- what each mail says


def N_(message: str) -> str:  # gettext's name for "mark now, translate when shown"
    return message


@dataclass(frozen=True)
class Mail:
    """One kind of mail: who hears of it (a role, 'requester' or 'escalation'), its subject,
    what happened and what the recipient does next. Placeholders: {request_id}, {skpd},
    {actor}, and those the event fills in."""

    to: str
    subject: str
    happened: str
    next: str


# The steps that send mail, and to whom; one table (the outbox reads who from `to`).
MAILS: Final[dict[str, Mail]] = {
    "filed": Mail(
        "receiver",
        N_("[pulih] {request_id}: a new data recovery request from {skpd}"),
        N_("{actor} filed data recovery request {request_id} for SKPD {skpd}."),
        N_("Receive the request in the desk and pass it on to an approver."),
    ),
    "received": Mail(
        "approver",
        N_("[pulih] {request_id}: awaits your approval"),
        N_("{actor} received data recovery request {request_id} of SKPD {skpd}."),
        N_(
            "Approve or reject the request in the desk. A rejection needs its reason: the requester "
            "is told it."
        ),
    ),
    "approved": Mail(
        "requester",
        N_("[pulih] {request_id}: approved"),
        N_("{actor} approved your data recovery request {request_id}. The approval holds until {expires}."),
        N_(
            "Nothing yet: the data-center staff assess the damage, check the backups and plan the "
            "restore. You get a mail when the restore has run."
        ),
    ),
    "rejected": Mail(
        "requester",
        N_("[pulih] {request_id}: rejected"),
        N_("{actor} rejected your data recovery request {request_id}. The reason: {reason}"),
        N_("Read the reason. If the data still needs recovering, file a new request that answers it."),
    ),
    "planned": Mail(
        "operator",
        N_("[pulih] {request_id}: planned, ready to restore"),
        N_("{actor} planned the restore of request {request_id} of SKPD {skpd}."),
        N_("Run the restore as planned: pulih restore --request {request_id}."),
    ),
    "executed": Mail(
        "requester",
        N_("[pulih] {request_id}: the restore has run"),
        N_("The data-center staff ran the restore of your request {request_id}: {outcome}."),
        N_("Check your data, then confirm the result in the desk, or say there what is not restored."),
    ),
}
OVERDUE: Final = Mail(
    "escalation",
    N_("[pulih] {request_id}: overdue after '{step}'"),
    N_(
        "Request {request_id} of SKPD {skpd} has been '{step}' since {since}, longer than the SOP's "
        "standard time of {minutes} minutes for its next step ({next_steps})."
    ),
    N_("Follow the request up with the {role} whose turn it is."),
)
ROLE_NAMES: Final = {
    "requester": N_("requester (SKPD)"),
    "receiver": N_("receiver"),
    "approver": N_("approver"),
    "operator": N_("data-center staff (operator)"),
}
OUTCOMES: Final = {
    "succeeded": N_("it succeeded"),
    "failed": N_("it failed, and the staff try again"),
    "interrupted": N_("it was interrupted, and the staff run it again"),
}
LABELS: Final = {
    "request": N_("Request"),
    "skpd": N_("SKPD"),
    "items": N_("Data"),
    "status": N_("Status"),
    "reason": N_("Reason"),
    "backups": N_("Backups"),
    "window": N_("When"),
    "details": N_("Details"),
}


def translate(lang: str, message: str) -> str:
    return CATALOG.gettext(lang, message)


def compose(
    mail: Mail,
    *,
    lang: str,
    recipient: str,
    link: str,
    values: dict[str, str],
    facts: Sequence[tuple[str, str]],
) -> tuple[str, str]:
    """(subject, body) of `mail` for `recipient` (an account's name), in `lang`. `facts`:
    (LABELS key, value) lines about the request. The placeholders are filled from `values`;
    what a person wrote is only ever a value, never a template."""

    def t(message: str) -> str:
        return translate(lang, message)

    subject = t(mail.subject).format(**values)
    shown = [(t(LABELS[key]) + ":", value) for key, value in facts if value]
    width = max((len(label) for label, _ in shown), default=0)
    lines = [t(N_("Dear {name},")).format(name=recipient), "", t(mail.happened).format(**values), ""]
    lines += [f"{label:<{width}} {value}" for label, value in shown]
    lines += ["", t(N_("What to do next:")) + " " + t(mail.next).format(**values), ""]
    lines += [t(N_("Open the request:")) + " " + link, "", "-- "]
    lines += [t(N_("This mail was sent by pulih, the data center's recovery service. Do not reply to it."))]
    return subject, "\n".join(lines) + "\n"

"""Mail from the outbox, to a real SMTP server (aiosmtpd) started by each test on loopback: the
SOP's steps mail the right people in Indonesian with the request's link; a server that refuses
for a while gets the mail in the end, each failure on the outbox row; an overdue step is told
to the escalation accounts once; an account without an address is a skipped row; no secret (the
SMTP password, a session's token) is in a mail, the outbox listing or a log.

The service's own app and store, driven in-process (as tests/integration/test_gate_api.py
does), with the outbox's `deliver_due(now)` and `check_overdue(now)` called directly; one test
runs `pulih serve` itself, whose sender thread delivers, and `pulih admin outbox`."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import logging
import os
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from fastapi.testclient import TestClient

from pulih.client import Via, call
from pulih.requests import Requests, load_config
from pulih.service.accounts import Accounts
from pulih.service.app import create_app
from pulih.service.outbox import Outbox, Sender
from pulih.store import SCHEMA_VERSION, Store, outbox_table
from tests.conftest import PROJECT
from tests.integration import test_record as record_tests
from tests.integration.client import Service, connects, free_port, wait_until

# A login in the clear is the test's own choice (loopback); aiosmtpd warns of it.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
SMTP_PASSWORD = "smtp-Rahasia-7c1e9f"  # the test's own server's
LINK = "https://pulih.example.go.id/desk/requests/"
ITEM = {"asset_id": "DC-SRV-2023-001", "item": "simpeg"}  # bkpsdm's, in the example register
# name: (roles, SKPDs, e-mail, token scopes)
PEOPLE: dict[str, tuple[list[str], list[str], str | None, list[str]]] = {
    "ani": (["requester"], ["bkpsdm"], "ani@bkpsdm.example.go.id", ["request", "read"]),
    "sri": (["receiver"], [], "sri@diskominfo.example.go.id", ["approve", "read"]),
    "tono": (["receiver"], ["dinkes"], "tono@dinkes.example.go.id", ["approve", "read"]),  # another SKPD's
    "kabid": (["approver"], [], "kabid@diskominfo.example.go.id", ["approve", "read"]),
    "budi": (["operator"], [], "budi@diskominfo.example.go.id", ["restore", "read"]),
    "wati": (["operator"], [], "wati@diskominfo.example.go.id", ["restore", "read"]),
    "eko": (["operator"], [], None, ["restore", "read"]),  # no address
    "kasubkor": (["auditor"], [], "kasubkor@diskominfo.example.go.id", ["read"]),  # the sub-coordinator
}


class Inbox:
    """An SMTP server's handler: keeps what it takes; refuses the first `refuse` mails with a 4xx."""

    def __init__(self) -> None:
        self.refuse = 0
        self.refused = 0
        self.raw: list[bytes] = []
        self.mails: list[EmailMessage] = []
        self.logins: list[bytes] = []

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        if self.refuse > 0:
            self.refuse -= 1
            self.refused += 1
            return "451 4.3.0 mailbox busy, try again later"
        self.raw.append(envelope.original_content or envelope.content)
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        assert list(envelope.rcpt_tos) == [parsed["To"]]  # one recipient a mail
        self.mails.append(parsed)
        return "250 OK"

    def authenticate(
        self, _server: Any, _session: Any, _envelope: Any, _mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            b"pulih",
            SMTP_PASSWORD.encode(),
        )
        if ok:
            self.logins.append(data.login)
        return AuthResult(success=ok, handled=False)

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.mails if m["To"] == address]


@pytest.fixture
def smtp():
    """A mail server on 127.0.0.1 that wants a login (in the clear: loopback only)."""
    inbox = Inbox()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=inbox.authenticate,
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield inbox, controller.port
    finally:
        controller.stop()


def mail_section(port: int, secret: Path, **more: Any) -> str:
    section = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "security": "none",
        "user": "pulih",
        "password_file": str(secret),
        "from": "pulih <pulih@diskominfo.example.go.id>",
        "base_url": "https://pulih.example.go.id/",
        "escalation": ["kasubkor", "nobody"],
        "retry_seconds": 60,
        "retry_max_seconds": 90,
        **more,
    }
    return "mail:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in section.items())


class Office:
    """The service's app on a fresh SQLite store, its people with tokens, the record's clock."""

    def __init__(self, tmp_path: Path, port: int, **mail: Any) -> None:
        self.password_file = tmp_path / "smtp-password"
        self.password_file.write_text(SMTP_PASSWORD + "\n")
        self.password_file.chmod(0o600)
        (tmp_path / "config.yml").write_text(
            "approval_validity_hours: 24\n" + mail_section(port, self.password_file, **mail)
        )
        self.config = load_config(tmp_path / "config.yml")
        self.clock = record_tests.Clock()
        self.store = Store.at_path(tmp_path / "pulih.db")
        self.accounts = Accounts(self.store)
        self.accounts.add("test", "root", roles=["admin"])
        self.tokens = {
            "root": self.accounts.create_token(
                "root", "root", scopes=["admin", "read"], expires_in=dt.timedelta(days=1)
            )[0]
        }
        for name, (roles, skpds, address, scopes) in PEOPLE.items():
            self.accounts.add("root", name, roles=roles, skpds=skpds, email=address)
            self.tokens[name] = self.accounts.create_token(
                "root", name, scopes=scopes, expires_in=dt.timedelta(days=1)
            )[0]
        self.app = create_app(
            self.store, register=PROJECT / "inventories" / "example", config=self.config, clock=self.clock
        )
        self.outbox: Outbox = self.app.state.outbox
        self.client = TestClient(self.app)

    def call(self, actor: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.client.request(
            method, f"/v1{path}", json=body, headers={"Authorization": f"Bearer {self.tokens[actor]}"}
        )
        assert response.is_success, response.text
        return response.json()

    def file(self) -> str:
        body = {"skpd": "bkpsdm", "contact": "ani@bkpsdm.example.go.id", "reason": "error", "scope": [ITEM]}
        body["reason_text"] = "tabel pegawai terhapus"
        rid: str = self.call("ani", "POST", "/requests", body)["id"]
        return rid

    def step(self, actor: str, rid: str, path: str, body: dict[str, Any] | None = None) -> None:
        self.clock.at += dt.timedelta(seconds=30)
        self.call(actor, "POST", f"/requests/{rid}/{path}", body or {})

    def planned(self) -> str:
        rid = self.file()
        self.step("sri", rid, "receive")
        self.step("kabid", rid, "approve", {"valid_hours": 24})
        self.step("budi", rid, "assess", {"data_exists": True, "damage": "error"})
        self.step("budi", rid, "check-backups", {"query": False})
        plan = {"backups": {"DC-SRV-2023-001:simpeg": "20261120T020000Z-0000"}, "window": "malam ini"}
        self.step("budi", rid, "plan", {**plan, "query": False, "unverified": "test: no repository"})
        return rid

    def executed(self, rid: str) -> None:
        """The restore job's step (pulih.service.restores records it so)."""
        requests = Requests(
            self.store,
            self.config,
            self.clock,
            roles_of=lambda name: set(self.accounts.get(name).roles),
            on_step=self.outbox.on_step,
        )
        requests.executed(
            "budi", rid, outcome="succeeded", note="attempt 1 of 3, run R1: DC-SRV-2023-001:simpeg restored"
        )

    def deliver(self) -> dict[str, int]:
        return self.outbox.deliver_due(self.clock())

    def listing(self, **query: str) -> list[dict[str, Any]]:
        path = "/admin/outbox" + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
        rows: list[dict[str, Any]] = self.call("root", "GET", path)["mails"]
        return rows

    def close(self) -> None:
        self.client.close()
        self.store.engine.dispose()


@pytest.fixture
def office(tmp_path, smtp):
    made = Office(tmp_path, smtp[1])
    try:
        yield made
    finally:
        made.close()


def text(mail: EmailMessage) -> str:
    body = mail.get_body(("plain",))
    assert body is not None
    content: str = body.get_content()
    return content.replace("\r\n", "\n")  # as it came over SMTP


def test_each_step_mails_the_people_whose_turn_it_is_in_indonesian_with_its_link(office, smtp):
    inbox, _port = smtp
    rid = office.file()
    assert office.deliver() == {"sent": 1, "failed": 0}
    (filed,) = inbox.mails
    assert filed["To"] == "sri@diskominfo.example.go.id"  # not tono: his SKPD is another
    assert filed["From"] == "pulih <pulih@diskominfo.example.go.id>"
    assert filed["Subject"] == f"[pulih] {rid}: permintaan pemulihan data baru dari bkpsdm"
    body = text(filed)
    assert body.startswith("Yth. sri,\n")
    assert f"ani mengajukan permintaan pemulihan data {rid} untuk SKPD bkpsdm." in body
    assert "Data:       DC-SRV-2023-001:simpeg" in body and "Status:     diajukan" in body
    assert "Yang perlu Anda lakukan: Terima permintaan ini di meja layanan" in body
    assert f"Buka permintaan: {LINK}{rid}\n" in body
    assert inbox.logins == [b"pulih"]

    office.step("sri", rid, "receive")
    office.deliver()
    (received,) = inbox.to("kabid@diskominfo.example.go.id")
    assert received["Subject"] == f"[pulih] {rid}: menunggu persetujuan Anda"
    assert "Setujui atau tolak permintaan ini" in text(received) and LINK + rid in text(received)

    office.step("kabid", rid, "approve", {"valid_hours": 24})
    office.deliver()
    (approved,) = inbox.to("ani@bkpsdm.example.go.id")
    assert approved["Subject"] == f"[pulih] {rid}: disetujui"
    assert f"kabid menyetujui permintaan pemulihan data Anda {rid}" in text(approved)
    assert "Persetujuan berlaku sampai 2026-11-22 08:01 UTC." in text(approved)

    office.step("budi", rid, "assess", {"data_exists": True, "damage": "error"})
    office.step("budi", rid, "check-backups", {"query": False})
    plan = {"backups": {"DC-SRV-2023-001:simpeg": "20261120T020000Z-0000"}, "window": "malam ini"}
    office.step("budi", rid, "plan", {**plan, "query": False, "unverified": "test: no repository"})
    office.deliver()
    (planned,) = inbox.to("wati@diskominfo.example.go.id")  # budi planned it; eko has no address
    assert planned["Subject"] == f"[pulih] {rid}: sudah direncanakan, siap dipulihkan"
    assert "Cadangan:   DC-SRV-2023-001:simpeg \u2190 20261120T020000Z-0000" in text(planned)
    assert "Waktu:      malam ini" in text(planned)
    assert f"pulih restore --request {rid}" in text(planned)
    assert not inbox.to("budi@diskominfo.example.go.id")

    office.executed(rid)
    office.deliver()
    ran = inbox.to("ani@bkpsdm.example.go.id")[-1]
    assert ran["Subject"] == f"[pulih] {rid}: pemulihan telah dijalankan"
    assert f"menjalankan pemulihan untuk permintaan Anda {rid}: berhasil." in text(ran)
    assert "konfirmasikan hasilnya di meja layanan" in text(ran) and LINK + rid in text(ran)

    rejected = office.file()
    office.step("sri", rejected, "receive")
    office.step("kabid", rejected, "reject", {"reason": "bukan data yang dicadangkan"})
    office.deliver()
    told = inbox.to("ani@bkpsdm.example.go.id")[-1]
    assert told["Subject"] == f"[pulih] {rejected}: ditolak"
    assert "Alasannya: bukan data yang dicadangkan" in text(told)
    assert "Alasan:     bukan data yang dicadangkan" in text(told)

    # Every mail a mail of its own, to one person; nobody mailed twice for one event.
    assert len(inbox.mails) == 8  # the rejected request's filing and receipt too
    assert len({m["Message-ID"] for m in inbox.mails}) == 8
    rows = office.listing()
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert [(r["request_id"], r["event"], r["account"], r["recipient"]) for r in skipped] == [
        (rid, "planned", "eko", None)
    ]
    assert skipped[0]["last_error"] == "account eko has no e-mail address"
    assert {r["status"] for r in rows} == {"sent", "skipped"}
    assert all(r["attempts"] == 1 and r["sent_at"] for r in rows if r["status"] == "sent")
    assert "body" not in rows[0]


def test_english_when_the_config_says_so(tmp_path, smtp):
    inbox, port = smtp
    office = Office(tmp_path, port, lang="en")
    try:
        rid = office.file()
        office.deliver()
        (mail,) = inbox.mails
        assert mail["Subject"] == f"[pulih] {rid}: a new data recovery request from bkpsdm"
        assert text(mail).startswith("Dear sri,\n") and f"Open the request: {LINK}{rid}" in text(mail)
    finally:
        office.close()


def test_a_server_that_refuses_for_a_while_gets_the_mail_in_the_end_with_each_failure_recorded(office, smtp):
    inbox, _port = smtp
    inbox.refuse = 3
    rid = office.file()
    start = office.clock()
    assert office.deliver() == {"sent": 0, "failed": 1}
    (row,) = office.listing(status="failed")
    assert row["request_id"] == rid and row["attempts"] == 1
    assert row["last_error"] == "SMTPDataError: 451 4.3.0 mailbox busy, try again later"
    assert row["next_attempt_at"] == "2026-11-21T08:01:00Z"  # 60 s later
    assert office.deliver() == {"sent": 0, "failed": 0}  # not due yet: nothing is tried

    waits = []
    while not inbox.mails:
        office.clock.at = dt.datetime.fromisoformat(
            office.listing()[0]["next_attempt_at"].replace("Z", "+00:00")
        )
        office.deliver()
        waits.append((office.clock() - start).total_seconds())
    assert waits == [60, 150, 240]  # 60, then doubled but capped at 90
    assert inbox.refused == 3 and len(inbox.mails) == 1
    (sent,) = office.listing()
    assert (sent["status"], sent["attempts"], sent["sent_at"]) == ("sent", 4, "2026-11-21T08:04:00Z")
    assert office.deliver() == {"sent": 0, "failed": 0}  # sent once, never again


def test_a_wrong_password_and_a_server_without_starttls_are_failures_on_the_row_never_mail_in_the_clear(
    tmp_path, smtp
):
    inbox, port = smtp
    office = Office(tmp_path, port)
    try:
        office.password_file.write_text("not-the-password-4d1a\n")
        office.file()
        office.deliver()
        (row,) = office.listing(status="failed")
        assert row["last_error"].startswith("SMTPAuthenticationError: 535")
        assert "not-the-password-4d1a" not in json.dumps(office.listing())
    finally:
        office.close()
    (tmp_path / "starttls").mkdir()
    office = Office(tmp_path / "starttls", port, security="starttls", user=None, password_file=None)
    try:
        office.file()
        office.deliver()
        (row,) = office.listing(status="failed")
        assert row["last_error"].startswith("SMTPNotSupportedError: STARTTLS extension not supported")
        assert inbox.mails == []
    finally:
        office.close()


def test_an_overdue_step_is_mailed_to_the_escalation_accounts_once(office, smtp):
    inbox, _port = smtp
    rid = office.file()  # procedure A: received within 1 minute of the filing
    office.deliver()
    filed_at = office.clock()
    assert office.outbox.check_overdue(filed_at + dt.timedelta(seconds=50)) == 0
    assert office.outbox.check_overdue(filed_at + dt.timedelta(minutes=2)) == 1
    assert office.outbox.check_overdue(filed_at + dt.timedelta(minutes=30)) == 0  # once
    office.clock.at = filed_at + dt.timedelta(minutes=30)
    office.deliver()
    (overdue,) = inbox.to("kasubkor@diskominfo.example.go.id")
    assert overdue["Subject"] == f"[pulih] {rid}: terlambat setelah 'diajukan'"
    body = text(overdue)
    assert f"Permintaan {rid} dari SKPD bkpsdm berstatus 'diajukan' sejak 2026-11-21 08:00 UTC" in body
    assert "waktu baku SOP 1 menit untuk langkah berikutnya (diterima)" in body
    assert "Tindak lanjuti permintaan ini bersama penerima" in body and LINK + rid in body
    rows = [r for r in office.listing() if r["event"] == "overdue"]
    assert {(r["account"], r["status"], r["step"]) for r in rows} == {
        ("kasubkor", "sent", "filed"),
        ("nobody", "skipped", "filed"),  # the config names an account that does not exist
    }
    assert next(r for r in rows if r["account"] == "nobody")["last_error"] == "there is no account nobody"

    # The next step late is another step: told once more; a step in time is not.
    office.step("sri", rid, "receive")  # received 30.5 minutes after the filing
    received_at = office.clock()
    assert office.outbox.check_overdue(received_at + dt.timedelta(minutes=1)) == 0
    assert office.outbox.check_overdue(received_at + dt.timedelta(minutes=3)) == 1
    assert office.outbox.check_overdue(received_at + dt.timedelta(hours=5)) == 0
    office.clock.at = received_at + dt.timedelta(hours=5)
    office.deliver()
    late = inbox.to("kasubkor@diskominfo.example.go.id")
    assert len(late) == 2 and late[1]["Subject"] == f"[pulih] {rid}: terlambat setelah 'diterima'"
    assert "(disetujui / ditolak)" in text(late[1]) and "pemberi persetujuan" in text(late[1])


def test_no_secret_is_in_a_mail_the_outbox_listing_or_the_log(office, smtp, caplog):
    caplog.set_level(logging.INFO, logger="pulih")
    inbox, _port = smtp
    office.accounts.add("root", "dewi", roles=["requester"], skpds=["bkpsdm"], password="dewi-sandi-3b8f0a2c")
    login = office.client.post("/v1/login", json={"name": "dewi", "password": "dewi-sandi-3b8f0a2c"})
    secrets = [SMTP_PASSWORD, "dewi-sandi-3b8f0a2c", login.json()["token"], *office.tokens.values()]
    inbox.refuse = 1  # a failed attempt too: its error is on the row and in the log
    rid = office.planned()
    office.executed(rid)
    for _ in range(3):
        office.clock.at += dt.timedelta(minutes=5)
        office.outbox.check_overdue(office.clock())
        office.deliver()
    assert len(inbox.mails) >= 5 and inbox.refused == 1
    listing = office.client.get(
        "/v1/admin/outbox", headers={"Authorization": f"Bearer {office.tokens['root']}"}
    ).text
    with office.store.engine.connect() as conn:
        stored = json.dumps([dict(r) for r in conn.execute(sa.select(outbox_table)).mappings()])
    assert "attempt 1 failed" in caplog.text and "sent" in caplog.text
    for secret in secrets:
        for where, seen in (("a mail", b"".join(inbox.raw).decode()), ("the listing", listing)):
            assert secret not in seen, where
        assert secret not in stored and secret not in caplog.text
    assert "password" not in listing  # not even where the password is kept


def test_the_sender_thread_delivers_and_stops(tmp_path, smtp):
    inbox, port = smtp
    office = Office(tmp_path, port, interval_seconds=0.05)
    try:
        office.file()
        sender = Sender(office.outbox)  # the real clock: the record's mails are long due
        sender.start()
        try:
            wait_until("the sender's delivery", lambda: len(inbox.mails) >= 1, deadline=30)
        finally:
            sender.stop()
        assert not sender._thread.is_alive()
        assert inbox.mails[0]["To"] == "sri@diskominfo.example.go.id"
    finally:
        office.close()


def test_an_event_written_again_never_mails_twice(office, smtp):
    inbox, _port = smtp
    rid = office.file()
    with pytest.raises(sa.exc.IntegrityError), office.store.transaction() as conn:
        office.outbox.on_step(conn, rid)  # the filing's mails, a second time
    office.deliver()
    assert len(inbox.mails) == 1


def test_a_version_7_store_is_upgraded_with_an_empty_outbox_that_steps_then_fill(tmp_path, smtp):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = Store(url, upgrade=False)
    old.upgrade(to=7)
    assert old.version() == 7
    with old.transaction() as conn:  # as a version 7 service added her (without later columns)
        conn.execute(
            sa.text(
                "INSERT INTO pulih_accounts (name, email, roles, skpds, disabled, created_at) "
                "VALUES ('sri', 'sri@diskominfo.example.go.id', '[\"receiver\"]', '[]', false, "
                "'2026-11-01T00:00:00Z')"
            )
        )
    old.engine.dispose()
    upgraded = Store(url)
    assert upgraded.version() == SCHEMA_VERSION
    with upgraded.engine.connect() as conn:
        assert sa.inspect(conn).has_table("pulih_outbox")
        assert conn.execute(sa.select(sa.func.count()).select_from(outbox_table)).scalar() == 0
    assert Accounts(upgraded).get("sri").email == "sri@diskominfo.example.go.id"
    assert upgraded.verify_audit() == []
    upgraded.engine.dispose()


@pytest.mark.parametrize(
    "address",
    [
        "ani@localhost",
        "ani bkpsdm@example.go.id",
        "ani@example.go.id\r\nBcc: everyone@example.go.id",
        "ani@example.go.id\x00",
        "ani@@example.go.id",
        ".ani@example.go.id",
        "ani@-example.go.id",
        "",
        "Ani <ani@example.go.id>",
    ],
)
def test_an_account_s_address_is_a_plain_one(office, address):
    response = office.client.post(
        "/v1/admin/users",
        json={"name": "baru", "roles": ["requester"], "skpds": ["bkpsdm"], "email": address},
        headers={"Authorization": f"Bearer {office.tokens['root']}"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["id"] == "account.email"


def test_a_plain_address_is_taken(office):
    doc = office.call(
        "root",
        "POST",
        "/admin/users",
        {"name": "baru", "roles": ["requester"], "email": "ani.s+pulih@bkpsdm.example.go.id"},
    )
    assert doc["email"] == "ani.s+pulih@bkpsdm.example.go.id"


def test_the_outbox_is_for_admins_only(office):
    response = office.client.get(
        "/v1/admin/outbox", headers={"Authorization": f"Bearer {office.tokens['sri']}"}
    )
    assert response.status_code == 403
    response = office.client.get(
        "/v1/admin/outbox?status=lost", headers={"Authorization": f"Bearer {office.tokens['root']}"}
    )
    assert response.status_code == 400 and "pending, failed, sent, skipped" in response.text


# --------------------------------------------------------------------------- pulih serve itself


class LoggedService(Service):
    """A Service whose standard error (the sender's log) is kept in a file."""

    def start(self, **environ: str) -> None:
        (self.state / "pulih.sock").unlink(missing_ok=True)
        self.log = self.state.with_name(self.state.name + ".log")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "pulih"), "serve", "--state", str(self.state)],
                env={**os.environ, **environ},
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd="/",
            )
        wait_until("the service's socket", lambda: connects(self.state / "pulih.sock"))


@pytest.mark.skipif(os.geteuid() != 0, reason="pulih serve --init runs as root")
def test_pulih_serve_s_sender_delivers_and_pulih_admin_outbox_shows_it(tmp_path, smtp):
    inbox, port = smtp
    password_file = tmp_path / "smtp-password"
    password_file.write_text(SMTP_PASSWORD + "\n")
    password_file.chmod(0o600)
    settings = mail_section(port, password_file, interval_seconds=0.2, escalation=[])
    service = LoggedService(PROJECT / "inventories" / "example", settings, people={})
    try:
        service.init()
        service.admin("admin", "user", "add", "ani", "--role", "requester", "--skpd", "bkpsdm")
        service.admin(
            "admin", "user", "add", "sri", "--role", "receiver", "--email", "sri@diskominfo.example.go.id"
        )
        refused = subprocess.run(
            ["pulih", "admin", "user", "add", "x", "--role", "receiver", "--email", "x@localhost"],
            capture_output=True,
            text=True,
            env=service.environ(),
            check=False,
        )
        assert refused.returncode == 2 and "e-mail 'x@localhost' is not an address" in refused.stderr
        token = service.admin("admin", "token", "create", "ani", "--scope", "request").stdout.strip()
        body = {"skpd": "bkpsdm", "contact": "ani", "reason": "error", "scope": [ITEM]}
        rid = call("POST", "/requests", body, via=Via(service.server, token))["id"]
        wait_until("the mail", lambda: len(inbox.mails) == 1, deadline=60)
        assert inbox.mails[0]["Subject"] == f"[pulih] {rid}: permintaan pemulihan data baru dari bkpsdm"
        wait_until("the row sent", lambda: '"sent"' in service.admin("admin", "outbox", "--json").stdout)
        doc = json.loads(service.admin("admin", "outbox", "--json").stdout)
        filed = [(m["account"], m["status"]) for m in doc["mails"] if m["event"] == "filed"]
        assert filed == [("sri", "sent")]
        assert doc["mail"]["smtp_port"] == port and "password_file" not in doc["mail"]
        shown = service.admin("admin", "outbox")
        assert "sri <sri@diskominfo.example.go.id>" in shown.stdout and "sent" in shown.stdout
        assert f"127.0.0.1:{port} (none)" in shown.stderr
    finally:
        service.remove()
        log = service.log.read_text()
        service.log.unlink()
    assert f"(filed of {rid}) sent" in log
    assert SMTP_PASSWORD not in log and token not in log

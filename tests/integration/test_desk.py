"""The desk over HTTP, as its users' browsers reach it: a real pulih serve listening on
loopback, accounts with passwords, forms posted as a browser posts them. The SOP's first
steps go through it (file, receive, a refused self-approval, approve, reject), and every
attempt to do more than one's role and SKPD allow, or to post a form the desk did not give,
is refused and leaves the record as it was. Needs root (the service's account)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pyotp
import pytest

from pulih.client import Via, call
from tests.conftest import PROJECT
from tests.integration import desk
from tests.integration.client import PULIH, Service, free_port
from tests.integration.desk import act, add_people, browser, csrf, login, password

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs the service's account")

# name: (roles, SKPDs)
PEOPLE = {
    "dewi": (["requester"], ["bkpsdm"]),
    "tono": (["requester"], ["dinkes"]),
    "sri": (["receiver", "approver"], []),
    "kabid": (["approver"], []),
    "budi": (["operator"], []),
    "rita": (["auditor"], []),
    "lupa": (["requester"], ["bkpsdm"]),
    "ana": (["admin"], []),
}


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    svc = Service(PROJECT / "inventories" / "example", people={}, listen=f"127.0.0.1:{free_port()}")
    try:
        svc.init()
        add_people(svc, PEOPLE)
        # The office wants the one who received a request not to approve it.
        svc.admin("admin", "policy", "set", "--distinct", "receiver,approver")
        yield svc
    finally:
        svc.remove()


def as_root(service: Service, path: str) -> Any:
    """The record as the admin on the socket sees it (the kernel says root)."""
    return call("GET", path, via=Via(service.server))


def file_request(page: httpx.Client, reason_text: str = "tabel pegawai terhapus") -> str:
    return desk.file_request(page, "bkpsdm", ["DC-SRV-2023-001:simpeg"], reason_text)


def test_pages_are_sent_with_a_policy_that_allows_no_script_and_session_cookies_no_script_can_read(service):
    page = browser(service)
    shown = page.get("/desk/login")
    policy = shown.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy
    assert "frame-ancestors 'none'" in policy and "form-action 'self'" in policy
    assert shown.headers["x-content-type-options"] == "nosniff"
    assert shown.headers["cache-control"] == "no-store"
    pre = re.search(r'name="pre" value="([^"]+)"', shown.text)
    assert pre
    done = page.post("/desk/login", data={"name": "dewi", "password": password("dewi"), "pre": pre.group(1)})
    cookie = next(c for c in done.headers.get_list("set-cookie") if c.startswith("pulih_desk="))
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "samesite=strict", "path=/desk"} <= flags, cookie
    assert "secure" not in flags  # plain HTTP on loopback; behind HTTPS it is Secure
    assert password("dewi") not in done.text and password("dewi") not in str(done.headers)


def test_the_sop_first_steps_through_the_desk_in_indonesian(service):
    dewi, sri, kabid = login(service, "dewi"), login(service, "sri"), login(service, "kabid")
    request_id = file_request(dewi)
    shown = dewi.get(f"/desk/requests/{request_id}")
    assert 'data-status="filed"' in shown.text and "diajukan" in shown.text
    assert "Data yang dipulihkan" in shown.text and "DC-SRV-2023-001:simpeg" in shown.text

    inbox = sri.get("/desk/requests")
    row = re.search(rf'<tr class="yours">\s*<td><a href="/desk/requests/{request_id}">', inbox.text)
    assert row, "the new request is in the receiver's inbox, marked as their turn"
    assert act(sri, request_id, "receive", note="berkas lengkap").status_code == 303

    refused = act(sri, request_id, "approve", note="saya setujui sendiri")
    assert refused.status_code == 403
    assert "Catatan menolak langkah ini." in refused.text and "different people" in refused.text
    assert as_root(service, f"/requests/{request_id}")["status"] == "received"

    approved = act(kabid, request_id, "approve", valid_hours="24", note="segera")
    assert approved.status_code == 303 and approved.headers["location"].endswith("?done=approved")
    doc = as_root(service, f"/requests/{request_id}")
    assert doc["status"] == "approved" and doc["approved_by"] == "kabid"
    steps = [(s["step"], s["actor"], s["role"]) for s in doc["steps"]]
    assert steps == [
        ("filed", "dewi", "requester"),
        ("received", "sri", "receiver"),
        ("approved", "kabid", "approver"),
    ]
    timing = dewi.get(f"/desk/requests/{request_id}")
    assert "Waktu baku (menit)" in timing.text and "disetujui" in timing.text
    form = dewi.get(f"/desk/requests/{request_id}/form/ppd")
    assert form.status_code == 200 and request_id in form.text and "kabid" in form.text

    rejected_id = file_request(dewi, "salah ketik")
    assert act(sri, rejected_id, "receive").status_code == 303
    assert act(kabid, rejected_id, "reject", reason="bukan data yang dicadangkan").status_code == 303
    shown = dewi.get(f"/desk/requests/{rejected_id}")
    assert "ditolak" in shown.text and "bukan data yang dicadangkan" in shown.text


def test_no_one_does_more_than_their_role_and_skpd_allow_and_the_record_stays_as_it_was(service):
    dewi, tono = login(service, "dewi"), login(service, "tono")
    budi, rita, sri = login(service, "budi"), login(service, "rita"), login(service, "sri")
    request_id = file_request(dewi)
    assert act(sri, request_id, "receive").status_code == 303
    before = as_root(service, f"/requests/{request_id}")

    other = tono.get(f"/desk/requests/{request_id}")
    assert other.status_code == 403 and "tabel pegawai" not in other.text and "dewi" not in other.text
    assert request_id not in tono.get("/desk/requests").text
    assert tono.get(f"/desk/requests/{request_id}/form/ppd").status_code == 403

    assert act(dewi, request_id, "approve").status_code == 403  # a requester approving
    assert act(budi, request_id, "approve").status_code == 403  # an operator approving
    for action, fields in [("approve", {}), ("reject", {"reason": "x"}), ("close", {}), ("confirm", {})]:
        assert act(rita, request_id, action, **fields).status_code == 403, action  # an auditor
    assert rita.get("/desk/requests/new").status_code == 403

    forged = dewi.post(f"/desk/requests/{request_id}/confirm", data={"note": "tanpa token"})
    assert forged.status_code == 403 and "Formulir kedaluwarsa" in forged.text
    someone_elses = csrf(tono, "/desk/requests")
    assert dewi.post(f"/desk/requests/{request_id}/confirm", data={"csrf": someone_elses}).status_code == 403
    new_form = browser(service)
    assert (
        new_form.post("/desk/login", data={"name": "dewi", "password": password("dewi")}).status_code == 403
    )

    assert as_root(service, f"/requests/{request_id}") == before


def test_a_wrong_password_is_refused_and_five_of_them_stop_the_account_s_logins_for_a_while(service):
    page = browser(service)
    for attempt in range(6):
        shown = page.get("/desk/login")
        pre = re.search(r'name="pre" value="([^"]+)"', shown.text)
        assert pre
        secret = password("lupa") if attempt == 5 else f"salah-{attempt}"
        done = page.post("/desk/login", data={"name": "lupa", "password": secret, "pre": pre.group(1)})
        if attempt < 5:
            assert done.status_code == 403 and "Nama akun, kata sandi atau kode salah" in done.text
        else:  # the right password, after five wrong ones: still refused
            assert done.status_code == 429 and "Terlalu banyak kata sandi salah" in done.text
        assert secret not in done.text
    assert "pulih_desk=" not in " ".join(done.headers.get_list("set-cookie"))


def test_the_desk_speaks_english_on_the_switch_and_never_redirects_off_the_desk(service):
    page = login(service, "dewi")
    switched = page.get("/desk/lang/en", params={"back": "/desk/requests/new"})
    assert switched.status_code == 303 and switched.headers["location"] == "/desk/requests/new"
    shown = page.get("/desk/requests/new")
    assert "Request (Form PPD)" in shown.text and '<html lang="en">' in shown.text
    for elsewhere in ("https://example.org/", "//example.org/desk/", "/v1/whoami"):
        assert page.get("/desk/lang/id", params={"back": elsewhere}).headers["location"] == "/desk/"
    assert '<html lang="id">' in page.get("/desk/requests").text


def test_logging_out_revokes_the_session_s_token(service):
    page = login(service, "dewi")
    token = page.cookies.get("pulih_desk", path="/desk")
    assert token
    out = page.post("/desk/logout", data={"csrf": csrf(page, "/desk/requests")})
    assert out.status_code == 303 and out.headers["location"] == "/desk/login"
    stolen = browser(service)
    stolen.cookies.set("pulih_desk", token, path="/desk")
    assert stolen.get("/desk/requests").headers["location"] == "/desk/login"
    with pytest.raises(Exception, match="revoked"):
        call("GET", "/whoami", via=Via(f"http://{service.listen}", token))


def shown_once(page: httpx.Response) -> str:
    """The new password the admin page shows once."""
    found = re.search(r'id="new-password".*?<code>([^<]+)</code>', page.text, re.S)
    assert found, page.text
    return found.group(1)


def logged_out(page: httpx.Client) -> bool:
    went = page.get("/desk/requests")
    return went.status_code == 303 and went.headers["location"] == "/desk/login"


def test_an_auditor_reads_the_runs_and_the_audit_log_and_checks_it_but_changes_nothing(service):
    rita, dewi, ana = login(service, "rita"), login(service, "dewi"), login(service, "ana")
    log = rita.get("/desk/audit")
    assert log.status_code == 200 and 'id="audit"' in log.text
    assert "<code>login</code>" in log.text and "Log audit" in log.text  # Indonesian by default
    checked = rita.post("/desk/audit/verify", data={"csrf": csrf(rita, "/desk/audit")})
    assert checked.status_code == 200 and 'data-status="intact"' in checked.text, checked.text
    run_id = re.search(r'href="/desk/runs/([^"]+)"', checked.text)
    assert run_id, checked.text
    runs = rita.get("/desk/runs")
    assert runs.status_code == 200 and run_id.group(1) in runs.text
    assert "pemeriksaan log audit" in runs.text
    report = rita.get(f"/desk/runs/{run_id.group(1)}")
    assert report.status_code == 200 and run_id.group(1) in report.text

    # A requester reads neither; an auditor administers nothing; a forged form changes nothing.
    for path in ("/desk/audit", "/desk/runs", "/desk/admin"):
        assert dewi.get(path).status_code == 403, path
    assert rita.get("/desk/admin").status_code == 403
    users_before = as_root(service, "/admin/users")
    assert (
        rita.post(
            "/desk/admin/users",
            data={"csrf": csrf(rita, "/desk/account"), "name": "siluman", "roles": ["admin"]},
        ).status_code
        == 403
    )
    assert (
        rita.post("/desk/admin/users/dewi/disable", data={"csrf": csrf(rita, "/desk/account")}).status_code
        == 403
    )
    assert ana.post("/desk/admin/users/dewi/disable", data={}).status_code == 403  # no CSRF token
    assert as_root(service, "/admin/users") == users_before


def test_an_admin_adds_an_account_whose_owner_changes_the_password_shown_once_and_resets_end_sessions(
    service,
):
    ana = login(service, "ana")
    added = ana.post(
        "/desk/admin/users",
        data={
            "csrf": csrf(ana, "/desk/admin"),
            "name": "wati",
            "roles": ["requester"],
            "skpds": "bkpsdm",
            "email": "wati@bkpsdm.contoh.go.id",
        },
    )
    assert added.status_code == 200, added.text
    first = shown_once(added)
    again = ana.get("/desk/admin").text
    assert first not in again  # shown once, never again
    assert 'id="outbox"' in again and "Surel belum diatur" in again  # no mail: section here
    account = next(u for u in as_root(service, "/admin/users")["users"] if u["name"] == "wati")
    assert account["roles"] == ["requester"] and account["skpds"] == ["bkpsdm"]

    wati, elsewhere = login(service, "wati", first), login(service, "wati", first)
    form = csrf(wati, "/desk/account")
    wrong = wati.post(
        "/desk/account/password",
        data={"csrf": form, "current": "bukan-ini-123", "new": "x" * 12, "again": "x" * 12},
    )
    assert wrong.status_code == 403 and "Kata sandi saat ini salah" in wrong.text
    differ = wati.post(
        "/desk/account/password",
        data={"csrf": form, "current": first, "new": "kata-sandi-baru-wati", "again": "kata-sandi-lain-wati"},
    )
    assert differ.status_code == 400 and "berbeda" in differ.text
    short = wati.post(
        "/desk/account/password", data={"csrf": form, "current": first, "new": "pendek", "again": "pendek"}
    )
    assert short.status_code == 400 and "paling sedikit 12 karakter" in short.text
    changed = wati.post(
        "/desk/account/password",
        data={"csrf": form, "current": first, "new": "kata-sandi-baru-wati", "again": "kata-sandi-baru-wati"},
    )
    assert changed.status_code == 200 and 'id="changed"' in changed.text, changed.text
    assert logged_out(elsewhere) and not logged_out(wati)  # her other session ended, this one not
    with pytest.raises(AssertionError):
        login(service, "wati", first)
    login(service, "wati", "kata-sandi-baru-wati")

    reset = ana.post("/desk/admin/users/wati/password", data={"csrf": csrf(ana, "/desk/admin")})
    assert reset.status_code == 200
    second = shown_once(reset)
    assert logged_out(wati)  # a reset ends every session of the account
    login(service, "wati", second)
    own = ana.post("/desk/admin/users/ana/password", data={"csrf": csrf(ana, "/desk/admin")})
    assert own.status_code == 400  # an admin changes their own password with the current one

    disabled = ana.post("/desk/admin/users/wati/disable", data={"csrf": csrf(ana, "/desk/admin")})
    assert disabled.status_code == 200
    with pytest.raises(AssertionError):
        login(service, "wati", second)

    # No password is on any page of the record, nor in the audit log itself.
    log = ana.get("/desk/audit").text + str(as_root(service, "/audit?limit=1000"))
    for secret in (first, second, "kata-sandi-baru-wati"):
        assert secret not in log
    assert "password_changed" in log and "password_reset" in log


def test_an_admin_sets_the_policy_on_the_desk(service):
    ana = login(service, "ana")
    before = as_root(service, "/admin/policy")
    assert before["distinct"] == [["receiver", "approver"]]
    try:
        saved = ana.post(
            "/desk/admin/policy",
            data={
                "csrf": csrf(ana, "/desk/admin"),
                "signed_approvals": "none",
                "distinct": ["receiver,approver", "approver,operator"],
            },
        )
        assert saved.status_code == 200, saved.text
        assert sorted(as_root(service, "/admin/policy")["distinct"]) == [
            ["approver", "operator"],
            ["receiver", "approver"],
        ]
        assert 'value="approver,operator" checked' in saved.text
    finally:
        service.admin("admin", "policy", "set", "--distinct", "receiver,approver")
    assert as_root(service, "/admin/policy")["distinct"] == before["distinct"]


def test_an_approver_is_offered_the_repository_s_backups_and_a_requester_is_not(service):
    dewi, sri, kabid = login(service, "dewi"), login(service, "sri"), login(service, "kabid")
    request_id = file_request(dewi, "daftar gaji terhapus")
    assert act(sri, request_id, "receive").status_code == 303
    assert 'id="show-backups"' in kabid.get(f"/desk/requests/{request_id}").text
    assert 'id="show-backups"' not in dewi.get(f"/desk/requests/{request_id}").text
    # Asked anyway, the service refuses a requester the repository (before reading it).
    token = dewi.cookies.get("pulih_desk", path="/desk")
    with pytest.raises(Exception, match="reads the steps, not the repository"):
        call("GET", f"/requests/{request_id}/backups", via=Via(f"http://{service.listen}", token))
    shown = dewi.get(f"/desk/requests/{request_id}?backups=1")
    assert shown.status_code == 200 and 'id="backups"' not in shown.text


def test_the_cli_resets_and_changes_passwords_and_a_token_alone_never_sets_a_first_one(service):
    add_people(service, {"joko": (["auditor"], [])})

    def pulih(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PULIH, *args], input=stdin, text=True, capture_output=True, env=service.environ(), check=False
        )

    reset = pulih("admin", "user", "reset-password", "joko", "--json")
    assert reset.returncode == 0, reset.stderr
    new = json.loads(reset.stdout)["password"]
    joko = login(service, "joko", new)
    with pytest.raises(AssertionError):
        login(service, "joko")  # the password before the reset

    # Over the socket the kernel vouches: root's account (no password yet) sets a first one.
    first = pulih("password", "--stdin", "--json", stdin="\nsandi-admin-pertama-2026\n")
    assert first.returncode == 0, first.stderr
    login(service, json.loads(first.stdout)["name"], "sandi-admin-pertama-2026")
    wrong = pulih("password", "--stdin", "--json", stdin="salah-sama-sekali\nsandi-admin-kedua-2026\n")
    refusal = json.loads(wrong.stdout)
    assert wrong.returncode == refusal["exit_code"] == 3 and "current password is wrong" in refusal["message"]

    # A token never buys a password: without the current one it is refused.
    token = joko.cookies.get("pulih_desk", path="/desk")
    with pytest.raises(Exception, match="current password"):
        call(
            "POST", "/password", {"new": "sandi-dari-token-2026"}, via=Via(f"http://{service.listen}", token)
        )
    login(service, "joko", new)


def test_the_forms_come_as_pdf_from_the_desk_for_those_who_may_read_the_request(service, tmp_path):
    dewi, tono = login(service, "dewi"), login(service, "tono")
    request_id = file_request(dewi, "arsip surat hilang")
    page = dewi.get(f"/desk/requests/{request_id}")
    assert f'href="/desk/requests/{request_id}/form/ppd.pdf"' in page.text
    pdf = dewi.get(f"/desk/requests/{request_id}/form/ppd.pdf")
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-")
    (tmp_path / "ppd.pdf").write_bytes(pdf.content)
    text = subprocess.run(
        ["pdftotext", str(tmp_path / "ppd.pdf"), "-"], capture_output=True, text=True, check=True
    ).stdout
    assert request_id in text and "dewi" in text and "Pemohon" in text
    other = tono.get(f"/desk/requests/{request_id}/form/ppd.pdf")
    assert other.status_code == 403 and not other.content.startswith(b"%PDF")
    assert dewi.get(f"/desk/requests/{request_id}/form/xyz.pdf").status_code == 404


def refused_login(service: Service, name: str, code: str | None = None) -> str:
    page = browser(service)
    pre = re.search(r'name="pre" value="([^"]+)"', page.get("/desk/login").text)
    assert pre
    fields = {"name": name, "password": password(name), "pre": pre.group(1), "totp": code or ""}
    done = page.post("/desk/login", data=fields)
    assert done.status_code == 403, done.text
    return done.text


def test_a_second_factor_is_set_up_with_a_code_each_code_logs_in_once_and_an_admin_turns_it_off(service):
    add_people(service, {"tari": (["approver"], [])})
    tari, ana = login(service, "tari"), login(service, "ana")
    offered = tari.post("/desk/account/totp/offer", data={"csrf": csrf(tari, "/desk/account")})
    found = re.search(r'id="totp-secret">([A-Z2-7]{32})<', offered.text)
    assert offered.status_code == 200 and found, offered.text
    secret, totp = found.group(1), pyotp.TOTP(found.group(1))
    form = csrf(tari, "/desk/account")
    wrong = tari.post("/desk/account/totp/enable", data={"csrf": form, "secret": secret, "code": "000000"})
    if totp.verify("000000", valid_window=1):  # one in a few hundred thousand: try another
        wrong = tari.post(
            "/desk/account/totp/enable", data={"csrf": form, "secret": secret, "code": "999999"}
        )
    assert wrong.status_code == 403 and "Kode salah" in wrong.text
    assert not as_root(service, "/admin/users/tari")["totp"]
    on = tari.post("/desk/account/totp/enable", data={"csrf": form, "secret": secret, "code": totp.now()})
    assert on.status_code == 200 and 'id="totp-done"' in on.text, on.text
    assert as_root(service, "/admin/users/tari")["totp"]
    assert secret not in str(as_root(service, "/audit?limit=1000"))

    # The password alone is refused, with the answer a wrong password gets: it says nothing
    # of whether the password was right.
    assert "Nama akun, kata sandi atau kode salah" in refused_login(service, "tari")
    # The code of the next 30 s (clock drift is allowed one step) logs in, once.
    upcoming = totp.at(time.time() + 30)
    login(service, "tari", fields={"totp": upcoming})
    refused_login(service, "tari", upcoming)

    # Lost phone: the admin turns it off, and the password alone logs in again.
    off = ana.post("/desk/admin/users/tari/totp-reset", data={"csrf": csrf(ana, "/desk/admin")})
    assert off.status_code == 200, off.text
    assert not as_root(service, "/admin/users/tari")["totp"]
    login(service, "tari")
    assert "totp_enabled" in str(as_root(service, "/audit?limit=1000"))


def test_an_admin_changes_an_account_s_roles_and_skpds_but_never_the_last_admin_s(service):
    add_people(service, {"yuni": (["requester"], ["bkpsdm"])})
    ana = login(service, "ana")
    changed = ana.post(
        "/desk/admin/roles",
        data={
            "csrf": csrf(ana, "/desk/admin"),
            "name": "yuni",
            "roles": ["requester", "auditor"],
            "skpds": "dinkes",
        },
    )
    assert changed.status_code == 200, changed.text
    yuni = as_root(service, "/admin/users/yuni")
    assert yuni["roles"] == ["requester", "auditor"] and yuni["skpds"] == ["dinkes"]
    assert login(service, "yuni").get("/desk/audit").status_code == 200  # the next login: an auditor

    # ana and root are the admins; ana may not take root's admin role and then her own.
    root = next(u["name"] for u in as_root(service, "/admin/users")["users"] if u["unix_user"] == "root")
    no_admin = {"csrf": csrf(ana, "/desk/admin"), "roles": ["auditor"], "skpds": ""}
    assert ana.post("/desk/admin/roles", data={**no_admin, "name": root}).status_code == 200
    try:
        last = ana.post("/desk/admin/roles", data={**no_admin, "name": "ana"})
        assert last.status_code == 403 and "administrator terakhir" in last.text
        as_ana = Via(f"http://{service.listen}", ana.cookies.get("pulih_desk", path="/desk"))
        assert call("GET", "/admin/users/ana", via=as_ana)["roles"] == ["admin"]
    finally:  # root's admin role back, from ana (root, no admin now, cannot)
        back = {"csrf": csrf(ana, "/desk/admin"), "name": root, "roles": ["admin"], "skpds": ""}
        assert ana.post("/desk/admin/roles", data=back).status_code == 200
    assert as_root(service, f"/admin/users/{root}")["roles"] == ["admin"]
    assert "account_roles_set" in str(as_root(service, "/audit?limit=1000"))


def test_a_backup_request_is_filed_with_its_letter_and_approved_by_an_acting_approver(service):
    import datetime as dt
    import hashlib

    dewi, sri = login(service, "dewi"), login(service, "sri")
    letter = b"%PDF-1.4\n% Surat permohonan pencadangan SIMPEG\n%%EOF\n"
    token = csrf(dewi, "/desk/requests/new")
    done = dewi.post(
        "/desk/requests",
        data={
            "csrf": token,
            "kind": "backup",
            "skpd": "bkpsdm",
            "items": ["DC-SRV-2023-001:simpeg"],
            "reason": "migration",
            "reason_text": "sebelum pindah server",
            "contact": "0812-0000-1111",
        },
        files={"letter": ("surat permohonan.pdf", letter, "application/pdf")},
    )
    assert done.status_code == 303, done.text
    request_id = re.match(r"^/desk/requests/([A-Za-z0-9-]+)\?done=filed$", done.headers["location"]).group(1)
    doc = as_root(service, f"/requests/{request_id}")
    assert doc["kind"] == "backup" and doc["procedure"] == "backup_restore" and doc["target"] == {}
    (attached,) = doc["letters"]
    assert attached["sha256"] == hashlib.sha256(letter).hexdigest()
    shown = dewi.get(f"/desk/requests/{request_id}")
    assert 'data-kind="backup"' in shown.text and "Data yang dicadangkan" in shown.text
    assert "Pulihkan ke" not in shown.text  # a backup has no target
    served = dewi.get(f"/desk/requests/{request_id}/letter/{attached['id']}")
    assert served.status_code == 200 and served.content == letter
    assert (
        served.headers["content-type"] == "application/pdf"
        and "sandbox" in served.headers["content-security-policy"]
    )
    # Not a PDF nor an image: refused by its content, whatever its name says.
    token = csrf(dewi, f"/desk/requests/{request_id}")
    forged = dewi.post(
        f"/desk/requests/{request_id}/letter",
        data={"csrf": token},
        files={"letter": ("surat.pdf", b"<html><script>alert(1)</script>", "application/pdf")},
    )
    assert forged.status_code == 400 and "PDF, PNG or JPEG" in forged.text
    assert len(as_root(service, f"/requests/{request_id}")["letters"]) == 1

    # Kabid is away: an admin names budi Plh. until tomorrow; budi approves on the desk.
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    granted = service.admin(
        "delegation", "grant", "--for", "kabid", "--to", "budi", "--until", until, "--reason", "SPT 800/7"
    )
    assert granted.returncode == 0, granted.stderr
    assert act(sri, request_id, "receive").status_code == 303
    budi = login(service, "budi")
    approved = act(budi, request_id, "approve", note="a.n. Kabid")
    assert approved.status_code == 303, approved.text
    page = dewi.get(f"/desk/requests/{request_id}")
    assert "Plh. budi a.n. kabid" in page.text
    ended = service.admin("delegation", "list", "--json")
    (delegation,) = [d for d in json.loads(ended.stdout) if d["delegate"] == "budi"]
    service.admin("delegation", "end", str(delegation["id"]))
    assert act(login(service, "budi"), request_id, "revoke", reason="x").status_code == 403

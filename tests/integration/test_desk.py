"""The desk over HTTP, as its users' browsers reach it: a real pulih serve listening on
loopback, accounts with passwords, forms posted as a browser posts them. The SOP's first
steps go through it (file, receive, a refused self-approval, approve, reject), and every
attempt to do more than one's role and SKPD allow, or to post a form the desk did not give,
is refused and leaves the record as it was. Needs root (the service's account)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pulih.client import Via, call
from tests.conftest import PROJECT
from tests.integration import desk
from tests.integration.client import Service, free_port
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
            assert done.status_code == 403 and "Nama akun atau kata sandi salah" in done.text
        else:  # the right password, after five wrong ones: still refused
            assert done.status_code == 429 and "Terlalu banyak kata sandi salah" in done.text
        assert secret not in done.text
    assert "pulih_desk=" not in " ".join(done.headers.get_list("set-cookie"))


def test_the_desk_speaks_english_on_the_switch_and_never_redirects_off_the_desk(service):
    page = login(service, "dewi")
    switched = page.get("/desk/lang/en", params={"back": "/desk/requests/new"})
    assert switched.status_code == 303 and switched.headers["location"] == "/desk/requests/new"
    shown = page.get("/desk/requests/new")
    assert "Data recovery request (Form PPD)" in shown.text and '<html lang="en">' in shown.text
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

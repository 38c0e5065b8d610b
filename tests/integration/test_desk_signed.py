"""Signed approvals from the browser: under a policy that wants every approval signed, an
approver on the desk downloads the approval's statement, signs it on their own machine with
real `ssh-keygen -Y sign` (the private key never reaches the service) and sends the statement
and its .sig with the approve form. Unsigned, signed by another key, over another statement,
or with files that cannot be those: each refused in Indonesian, the record as it was. Against
a real pulih serve on loopback, as test_desk.py. Needs root (the service's account)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pulih.client import Via, call
from pulih.signing import NAMESPACE, canonical
from tests.conftest import PROJECT
from tests.integration import desk
from tests.integration.client import Service, free_port
from tests.integration.desk import add_people, browser, csrf, login

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs the service's account")

# name: (roles, SKPDs)
PEOPLE = {
    "dewi": (["requester"], ["bkpsdm"]),
    "sri": (["receiver"], []),
    "kabid": (["approver"], []),  # signs with a registered key
    "kadis": (["approver"], []),  # has no key registered
    "rita": (["auditor"], []),
}
UNSIGNED_REFUSED = "Kebijakan kantor mewajibkan persetujuan ini ditandatangani dengan kunci SSH Anda"
BAD_SIGNATURE = "Tanda tangan tidak sah"
NOT_THIS_STATEMENT = "Pernyataan yang ditandatangani bukan milik persetujuan ini"


@dataclass(frozen=True)
class Office:
    service: Service
    key: Path  # kabid's private key, on "his own machine" (registered: its .pub)
    stranger: Path  # a key registered to nobody
    fingerprint: str  # of kabid's key, as the service registered it


@pytest.fixture(scope="module")
def office(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Office]:
    keys = tmp_path_factory.mktemp("keys")
    for name in ("kabid", "stranger"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@laptop", "-f", str(keys / name)],
            check=True,
        )
    svc = Service(PROJECT / "inventories" / "example", people={}, listen=f"127.0.0.1:{free_port()}")
    try:
        svc.init()
        add_people(svc, PEOPLE)
        svc.admin("admin", "policy", "set", "--signed-approvals", "all", "--distinct", "receiver,approver")
        added = svc.admin(
            "admin", "user", "key", "add", "kabid", "--key-file", str(keys / "kabid.pub"), "--json"
        )
        yield Office(svc, keys / "kabid", keys / "stranger", json.loads(added.stdout)["fingerprint"])
    finally:
        svc.remove()


def as_root(office: Office, path: str) -> Any:
    """The record as the admin on the socket sees it (the kernel says root)."""
    return call("GET", path, via=Via(office.service.server))


def received(office: Office, reason_text: str) -> str:
    """A request filed by the requester and received by the receiver: the approver's turn."""
    dewi, sri = login(office.service, "dewi"), login(office.service, "sri")
    request_id = desk.file_request(dewi, "bkpsdm", ["DC-SRV-2023-001:simpeg"], reason_text)
    assert desk.act(sri, request_id, "receive", note="berkas lengkap").status_code == 303
    return request_id


def download(page: httpx.Client, request_id: str, **query: str) -> bytes:
    got = page.get(f"/desk/requests/{request_id}/statement", params=query)
    assert got.status_code == 200, got.text
    assert got.headers["content-disposition"] == f'attachment; filename="{request_id}-statement.json"'
    return got.content


def sign(statement: bytes, key: Path, folder: Path, name: str) -> str:
    """What the approver does on their own machine: the command the request page shows."""
    (folder / name).write_bytes(statement)
    subprocess.run(
        ["ssh-keygen", "-Y", "sign", "-q", "-f", str(key), "-n", NAMESPACE, name], cwd=folder, check=True
    )
    return (folder / f"{name}.sig").read_text()


def approve(
    page: httpx.Client, request_id: str, statement: bytes = b"", signature: bytes = b"", **fields: str
) -> httpx.Response:
    """The approve form as a browser posts it: multipart, a file input left empty sent as an
    empty part without a file name."""
    token = csrf(page, f"/desk/requests/{request_id}")
    files = {
        "statement": (f"{request_id}-statement.json" if statement else "", statement, "application/json"),
        "signature": (f"{request_id}-statement.json.sig" if signature else "", signature, "text/plain"),
    }
    return page.post(f"/desk/requests/{request_id}/approve", data={"csrf": token, **fields}, files=files)


def test_an_approver_is_shown_how_to_sign_and_an_unsigned_approval_is_refused_in_indonesian(office):
    request_id = received(office, "tabel pegawai terhapus")
    kabid, dewi = login(office.service, "kabid"), login(office.service, "dewi")
    shown = kabid.get(f"/desk/requests/{request_id}").text
    assert 'id="signing"' in shown and "Unduh pernyataan" in shown
    assert f'action="/desk/requests/{request_id}/statement"' in shown
    command = f"ssh-keygen -Y sign -f ~/.ssh/id_ed25519 -n pulih-approval {request_id}-statement.json"
    assert command in shown and f"{request_id}-statement.json.sig" in shown
    assert 'id="act-approve" enctype="multipart/form-data"' in shown
    assert 'type="file" name="statement"' in shown and 'type="file" name="signature"' in shown
    assert 'id="signing"' not in dewi.get(f"/desk/requests/{request_id}").text  # not hers to approve

    before = as_root(office, f"/requests/{request_id}")
    refused = approve(kabid, request_id, valid_hours="24", note="segera")
    assert refused.status_code == 403
    assert UNSIGNED_REFUSED in refused.text and "wants a signed approval" in refused.text
    assert as_root(office, f"/requests/{request_id}") == before


def test_a_statement_signed_on_the_approver_s_own_machine_approves_the_request(office, tmp_path):
    request_id = received(office, "daftar gaji terhapus")
    kabid = login(office.service, "kabid")
    statement = download(kabid, request_id, valid_hours="24", note="segera, data gaji")
    doc = json.loads(statement)
    assert canonical(doc) == statement  # the exact bytes to sign
    assert (doc["request_id"], doc["approver"], doc["valid_hours"], doc["note"]) == (
        request_id,
        "kabid",
        24,
        "segera, data gaji",
    )
    # Anyone's login meanwhile moves the audit chain's head: fetched again, the statement is
    # other bytes than the ones signed, so the desk sends the file the approver signed.
    login(office.service, "rita")
    again = json.loads(download(kabid, request_id, valid_hours="24", note="segera, data gaji"))
    assert again["chain_head"] != doc["chain_head"]

    signature = sign(statement, office.key, tmp_path, f"{request_id}-statement.json")
    done = approve(kabid, request_id, statement, signature.encode())  # validity and note: the statement's
    assert done.status_code == 303, done.text
    assert done.headers["location"].endswith("?done=approved")

    record = as_root(office, f"/requests/{request_id}")
    assert record["status"] == "approved" and record["approved_by"] == "kabid"
    approval = record["approvals"][-1]
    assert approval["statement"] == statement.decode() and approval["signature"] == signature
    assert approval["key_fingerprint"] == office.fingerprint and approval["note"] == "segera, data gaji"
    valid = dt.datetime.fromisoformat(approval["expires_at"]) - dt.datetime.fromisoformat(approval["at"])
    assert valid == dt.timedelta(hours=24)
    # The signature on the record verifies offline with the approver's public key alone.
    signers = tmp_path / "allowed_signers"
    public = (office.key.parent / "kabid.pub").read_text().strip()
    signers.write_text(f'kabid namespaces="{NAMESPACE}" {public}\n')
    (tmp_path / "on-record.sig").write_text(approval["signature"])
    checked = subprocess.run(
        [
            "ssh-keygen",
            "-Y",
            "verify",
            "-f",
            signers,
            "-I",
            "kabid",
            "-n",
            NAMESPACE,
            "-s",
            tmp_path / "on-record.sig",
        ],
        input=approval["statement"].encode(),
        capture_output=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


def test_a_signature_not_the_approver_s_over_this_statement_is_refused_and_the_record_stays(office, tmp_path):
    request_id = received(office, "arsip surat hilang")
    other_id = received(office, "arsip lain hilang")
    kabid, kadis = login(office.service, "kabid"), login(office.service, "kadis")
    statement = download(kabid, request_id, note="setuju")
    before = as_root(office, f"/requests/{request_id}")

    def refused(
        page: httpx.Client, status: int, says: str, statement: bytes, signature: str, **fields: str
    ) -> None:
        answer = approve(page, request_id, statement, signature.encode(), **fields)
        assert answer.status_code == status and says in answer.text, answer.text
        assert as_root(office, f"/requests/{request_id}") == before

    stranger = sign(statement, office.stranger, tmp_path, "stranger.json")
    refused(kabid, 403, BAD_SIGNATURE, statement, stranger)
    other_note = download(kabid, request_id, note="setuju, tanpa syarat")
    refused(kabid, 403, BAD_SIGNATURE, statement, sign(other_note, office.key, tmp_path, "other-note.json"))
    replayed = download(kabid, other_id, note="setuju")  # another request's, properly signed
    refused(kabid, 403, NOT_THIS_STATEMENT, replayed, sign(replayed, office.key, tmp_path, "replay.json"))
    good = sign(statement, office.key, tmp_path, "good.json")
    refused(kabid, 403, NOT_THIS_STATEMENT, statement, good, note="catatan lain")  # not the note signed
    refused(kadis, 403, "Anda belum memiliki kunci tanda tangan", download(kadis, request_id), stranger)

    # Files that cannot be a statement and its signature: the desk refuses them itself.
    pretty = json.dumps(json.loads(statement), indent=2).encode()
    refused(kabid, 400, "Berkas pernyataan bukan berkas dari meja layanan ini", pretty, good)
    refused(kabid, 400, "Kirim kedua berkas", b"", good)
    refused(kabid, 400, "bukan tanda tangan SSH", statement, statement.decode())
    refused(kabid, 413, "Formulir terlalu besar", statement, good + "x" * 20_000)
    refused(kabid, 413, "Formulir terlalu besar", statement, good, note="x" * 70_000)
    assert as_root(office, f"/requests/{other_id}")["status"] == "received"


def test_the_statement_is_the_approver_s_and_needs_the_session(office):
    request_id = received(office, "data cuti terhapus")
    nobody = browser(office.service).get(f"/desk/requests/{request_id}/statement")
    assert nobody.status_code == 303 and nobody.headers["location"] == "/desk/login"
    dewi = login(office.service, "dewi")
    hers = dewi.get(f"/desk/requests/{request_id}/statement")
    assert hers.status_code == 403 and "pulih.approval/1" not in hers.text
    assert "content-disposition" not in hers.headers
    kabid = login(office.service, "kabid")
    assert (
        kabid.get(f"/desk/requests/{request_id}/statement", params={"valid_hours": "dua"}).status_code == 400
    )
    zero = kabid.get(f"/desk/requests/{request_id}/statement", params={"valid_hours": "0"})
    assert zero.status_code == 400 and "Persetujuan berlaku 1 sampai 720 jam." in zero.text


def test_without_a_signing_policy_the_approve_form_approves_unsigned_as_before(office):
    posted, browsed = received(office, "satu tabel terhapus"), received(office, "dua tabel terhapus")
    kabid = login(office.service, "kabid")
    try:
        office.service.admin("admin", "policy", "set", "--signed-approvals", "none")
        as_form = desk.act(kabid, posted, "approve", valid_hours="12", note="tanpa tanda tangan")
        assert as_form.status_code == 303, as_form.text  # urlencoded, as test_desk.py posts it
        as_browser = approve(kabid, browsed, valid_hours="12")  # multipart, both files left empty
        assert as_browser.status_code == 303, as_browser.text
    finally:
        office.service.admin("admin", "policy", "set", "--signed-approvals", "all")
    for request_id in (posted, browsed):
        approval = as_root(office, f"/requests/{request_id}")["approvals"][-1]
        assert approval["approver"] == "kabid" and approval["signature"] is None

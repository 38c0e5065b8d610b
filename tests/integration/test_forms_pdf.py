"""Forms PPD and PD as an office prints them: a request taken through its first steps (with an
approval signed by the approver's SSH key) on the service's own app, in-process; its forms
fetched as PDF through the API and the CLI, rasterized by poppler (`pdftoppm`) and read back
(`pdftotext`, `pdfinfo`): A4, no blank page, the office's letterhead and logo, the request's
number, its signers and the approval's key, in Indonesian unless English is asked for. And an
office whose logo is no usable image is refused when the config is loaded.

No lab: a SQLite store, the example register, and poppler-utils."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from pulih import signing
from pulih.requests import BadRequestInput, load_config
from pulih.service.accounts import Accounts
from pulih.service.app import create_app
from pulih.store import Store
from tests.conftest import PROJECT

OFFICE = "Dinas Komunikasi dan Informatika Kabupaten Contoh"
UNIT = "Bidang Persandian dan Statistik"
# name: (roles, SKPDs, token scopes)
PEOPLE = {
    "ani": (["requester"], ["bkpsdm"], ["request", "read"]),
    "tono": (["requester"], ["dinkes"], ["request", "read"]),
    "sri": (["receiver"], [], ["approve", "read"]),
    "kabid": (["approver"], [], ["approve", "read"]),
    "budi": (["operator"], [], ["restore", "read"]),
}
A4_POINTS = (595.28, 841.89)
DPI = 50
PULIH = str(Path(sys.executable).parent / "pulih")


def logo_png(size: int = 160) -> bytes:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    image.paste((12, 70, 150), (10, 10, size - 10, size - 10))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def write_config(folder: Path, office: str) -> Path:
    path = folder / "config.yml"
    path.write_text(f"approval_validity_hours: 24\n{office}", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """The service's app on a fresh store, its config naming the office and its logo; the SOP's
    people with tokens; kabid's SSH key registered for signed approvals."""
    folder = tmp_path_factory.mktemp("forms")
    (folder / "logo.png").write_bytes(logo_png())
    config = load_config(
        write_config(folder, f"office:\n  name: {OFFICE}\n  unit: {UNIT}\n  logo: {folder / 'logo.png'}\n")
    )
    store = Store.at_path(folder / "pulih.db")
    accounts = Accounts(store)
    accounts.add("test", "root", roles=["admin"])
    tokens = {}
    for name, (roles, skpds, scopes) in PEOPLE.items():
        accounts.add("root", name, roles=roles, skpds=skpds)
        tokens[name] = accounts.create_token("root", name, scopes=scopes, expires_in=dt.timedelta(days=2))[0]
    key = folder / "kabid"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kabid", "-f", str(key)], check=True)
    fingerprint = accounts.add_key("root", "kabid", (folder / "kabid.pub").read_text())["fingerprint"]
    # A second ahead of the key's registration (the chain's times are whole seconds).
    clock = lambda: dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=1)  # noqa: E731
    app = create_app(store, register=PROJECT / "inventories" / "example", config=config, clock=clock)
    with TestClient(app) as client:
        yield {"client": client, "app": app, "tokens": tokens, "key": key, "fingerprint": fingerprint}


def call(service, who: str, method: str, path: str, body: dict | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {service['tokens'][who]}"}
    return service["client"].request(method, f"/v1{path}", json=body, headers=headers)


def ok(response: httpx.Response) -> httpx.Response:
    assert response.is_success, response.text
    return response


@pytest.fixture(scope="module")
def request_id(service) -> str:
    """Filed by ani, received by sri, approved by kabid with his SSH key, assessed, its backups
    checked and planned by budi: both forms have something on every line."""
    filed = {
        "skpd": "bkpsdm",
        "contact": "ani@bkpsdm.example.go.id",
        "reason": "accidental_deletion",
        "reason_text": "tabel pegawai terhapus",
        "restore_point": "2026-11-20",
        "scope": [{"asset_id": "DC-SRV-2023-001", "item": "simpeg"}],
    }
    rid = ok(call(service, "ani", "POST", "/requests", filed)).json()["id"]
    ok(call(service, "sri", "POST", f"/requests/{rid}/receive", {"note": "berkas lengkap"}))
    statement = ok(call(service, "kabid", "GET", f"/requests/{rid}/statement?note=segera")).json()
    signature = signing.sign(signing.canonical(statement), service["key"])
    approval = {"note": "segera", "statement": statement, "signature": signature}
    approved = ok(call(service, "kabid", "POST", f"/requests/{rid}/approve", approval)).json()
    assert approved["approvals"][-1]["key_fingerprint"] == service["fingerprint"]
    work = (
        ("assess", {"data_exists": True, "damage": "accidental_deletion", "note": "tabel kosong"}),
        ("check-backups", {"query": False, "note": "diperiksa manual"}),
        (
            "plan",
            {
                "backups": {"DC-SRV-2023-001:simpeg": "20261120T020000Z-1a2b"},
                "window": "malam ini",
                "query": False,
                "unverified": "no repository in this test",
            },
        ),
    )
    for step, body in work:
        ok(call(service, "budi", "POST", f"/requests/{rid}/{step}", body))
    return rid


def pdf_of(service, rid: str, query: str, who: str = "ani") -> bytes:
    response = ok(call(service, who, "GET", f"/requests/{rid}/form?{query}&format=pdf"))
    assert response.headers["content-type"] == "application/pdf"
    assert response.content.startswith(b"%PDF-")
    return response.content


def pages_of(pdf: Path) -> list[tuple[int, int, bytes]]:
    """Each page rasterized in grey at DPI: (width, height, pixels), from pdftoppm's PGM files."""
    subprocess.run(["pdftoppm", "-gray", "-r", str(DPI), str(pdf), str(pdf.with_suffix(""))], check=True)
    pages = []
    for pgm in sorted(pdf.parent.glob(f"{pdf.stem}-*.pgm"), key=lambda p: int(p.stem.rsplit("-", 1)[1])):
        data = pgm.read_bytes()
        header = re.match(rb"P5\s+(\d+)\s+(\d+)\s+(\d+)\s", data)
        assert header and header.group(3) == b"255", data[:20]
        width, height = int(header.group(1)), int(header.group(2))
        pixels = data[header.end() :]
        assert len(pixels) == width * height
        pages.append((width, height, pixels))
    return pages


def inked(page: tuple[int, int, bytes], top_mm: float, bottom_mm: float) -> int:
    """Pixels darker than mid-grey between `top_mm` from the top and `bottom_mm` from the bottom."""
    width, height, pixels = page
    top, bottom = round(top_mm / 25.4 * DPI), height - round(bottom_mm / 25.4 * DPI)
    return sum(1 for value in pixels[top * width : bottom * width] if value < 128)


def text_of(pdf: Path) -> str:
    """The PDF's words in reading order (cell by cell), on one line: a cell's text may wrap."""
    read = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True)
    return " ".join(read.stdout.split())


def printed(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / f"{name}.pdf"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("form", ["ppd", "pd"])
def test_a_form_prints_on_a4_with_no_blank_page_in_indonesian_by_default(service, request_id, form, tmp_path):
    pdf = printed(tmp_path, form, pdf_of(service, request_id, f"form={form}"))
    info = subprocess.run(
        ["pdfinfo", "-f", "1", "-l", "99", str(pdf)], capture_output=True, text=True, check=True
    )
    sizes = re.findall(r"^Page\s+\d+ size:\s+([\d.]+) x ([\d.]+) pts", info.stdout, re.M)
    assert sizes, info.stdout
    for width, height in sizes:  # A4, every page
        assert abs(float(width) - A4_POINTS[0]) < 0.5 and abs(float(height) - A4_POINTS[1]) < 0.5, sizes
    assert f"Author:          {OFFICE}" in info.stdout

    pages = pages_of(pdf)
    assert len(pages) == len(sizes)
    for number, page in enumerate(pages, 1):
        width, height = page[0], page[1]
        assert abs(width - A4_POINTS[0] / 72 * DPI) <= 1 and abs(height - A4_POINTS[1] / 72 * DPI) <= 1, page[
            :2
        ]
        # Ink below the letterhead (page 1) or the top margin, above the footer's margin.
        assert inked(page, 45 if number == 1 else 16, 18) > 300, f"page {number} of {len(pages)} is blank"

    text = text_of(pdf)
    for word in [
        request_id,
        "ani",
        "sri",
        "kabid",
        OFFICE.upper(),
        UNIT,
        f"Nomor: {request_id}",
        "Tanda tangan",
    ]:
        assert word in text, word
    assert service["fingerprint"] in text.replace(" ", "")  # a key may break where its box ends
    title = (
        "FORMULIR PERMINTAAN PEMULIHAN DATA (FORM PPD)"
        if form == "ppd"
        else "FORMULIR PEMULIHAN DATA (FORM PD)"
    )
    assert title in text
    indonesian = ["Pemohon", "Penerima", "Pemberi persetujuan", "Waktu baku (menit)", "disetujui", "diterima"]
    indonesian += ["terhapus tidak sengaja", "Ditandatangani pemberi persetujuan dengan kunci SSH"]
    if form == "ppd":  # the approver signs Form PPD: his block names the key
        indonesian.append("Ditandatangani secara elektronik dengan kunci SSH")
    for word in indonesian:
        assert word in text, word
    for english in ("Requester", "Signatures", "approved", "requester", "accidental deletion", "pending"):
        assert english not in text, english
    if form == "pd":
        for word in [
            "budi",
            "Operator",
            "Apakah data masih ada?",
            "tabel kosong",
            "malam ini",
            "20261120T020000Z-1a2b",
        ]:
            assert word in text, word
    # The logo, embedded: the one image of the page.
    images = subprocess.run(
        ["pdfimages", "-list", str(pdf)], capture_output=True, text=True, check=True
    ).stdout
    assert len(images.strip().splitlines()) == 3, images  # two header lines and the logo


def test_english_on_request_and_the_html_is_the_same_page(service, request_id, tmp_path):
    text = text_of(printed(tmp_path, "en", pdf_of(service, request_id, "form=ppd&lang=en")))
    for word in ["DATA RECOVERY REQUEST FORM (FORM PPD)", "Signatures", "Approver", "Signed electronically"]:
        assert word in text, word
    html = ok(call(service, "ani", "GET", f"/requests/{request_id}/form?form=ppd")).text
    assert "@page" in html and "size: A4" in html and '<html lang="id">' in html
    assert 'src="data:image/png;base64,' in html and OFFICE in html


def test_the_pdf_is_refused_to_whom_the_html_is_and_a_bad_format_is_named(service, request_id):
    for query in ("form=ppd", "form=ppd&format=pdf"):
        other = call(service, "tono", "GET", f"/requests/{request_id}/form?{query}")
        assert (
            other.status_code == 403
            and f"there is no request {request_id!r}" in other.json()["error"]["message"]
        )
    bad = call(service, "ani", "GET", f"/requests/{request_id}/form?form=ppd&format=docx")
    assert bad.status_code == 400 and "format is html or pdf" in bad.json()["error"]["message"]


@contextlib.contextmanager
def listening(app):
    """The app on a loopback port, in a thread of this process (stopped when done)."""
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            threading.Event().wait(0.1)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def test_the_cli_writes_the_pdf_through_the_api(service, request_id, tmp_path):
    with listening(service["app"]) as url:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("PULIH_")}
        environ.update(PULIH_SERVER=url, PULIH_TOKEN=service["tokens"]["budi"])
        target = tmp_path / "out" / "form-pd.pdf"

        def pulih(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [PULIH, "request", "form", request_id, *args],
                capture_output=True,
                text=True,
                env=environ,
                check=False,
            )

        done = pulih("--form", "pd", "--pdf", str(target))
        assert done.returncode == 0 and done.stdout == "" and f"wrote {target}" in done.stderr, done.stderr
        assert target.read_bytes().startswith(b"%PDF-") and not list(target.parent.glob(".*.tmp"))
        assert "FORMULIR PEMULIHAN DATA (FORM PD)" in text_of(target)
        (tmp_path / "taken").mkdir()
        refused = pulih("--pdf", str(tmp_path / "taken"))
        assert refused.returncode == 1 and "cannot write" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr


# --------------------------------------------------------------------------- the office's config


def test_an_office_with_a_png_or_jpeg_logo_by_its_content_is_loaded(tmp_path):
    jpeg = tmp_path / "logo.png"  # named .png, a JPEG inside: the content says which
    Image.new("RGB", (40, 40), (0, 90, 0)).save(jpeg, "JPEG")
    config = load_config(write_config(tmp_path, f"office:\n  name: {OFFICE}\n  logo: {jpeg}\n"))
    assert config.office is not None and config.office.unit == "" and config.office.logo_type == "image/jpeg"
    assert (config.office.logo_uri or "").startswith("data:image/jpeg;base64,")
    assert load_config(write_config(tmp_path, "")).office is None


@pytest.mark.parametrize(
    ("office", "says"),
    [
        ("logo: {text}", "'office.logo': {text} is not a PNG or JPEG image (by its content)"),
        ("logo: {truncated}", "'office.logo': {truncated} is not a PNG or JPEG image (by its content)"),
        ("logo: {big}", "'office.logo': {big} is 600000 bytes; a logo is at most 512 KiB"),
        ("logo: logo.png", "'office.logo': 'logo.png' is not an absolute path to a PNG or JPEG file"),
        ("logo: {missing}", "'office.logo': {missing} cannot be read: No such file or directory"),
        ("logo: {folder}", "'office.logo': {folder} is not a file"),
        ("unit: x", "'office.name': the office's name is required"),
        ("logoo: x", "'office.logoo': unknown field (an office has name, unit, logo)"),
    ],
)
def test_an_office_whose_logo_is_no_usable_image_is_refused_when_loaded(tmp_path, office, says):
    files = {
        "text": tmp_path / "logo.txt",
        "truncated": tmp_path / "cut.png",
        "big": tmp_path / "big.png",
        "missing": tmp_path / "none.png",
        "folder": tmp_path,
    }
    files["text"].write_text("<svg>not an image pulih prints</svg>")
    files["truncated"].write_bytes(logo_png()[:200])  # PNG's magic bytes, then nothing whole
    files["big"].write_bytes(logo_png() + b"\0" * (600000 - len(logo_png())))
    name = "" if office.startswith("unit") else f"  name: {OFFICE}\n"
    path = write_config(tmp_path, f"office:\n{name}  {office.format(**files)}\n")
    with pytest.raises(BadRequestInput) as refused:
        load_config(path)
    assert str(refused.value).startswith(f"{path}: field ")
    assert says.format(**files) in str(refused.value)

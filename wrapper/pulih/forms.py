"""Form PPD (the data recovery request) and Form PD (the recovery work form), printed
from a request's record, in English or Indonesian."""

from __future__ import annotations

from typing import Any, Final

from jinja2 import Environment, PackageLoader, select_autoescape

from pulih.report import LANGS
from pulih.requests import STEPS as SOP_STEPS

__all__ = ["LANGS", "render"]

TEXT: Final[dict[str, dict[str, str]]] = {
    "en": {
        "ppd": "Data Recovery Request Form (Form PPD)",
        "pd": "Data Recovery Work Form (Form PD)",
        "request": "Request",
        "procedure": "Procedure",
        "status": "Status",
        "requester": "Requester",
        "skpd": "Agency (SKPD)",
        "contact": "Contact",
        "filed": "Filed",
        "scope": "Data to recover",
        "reason": "Reason",
        "restore_point": "Wanted restore point",
        "target": "Target",
        "decision": "Decision",
        "approved_by": "Approved by",
        "signed_with": "Signed by the approver with SSH key",
        "unsigned": "The approval is not signed",
        "valid_until": "Valid until",
        "rejected": "Rejected, reason",
        "pending": "pending",
        "assessment": "Assessment",
        "data_exists": "Does the data still exist?",
        "damage": "Damage",
        "yes": "yes",
        "no": "no",
        "backups": "Existing backups",
        "plan": "Plan",
        "window": "Window",
        "steps": "Record of the steps",
        "step": "Step",
        "who": "Who",
        "role": "Role",
        "when": "When (UTC)",
        "standard": "Standard time (min)",
        "actual": "Actual (min)",
        "overrun": "overrun",
        "note": "Note",
        "signatures": "Signatures",
        "recovery": "A — data recovery",
        "backup_restore": "B — backup / restore on request",
        "in_place": "in place",
        "alternate": "elsewhere",
        "none": "-",
        "demo": "DEMO: a demonstration store's form, whose people a script played; no real request",
    },
    "id": {
        "ppd": "Formulir Permintaan Pemulihan Data (Form PPD)",
        "pd": "Formulir Pemulihan Data (Form PD)",
        "request": "Permintaan",
        "procedure": "Prosedur",
        "status": "Status",
        "requester": "Pemohon",
        "skpd": "Perangkat Daerah (SKPD)",
        "contact": "Kontak",
        "filed": "Diajukan",
        "scope": "Data yang dipulihkan",
        "reason": "Alasan",
        "restore_point": "Titik pemulihan yang diminta",
        "target": "Tujuan",
        "decision": "Keputusan",
        "approved_by": "Disetujui oleh",
        "signed_with": "Ditandatangani penyetuju dengan kunci SSH",
        "unsigned": "Persetujuan tidak ditandatangani",
        "valid_until": "Berlaku sampai",
        "rejected": "Ditolak, alasan",
        "pending": "menunggu",
        "assessment": "Pemeriksaan",
        "data_exists": "Apakah data masih ada?",
        "damage": "Kerusakan",
        "yes": "ya",
        "no": "tidak",
        "backups": "Data pencadangan yang ada",
        "plan": "Rencana",
        "window": "Waktu pelaksanaan",
        "steps": "Catatan langkah",
        "step": "Langkah",
        "who": "Oleh",
        "role": "Peran",
        "when": "Waktu (UTC)",
        "standard": "Waktu baku (menit)",
        "actual": "Waktu nyata (menit)",
        "overrun": "melebihi",
        "note": "Catatan",
        "signatures": "Tanda tangan",
        "recovery": "A — pemulihan data",
        "backup_restore": "B — back-up / restore atas permohonan",
        "in_place": "di tempat",
        "alternate": "di tempat lain",
        "none": "-",
        "demo": "DEMO: formulir penyimpanan demonstrasi, pelakunya diperankan skrip; bukan permintaan nyata",
    },
}
# The steps' names come from the SOP's one table of steps.
STEPS: Final[dict[str, dict[str, str]]] = {
    lang: {spec.name: spec.label[lang] for spec in SOP_STEPS} for lang in LANGS
}
REASONS: Final[dict[str, dict[str, str]]] = {
    "en": {
        "disaster": "disaster",
        "error": "error",
        "accidental_deletion": "accidental deletion",
        "other": "other",
        "none": "none",
    },
    "id": {
        "disaster": "bencana",
        "error": "kesalahan (error)",
        "accidental_deletion": "terhapus tidak sengaja",
        "other": "lainnya",
        "none": "tidak ada",
    },
}

_ENV = Environment(loader=PackageLoader("pulih", "templates"), autoescape=select_autoescape(["html", "j2"]))


def render(request: dict[str, Any], form: str, lang: str, *, demo: bool = False) -> str:
    """Form 'ppd' or 'pd' of a request (as Requests.get returns it), in 'en' or 'id'; a demo
    store's form says so above everything else."""
    if form not in ("ppd", "pd") or lang not in LANGS:
        raise ValueError("form is ppd or pd, lang is en or id")
    return _ENV.get_template("form.html.j2").render(
        r=request, form=form, lang=lang, t=TEXT[lang], steps=STEPS[lang], reasons=REASONS[lang], demo=demo
    )

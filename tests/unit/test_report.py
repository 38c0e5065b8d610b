"""Run reports: a restore's report is valid against the schema and renders every section,
in both languages, with nothing of Python's own showing through."""

from __future__ import annotations

import json

import jsonschema
import pytest

from pulih import report as reports
from tests.conftest import PROJECT


def restore_report() -> reports.RunReport:
    report = reports.RunReport(kind="restore", command=["pulih", "restore"], request_id="PPD-2026-0001")
    report.gate = {
        "actor": "budi",
        "allowed": True,
        "at": "2026-11-21T10:00:00Z",
        "target": {"kind": "in_place"},
    }
    report.items = [
        {
            "host": "lab1",
            "asset_id": "LAB-001",
            "item": "app-pg",
            "engine": "postgresql",
            "ok": True,
            "backup_id": "20261121T020000Z-1a2b",
            "verification": {"ok": True, "checks": ["checksums", "row_counts after the swap"]},
            "restore": {
                "target_host": "lab1",
                "target": "app_lab1",
                "replaced": True,
                "pre_restore_backup_id": "20261121T101400Z-6727",
                "backup_started_at": "2026-11-21T02:00:00Z",
                "tries": 2,
                "history": ["connect: lab1 unreachable", "restored"],
            },
        }
    ]
    report.attempts = [
        {"attempt": 1, "status": "failed", "items": {"LAB-001:app-pg": "connect: lab1 unreachable"}},
        {"attempt": 2, "status": "succeeded", "items": {"LAB-001:app-pg": "restored"}},
    ]
    report.finish("succeeded", 0)
    return report


SECTIONS = {  # each section's heading, and the record's codes by their names
    "en": [
        *("Data items", "Restored", "Pre-restore backup (undo)", "Attempts", "Approval gate"),
        *("pulih — restore run", "succeeded (exit 0)", "connect: lab1 unreachable; restored"),
        "checksums, row counts after the swap",
    ],
    "id": [
        *("Data", "Dipulihkan", "Cadangan sebelum pemulihan", "Percobaan", "Gerbang persetujuan"),
        *(
            "pulih — pelaksanaan pemulihan",
            "berhasil (kode keluar 0)",
            "koneksi: lab1 unreachable; dipulihkan",
        ),
        *("checksum, jumlah baris sesudah penukaran", "diizinkan"),
    ],
}


@pytest.mark.parametrize(("lang", "words"), SECTIONS.items())
def test_a_restore_report_renders_every_section(lang, words):
    doc = restore_report().as_dict()
    jsonschema.validate(doc, json.loads((PROJECT / "schemas" / "run_report.schema.json").read_text()))
    html = reports.render_html(doc, lang)
    for word in [*words, "20261121T101400Z-6727"]:
        assert word in html, word
    assert "built-in method" not in html and "object at 0x" not in html
    assert "row_counts" not in html, "a check is shown by its name, not its code"
    if lang == "id":  # the record's codes in Indonesian; the JSON keeps them
        for code in ("succeeded", "restore run", "pelaksanaan restore", "restored", "swap"):
            assert code not in html, code
        assert doc["status"] == "succeeded" and doc["attempts"][1]["items"] == {"LAB-001:app-pg": "restored"}

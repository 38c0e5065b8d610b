"""Every string pulih prints (Forms PPD and PD, run reports) is in its Indonesian catalog,
translated: `pybabel extract` over the forms' and reports' code and templates, then each
message looked up in forms.po."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from pulih import forms, printing
from pulih import report as reports
from tests.conftest import PROJECT

PACKAGE = PROJECT / "wrapper" / "pulih"
CONFIG = PACKAGE / "locale" / "forms.babel.cfg"
PYBABEL = str(Path(sys.executable).parent / "pybabel")


def extracted(tmp_path: Path, source: Path = PACKAGE) -> list[str]:
    pot = tmp_path / "forms.pot"
    subprocess.run(
        [PYBABEL, "--quiet", "extract", "-F", str(CONFIG), "-k", "N_", "-o", str(pot), str(source)],
        check=True,
        capture_output=True,
    )
    with pot.open("rb") as f:
        return [str(m.id) for m in read_po(f) if m.id]


def catalog():
    with printing.CATALOG.path("id").open("rb") as f:
        return read_po(f, locale="id", domain="forms")


def untranslated(messages: list[str]) -> list[str]:
    found = catalog()
    return [m for m in messages if m not in found or not found[m].string or found[m].fuzzy]


def test_every_string_the_forms_and_reports_print_has_its_indonesian_translation(tmp_path):
    messages = extracted(tmp_path)
    assert len(messages) > 100  # the templates' and the codes' names, not an empty extraction
    titles = [names for names in forms.TITLES.values()]
    named = [
        *titles,
        forms.KINDS,
        forms.ROLES,
        forms.REASONS,
        reports.STATUSES,
        reports.CHECKS,
        reports.PHASES,
    ]
    assert {name for names in named for name in names.values()} <= set(messages)
    assert "Standard time (min)" in messages and "Pre-restore backup (undo)" in messages
    assert untranslated(messages) == []
    # Placeholders kept as they are (python-format), and nothing the code no longer says.
    assert [problem for _, problems in catalog().check() for problem in problems] == []
    assert sorted({str(m.id) for m in catalog() if m.id} - set(messages)) == []


def test_a_new_string_without_its_translation_is_found(tmp_path):
    source = tmp_path / "src"
    (source / "templates").mkdir(parents=True)
    (source / "templates" / "form.html.j2").write_text(
        '<p>{{ _("A form line nobody translated yet") }}</p>\n'
    )
    (source / "report.py").write_text('N_ = str\nKINDS = {"new": N_("a run kind nobody named yet")}\n')
    assert untranslated(extracted(tmp_path, source)) == [
        "a run kind nobody named yet",
        "A form line nobody translated yet",
    ]


@pytest.mark.parametrize("lang", ["id", "en"])
def test_the_catalog_loads_and_a_code_is_shown_by_its_name(lang):
    env = printing.environment(lang)
    shown = env.from_string("{{ _('Signatures') }}: {{ 'succeeded'|word(s) }}, {{ 'odd'|word(s) }}")
    assert (
        shown.render(s=reports.STATUSES)
        == {
            "id": "Tanda tangan: berhasil, odd",
            "en": "Signatures: succeeded, odd",
        }[lang]
    )


def test_a_code_of_the_record_is_escaped_like_any_value():
    env = printing.environment("id")
    assert env.from_string("{{ code|word(s) }}").render(code="<b>x</b>", s={}) == "&lt;b&gt;x&lt;/b&gt;"

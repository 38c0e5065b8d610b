"""Every string the desk shows is in its Indonesian catalog, translated: `pybabel extract`
over the desk's code and templates, then each message looked up in desk.po."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from pulih.desk import i18n, words
from tests.conftest import PROJECT

DESK = PROJECT / "wrapper" / "pulih" / "desk"
PYBABEL = str(Path(sys.executable).parent / "pybabel")


def extracted(tmp_path: Path, source: Path = DESK) -> list[str]:
    pot = tmp_path / "desk.pot"
    subprocess.run(
        [
            PYBABEL,
            "--quiet",
            "extract",
            "-F",
            str(DESK / "babel.cfg"),
            "-k",
            "N_",
            "-o",
            str(pot),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    with pot.open("rb") as f:
        return [str(m.id) for m in read_po(f) if m.id]


def untranslated(messages: list[str]) -> list[str]:
    with i18n.catalog_path("id").open("rb") as f:
        catalog = read_po(f, locale="id")
    return [m for m in messages if m not in catalog or not catalog[m].string or catalog[m].fuzzy]


def test_every_string_the_desk_shows_has_its_indonesian_translation(tmp_path):
    messages = extracted(tmp_path)
    assert len(messages) > 80  # the templates' and the refusals' strings, not an empty extraction
    assert set(words.REFUSALS.values()) <= set(messages)
    assert untranslated(messages) == []


def test_a_new_string_without_its_translation_is_found(tmp_path):
    (tmp_path / "src" / "templates").mkdir(parents=True)
    (tmp_path / "src" / "templates" / "new.html.j2").write_text(
        '<p>{{ _("A page nobody translated yet") }}</p>\n'
    )
    assert untranslated(extracted(tmp_path, tmp_path / "src")) == ["A page nobody translated yet"]


@pytest.mark.parametrize("lang", i18n.LANGS)
def test_the_catalogs_load_and_indonesian_is_the_default(lang):
    shown = i18n.translations(lang).gettext("Log in")
    assert shown == {"id": "Masuk", "en": "Log in"}[lang]
    assert i18n.chosen(None) == i18n.DEFAULT == "id" and i18n.chosen("fr") == "id"

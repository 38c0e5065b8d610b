"""Every string a mail says is in the Indonesian mail catalog, translated: `pybabel extract` over
pulih.mail with the domain's own config, then each message looked up in mail.po; and every
translation keeps its message's placeholders (a mail with a missing or strange one would fail
when it is written, inside the step's transaction)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from pulih import mail
from pulih.i18n import LANGS
from tests.conftest import PROJECT

LOCALE = PROJECT / "wrapper" / "pulih" / "locale"
PYBABEL = str(Path(sys.executable).parent / "pybabel")
PLACEHOLDER = re.compile(r"\{(\w+)\}")


def extracted(tmp_path: Path, source: Path = PROJECT / "wrapper" / "pulih" / "mail.py") -> list[str]:
    pot = tmp_path / "mail.pot"
    config = str(LOCALE / "mail.babel.cfg")
    subprocess.run(
        [PYBABEL, "--quiet", "extract", "-F", config, "-k", "N_", "-o", str(pot), str(source)],
        check=True,
        capture_output=True,
    )
    with pot.open("rb") as f:
        return [str(m.id) for m in read_po(f) if m.id]


def catalog() -> dict[str, str]:
    with mail.CATALOG.path("id").open("rb") as f:
        return {str(m.id): str(m.string) for m in read_po(f, locale="id") if m.id and not m.fuzzy}


def untranslated(messages: list[str]) -> list[str]:
    known = catalog()
    return [m for m in messages if not known.get(m)]


def test_every_string_of_a_mail_has_its_indonesian_translation(tmp_path):
    messages = extracted(tmp_path)
    every_mail = [*mail.MAILS.values(), mail.OVERDUE]
    marked = {text for m in every_mail for text in (m.subject, m.happened, m.next)}
    marked |= {*mail.ROLE_NAMES.values(), *mail.OUTCOMES.values(), *mail.LABELS.values()}
    assert marked <= set(messages)  # the tables' strings, not an empty extraction
    assert untranslated(messages) == []


def test_a_new_string_without_its_translation_is_found(tmp_path):
    source = tmp_path / "src" / "more.py"
    source.parent.mkdir()
    source.write_text('N_("A mail nobody translated yet")\nN_("Request")\n')
    assert untranslated(extracted(tmp_path, source)) == ["A mail nobody translated yet"]


def test_each_translation_keeps_its_placeholders():
    for message, translated in catalog().items():
        assert set(PLACEHOLDER.findall(translated)) == set(PLACEHOLDER.findall(message)), message


@pytest.mark.parametrize("lang", LANGS)
def test_the_catalog_loads_and_indonesian_is_the_default(lang):
    assert mail.translate(lang, "Request") == {"id": "Permintaan", "en": "Request"}[lang]
    settings = mail.settings_from(
        {"smtp_host": "localhost", "from": "pulih@diskominfo.example.go.id", "base_url": "http://pulih"},
        "config.yml",
        ValueError,
    )
    assert settings is not None and settings.lang == "id"

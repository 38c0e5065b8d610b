"""The desk's languages: Indonesian by default, English on a switch. Every string a page
shows is a gettext message in English, translated by the catalog `locale/id/LC_MESSAGES/
desk.po` (Babel: `make messages` extracts and updates it; a test fails on one missing).

The catalog is read from its .po at start-up (Babel compiles it in memory), so there is
no compiled file to keep in step with it."""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Final

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

LANGS: Final = ("id", "en")
DEFAULT: Final = "id"
DOMAIN: Final = "desk"
LOCALE_DIR: Final = Path(__file__).parent / "locale"


def catalog_path(lang: str) -> Path:
    return LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


@functools.cache
def translations(lang: str) -> NullTranslations:
    """English is the messages themselves; another language is its catalog."""
    if lang == "en":
        return NullTranslations()
    with catalog_path(lang).open("rb") as po:
        catalog = read_po(po, locale=lang, domain=DOMAIN)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(compiled, domain=DOMAIN)


def chosen(cookie: str | None) -> str:
    return cookie if cookie in LANGS else DEFAULT

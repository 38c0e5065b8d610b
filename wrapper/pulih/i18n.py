"""pulih's languages: Indonesian by default, English on a switch. Every string a person reads
(the desk's pages, the printed forms and run reports, the mails) is a gettext message in
English, translated by a Babel catalog per domain, `locale/id/LC_MESSAGES/DOMAIN.po` beside
the code that shows it (`make messages` extracts and updates them; tests fail on one missing).

A catalog is read from its .po when first used (Babel compiles it in memory), so there is no
compiled file to keep in step with it."""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

LANGS: Final = ("id", "en")
DEFAULT: Final = "id"


@dataclass(frozen=True)
class Catalog:
    """One domain's messages: English in the code, the other languages in .po files."""

    domain: str
    locale_dir: Path

    def path(self, lang: str) -> Path:
        return self.locale_dir / lang / "LC_MESSAGES" / f"{self.domain}.po"

    def translations(self, lang: str) -> NullTranslations:
        return _compiled(self, lang)

    def gettext(self, lang: str, message: str) -> str:
        return self.translations(lang).gettext(message)


@functools.cache
def _compiled(catalog: Catalog, lang: str) -> NullTranslations:
    """English is the messages themselves; another language is its catalog."""
    if lang == "en":
        return NullTranslations()
    with catalog.path(lang).open("rb") as po:
        messages = read_po(po, locale=lang, domain=catalog.domain)
    compiled = io.BytesIO()
    write_mo(compiled, messages)
    compiled.seek(0)
    return Translations(compiled, domain=catalog.domain)


def chosen(wanted: str | None) -> str:
    """A language pulih has, or the default."""
    return wanted if wanted in LANGS else DEFAULT

"""What pulih prints on paper (Forms PPD and PD, run reports): one Jinja environment per
language, whose strings are gettext messages in English translated by the `forms` catalog,
`locale/id/LC_MESSAGES/forms.po` (pulih.i18n; `make messages` extracts them)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from jinja2 import Environment, PackageLoader, select_autoescape

from pulih.i18n import Catalog

CATALOG: Final = Catalog("forms", Path(__file__).parent / "locale")


def N_(message: str) -> str:  # gettext's name for "mark now, translate when shown"
    return message


def moment(at: object) -> str:
    """A time of the record ("2026-11-21T08:00:00Z", UTC) as a person reads it: "2026-11-21 08:00:00"."""
    text = "" if at is None else str(at)
    return text.replace("T", " ", 1).removesuffix("Z") if len(text) == 20 and text.endswith("Z") else text


@functools.cache
def environment(lang: str) -> Environment:
    """The templates in `lang` ('en' or 'id'): `_()` for their own words, `|word(NAMES)` for
    a record's code (a status, a role), shown by its name where NAMES has one, else as it is,
    `|moment` for a time of the record."""
    env = Environment(
        loader=PackageLoader("pulih", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        extensions=["jinja2.ext.i18n"],
    )
    translations = CATALOG.translations(lang)
    env.install_gettext_translations(translations, newstyle=True)  # type: ignore[attr-defined]

    # A plain string, escaped like any other value: a code the record holds is never marked
    # safe, as `_(value)` would mark it.
    def word(code: object, names: Mapping[str, str]) -> str:
        return translations.gettext(names[code]) if isinstance(code, str) and code in names else str(code)

    env.filters["word"] = word
    env.filters["moment"] = moment
    return env

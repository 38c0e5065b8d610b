"""The desk's catalog (pulih.i18n): `locale/id/LC_MESSAGES/desk.po` beside the desk's code."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from babel.support import NullTranslations

from pulih.i18n import DEFAULT, LANGS, Catalog, chosen

__all__ = ["CATALOG", "DEFAULT", "LANGS", "catalog_path", "chosen", "translations"]

CATALOG: Final = Catalog("desk", Path(__file__).parent / "locale")


def catalog_path(lang: str) -> Path:
    return CATALOG.path(lang)


def translations(lang: str) -> NullTranslations:
    return CATALOG.translations(lang)

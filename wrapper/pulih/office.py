"""The office whose forms these are: the `office:` mapping of the service's config.yml, printed
at the head of Forms PPD and PD (its name, its unit, its logo).

    office:
      name: Dinas Komunikasi dan Informatika Kabupaten Contoh
      unit: Bidang Persandian dan Statistik          # optional
      logo: /etc/pulih/logo.png                      # optional: a PNG or JPEG, at most 512 KiB

The logo is read and checked once, when the config is loaded, and printed as a data: URI (the
desk's printable pages allow no other image source, and the PDF renderer fetches nothing)."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from PIL import Image, UnidentifiedImageError

LOGO_BYTES: Final = 512 * 1024
LOGO_PIXELS: Final = 4000  # per side: a letterhead's logo, not a photograph to decompress
_TYPES: Final = {"PNG": "image/png", "JPEG": "image/jpeg"}
_FIELDS: Final = ("name", "unit", "logo")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Office:
    name: str
    unit: str = ""
    logo: bytes | None = None
    logo_type: str = ""  # image/png or image/jpeg, as the logo's content says

    @property
    def logo_uri(self) -> str | None:
        if self.logo is None:
            return None
        return f"data:{self.logo_type};base64,{base64.b64encode(self.logo).decode('ascii')}"


def office_settings(raw: Any, where: Path | str, error: type[Exception]) -> Office | None:
    """The `office:` mapping of the config at `where` (None: it has none), or `error` naming
    the field that is wrong and how."""
    if raw is None:
        return None

    def wrong(field: str, why: str) -> Exception:
        return error(f"{where}: field 'office.{field}': {why}")

    if not isinstance(raw, dict):
        raise error(f"{where}: field 'office': a mapping of name, unit (optional) and logo (optional)")
    unknown = sorted(str(k) for k in raw if k not in _FIELDS)
    if unknown:
        raise wrong(unknown[0], f"unknown field (an office has {', '.join(_FIELDS)})")
    texts = {}
    for field in ("name", "unit"):
        value = raw.get(field) or ""
        if not isinstance(value, str) or len(value) > 200 or _CONTROL.search(value):
            raise wrong(field, "one line of text, at most 200 characters")
        texts[field] = value.strip()
    if not texts["name"]:
        raise wrong("name", "the office's name is required, as on its letterhead")
    logo, logo_type = _logo(raw.get("logo"), wrong)
    return Office(texts["name"], texts["unit"], logo, logo_type)


def _logo(value: Any, wrong: Callable[[str, str], Exception]) -> tuple[bytes | None, str]:
    """The logo's bytes and media type, checked by its content: a PNG or JPEG that decodes."""
    if value is None:
        return None, ""
    if not isinstance(value, str) or not value.startswith("/"):
        raise wrong("logo", f"{value!r} is not an absolute path to a PNG or JPEG file")
    where = Path(value)
    try:
        size = where.stat().st_size
        if not where.is_file():
            raise wrong("logo", f"{where} is not a file")
        if size > LOGO_BYTES:
            raise wrong("logo", f"{where} is {size} bytes; a logo is at most {LOGO_BYTES // 1024} KiB")
        data = where.read_bytes()
    except OSError as exc:
        raise wrong("logo", f"{where} cannot be read: {exc.strerror or exc}") from None
    try:
        with Image.open(io.BytesIO(data), formats=list(_TYPES)) as image:
            kind, (width, height) = str(image.format), image.size
            image.verify()  # the whole file, not only its first bytes
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise wrong("logo", f"{where} is not a PNG or JPEG image (by its content)") from None
    if width > LOGO_PIXELS or height > LOGO_PIXELS:
        raise wrong("logo", f"{where} is {width}x{height} pixels; at most {LOGO_PIXELS} on a side")
    return data, _TYPES[kind]

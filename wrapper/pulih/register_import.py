"""`pulih register import`: the spreadsheet an office already keeps, as a register file.

One CSV row per server, or one row per data item with the server's columns repeated
(or left blank) on the item rows. Headers are matched loosely: case, spaces and a few
Indonesian names an office's sheet is likely to use. Dates may be YYYY-MM-DD or
DD/MM/YYYY (the Indonesian way). Everything is validated as a register before a byte
is written; errors name the CSV file, row and column.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from pathlib import Path
from typing import Any, Final

import yaml

from pulih import register as reg
from pulih.fsutil import atomic_write_text

SERVER_COLUMNS: Final = (
    "asset_id",
    "hostname",
    "address",
    "ssh_port",
    "ssh_user",
    "skpd",
    "skpd_name",
    "environment",
    "status",
    "os",
    "registered_by",
    "registered_on",
    "last_reviewed",
    "reviewed_by",
    "notes",
    "repository_path",
)
ITEM_COLUMNS: Final = (
    "item_name",
    "item_engine",
    "item_database",
    "item_host",
    "item_port",
    "item_user",
    "item_socket",
    "item_password_var",
    "item_path",
    "item_exclude",
    "item_description",
)
ALIASES: Final = {
    "id": "asset_id",
    "id_aset": "asset_id",
    "kode_aset": "asset_id",
    "no_aset": "asset_id",
    "nama_server": "hostname",
    "host": "hostname",
    "host_name": "hostname",
    "ip": "address",
    "ip_address": "address",
    "alamat_ip": "address",
    "port_ssh": "ssh_port",
    "user_ssh": "ssh_user",
    "opd": "skpd",
    "perangkat_daerah": "skpd",
    "nama_skpd": "skpd_name",
    "nama_opd": "skpd_name",
    "lingkungan": "environment",
    "env": "environment",
    "sistem_operasi": "os",
    "operating_system": "os",
    "didaftarkan_oleh": "registered_by",
    "tanggal_daftar": "registered_on",
    "tanggal_registrasi": "registered_on",
    "terakhir_ditinjau": "last_reviewed",
    "tanggal_tinjau": "last_reviewed",
    "ditinjau_oleh": "reviewed_by",
    "keterangan": "notes",
    "catatan": "notes",
}
_ENUM_COLUMNS: Final = ("environment", "status", "item_engine")
_DMY: Final = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")


def _column(header: str) -> str:
    key = re.sub(r"[^a-z0-9]+", "_", header.strip().lower()).strip("_")
    return ALIASES.get(key, key)


def _clean(column: str, value: str | None) -> str:
    text = (value or "").strip()
    if column in _ENUM_COLUMNS:
        return re.sub(r"[\s-]+", "_", text.lower())
    if column in ("registered_on", "last_reviewed") and (m := _DMY.match(text)):
        day, month, year = (int(g) for g in m.groups())
        try:
            return dt.date(year, month, day).isoformat()
        except ValueError:
            return text  # left as written: validation says it is not a real date
    return text


def _marked(values: dict[str, Any], line: int) -> reg.LineDict:
    """A mapping whose every field points at a CSV row, so errors name that row."""
    out = reg.LineDict(values)
    out.line = line
    out.key_lines = dict.fromkeys(values, line)
    return out


def read_csv(path: Path) -> tuple[dict[str, Any], list[reg.Problem]]:
    """Build a register document from a CSV file; problems that are the sheet's own
    (unknown columns, rows that disagree) are returned beside it."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise reg.RegisterError([reg.Problem(file, "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise reg.RegisterError([reg.Problem(file, f"cannot be read as UTF-8 text: {exc}")]) from None
    first_line = text.splitlines()[0] if text.strip() else ""
    if not first_line:
        raise reg.RegisterError([reg.Problem(file, "is empty: the first row must name the columns")])
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(first_line, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    # A quoted cell may span lines: each row is numbered by the line it starts on.
    reader = csv.reader(io.StringIO(text, newline=""), dialect)
    rows: list[list[str]] = []
    starts: list[int] = []
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise reg.RegisterError(
                [reg.Problem(file, f"is not a readable CSV sheet: {exc}", line=start)]
            ) from None
        rows.append(row)
        starts.append(start)
    columns = [_column(h) for h in rows[0]]
    problems: list[reg.Problem] = []
    known = SERVER_COLUMNS + ITEM_COLUMNS
    for header, column in zip(rows[0], columns, strict=True):
        if column not in known:
            problems.append(
                reg.Problem(file, f"unknown column (known: {', '.join(known)})", line=1, field=header)
            )

    assets: dict[str, reg.LineDict] = {}
    first_row: dict[str, int] = {}
    for number, row in zip(starts[1:], rows[1:], strict=True):
        if not any(cell.strip() for cell in row):
            continue
        if any(cell.strip() for cell in row[len(columns) :]):
            problems.append(
                reg.Problem(
                    file,
                    f"has {len(row)} cells, but the first row names {len(columns)} columns "
                    "(a stray separator, or a cell that needs quotes)",
                    line=number,
                )
            )
            continue
        cells = {c: _clean(c, v) for c, v in zip(columns, row, strict=False) if c in known}
        asset_id = cells.get("asset_id", "")
        if not asset_id:
            problems.append(
                reg.Problem(file, "is empty: every row names its server", line=number, field="asset_id")
            )
            continue
        entry = assets.get(asset_id)
        if entry is None:
            server: dict[str, Any] = {
                c: cells[c] for c in SERVER_COLUMNS if cells.get(c) and c != "repository_path"
            }
            if cells.get("ssh_port", "").isdigit():
                server["ssh_port"] = int(cells["ssh_port"])
            if cells.get("repository_path"):
                server["backup_repository"] = {"path": cells["repository_path"]}
            server["data"] = []
            entry = assets[asset_id] = _marked(server, number)
            first_row[asset_id] = number
        else:
            for column in SERVER_COLUMNS:
                value = cells.get(column, "")
                written = entry.get(column)
                if value and written is not None and str(written) != value:
                    problems.append(
                        reg.Problem(
                            file,
                            f"'{value}' differs from row {first_row[asset_id]} ('{written}') "
                            "for the same server",
                            line=number,
                            entry=f"'{asset_id}'",
                            field=column,
                        )
                    )
        if cells.get("item_name") or cells.get("item_engine"):
            item: dict[str, Any] = {c.removeprefix("item_"): cells[c] for c in ITEM_COLUMNS if cells.get(c)}
            if str(item.get("port", "")).isdigit():
                item["port"] = int(item["port"])
            if "exclude" in item:
                item["exclude"] = [p.strip() for p in str(item["exclude"]).split("|") if p.strip()]
            entry["data"].append(_marked(item, number))

    document = {"plugin": reg.PLUGIN_NAME, "version": reg.FORMAT_VERSION, "assets": list(assets.values())}
    return document, problems


def import_csv(
    source: Path, target: Path, *, office: str | None, today: dt.date, force: bool
) -> reg.Register:
    """Validate the CSV as a register and write it as YAML; nothing is written on error."""
    if target.exists() and not force:
        raise reg.RegisterError([reg.Problem(str(target), "already exists; pass --force to replace it")])
    if not target.name.endswith(reg.REGISTER_SUFFIXES):
        raise reg.RegisterError(
            [reg.Problem(str(target), "must end in .asset_register.yml so Ansible reads it as inventory")]
        )
    document, problems = read_csv(source)
    register, found = reg.parse_register(document, str(source), today)
    problems += found + reg.duplicate_problems(list(register.assets))
    if problems:
        raise reg.RegisterError(problems)

    out: dict[str, Any] = {"plugin": reg.PLUGIN_NAME, "version": reg.FORMAT_VERSION}
    if office:
        out["office"] = office
    out["assets"] = [asset.as_dict() for asset in register.assets]
    header = (
        f"# Server asset register, imported by `pulih register import` from {source.name} on {today}.\n"
        "# Format: see the pulih README, section 'The asset register'.\n"
    )
    atomic_write_text(target, header + yaml.safe_dump(out, sort_keys=False, allow_unicode=True, width=110))
    return reg.load_file(target, today)

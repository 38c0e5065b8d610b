# Copyright: pulih maintainers
# Apache License 2.0
"""The server asset register: load, validate and check it.

The register is the SOP's *aset register server*: one entry per server. It is a YAML
file named ``*.asset_register.yml`` that Ansible reads as inventory through the
``pulih.core.asset_register`` plugin; the plugin and the ``pulih register`` commands
(``pulih.register`` re-exports this module) both use it, so they can never disagree about
what a valid register is.

Controller only (Python 3.11+, PyYAML, which ansible-core brings): no module imports it, so
it is never sent to a managed host.

Every problem names the file, the line, the entry and the field, in one line.
"""

from __future__ import annotations

import datetime as dt
import difflib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import yaml

PLUGIN_NAME: Final = "pulih.core.asset_register"
REGISTER_SUFFIXES: Final = (".asset_register.yml", ".asset_register.yaml")
FORMAT_VERSION: Final = 1
REVIEW_MAX_AGE_DAYS: Final = 365

Engine = Literal["postgresql", "mariadb", "mysql", "files"]
ENGINES: Final[tuple[str, ...]] = ("postgresql", "mariadb", "mysql", "files")
DATABASE_ENGINES: Final[tuple[str, ...]] = ("postgresql", "mariadb", "mysql")
STATUSES: Final[tuple[str, ...]] = ("in_operation", "maintenance", "planned", "decommissioned")
ENVIRONMENTS: Final[tuple[str, ...]] = (
    "production",
    "staging",
    "testing",
    "development",
    "disaster_recovery",
)

# Identifiers pulih puts into group names and repository paths: keep them plain.
_IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Values that reach a command line (ssh, the database clients): never an option ('-...'),
# never a control character or a space.
_SSH_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DB_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@$-]{0,62}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a register, located as precisely as the file allows."""

    file: str
    message: str
    line: int | None = None
    entry: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        parts = [where]
        if self.entry is not None:
            parts.append(f"entry {self.entry}")
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        return ": ".join(parts) + f": {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "entry": self.entry,
            "field": self.field,
            "message": self.message,
        }


class RegisterError(Exception):
    """The register cannot be used: it holds one or more problems."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


# --------------------------------------------------------------------------- model


HOOK_PHASES: Final = ("pre", "post")
HOOK_TIMEOUT_MAX: Final = 3600
_ABSOLUTE_PROGRAM: Final = re.compile(r"^/[^\x00]*$")


@dataclass(frozen=True)
class Hook:
    """A command the agent runs on the data server around an in-place restore of its item:
    an argument list (its program by absolute path; no shell), stopped after `timeout` s."""

    argv: tuple[str, ...]
    timeout: int = 60

    def as_dict(self) -> dict[str, Any]:
        return {"argv": list(self.argv), "timeout": self.timeout}


@dataclass(frozen=True)
class DataItem:
    """A database or a file tree that a server holds and pulih backs up."""

    name: str
    engine: Engine
    database: str | None = None
    host: str | None = None
    port: int | None = None
    user: str | None = None
    socket: str | None = None
    password_var: str | None = None
    path: str | None = None
    exclude: tuple[str, ...] = ()
    description: str | None = None
    # Before an in-place restore replaces the data (e.g. the application into maintenance), and
    # after it (back out of it): `restore_hooks: {pre: [{argv, timeout}], post: [...]}`.
    pre_restore: tuple[Hook, ...] = ()
    post_restore: tuple[Hook, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        keys = ("name", "engine", "database", "host", "port", "user", "socket", "password_var", "path")
        out: dict[str, Any] = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        if self.engine == "files":
            out["exclude"] = list(self.exclude)
        if self.description:
            out["description"] = self.description
        if self.pre_restore or self.post_restore:
            out["restore_hooks"] = {
                "pre": [h.as_dict() for h in self.pre_restore],
                "post": [h.as_dict() for h in self.post_restore],
            }
        return out


DAYS: Final[tuple[str, ...]] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK: Final = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


@dataclass(frozen=True)
class Slot:
    """One recurring slot of a maintenance window: from `start` on each of `days` until `end`
    (the next day's, when `end` is not after `start`)."""

    days: tuple[int, ...]  # 0 Monday .. 6 Sunday
    start: dt.time
    end: dt.time

    def contains(self, local: dt.datetime) -> bool:
        wrapped = self.end <= self.start
        for offset in (0, 1) if wrapped else (0,):
            day = (local - dt.timedelta(days=offset)).date()
            if day.weekday() not in self.days:
                continue
            begin = dt.datetime.combine(day, self.start)
            until = dt.datetime.combine(day + dt.timedelta(days=1 if wrapped else 0), self.end)
            if begin <= local.replace(tzinfo=None) < until:
                return True
        return False

    def __str__(self) -> str:
        return f"{','.join(DAYS[d] for d in self.days)} {self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True)
class MaintenanceWindow:
    """When a server's applications may be disturbed (an in-place restore replaces their
    data), in the office's time zone (Asia/Jakarta is WIB, Asia/Makassar WITA, Asia/Jayapura
    WIT)."""

    timezone: str
    slots: tuple[Slot, ...]

    def contains(self, moment: dt.datetime) -> bool:
        from zoneinfo import ZoneInfo  # the controller's tzdata

        local = moment.astimezone(ZoneInfo(self.timezone))
        return any(slot.contains(local) for slot in self.slots)

    def __str__(self) -> str:
        return "; ".join(str(slot) for slot in self.slots) + f" ({self.timezone})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "timezone": self.timezone,
            "slots": [
                {"days": [DAYS[d] for d in s.days], "start": f"{s.start:%H:%M}", "end": f"{s.end:%H:%M}"}
                for s in self.slots
            ],
        }


@dataclass(frozen=True)
class Asset:
    """One server of the register."""

    asset_id: str
    hostname: str
    address: str
    ssh_port: int
    ssh_user: str
    skpd: str
    environment: str
    status: str
    os: str
    registered_by: str
    registered_on: dt.date
    last_reviewed: dt.date
    data: tuple[DataItem, ...] = ()
    skpd_name: str | None = None
    reviewed_by: str | None = None
    backup_repository: str | None = None
    notes: str | None = None
    maintenance_window: MaintenanceWindow | None = None
    source: str = ""
    line: int | None = None

    @property
    def in_operation(self) -> bool:
        return self.status == "in_operation"

    def review_age_days(self, today: dt.date) -> int:
        return (today - self.last_reviewed).days

    def review_overdue(self, today: dt.date, max_age_days: int = REVIEW_MAX_AGE_DAYS) -> bool:
        return self.status != "decommissioned" and self.review_age_days(today) > max_age_days

    def groups(self) -> list[str]:
        """Inventory groups of this server, derived from the register, sorted."""
        names = {f"skpd_{slug(self.skpd)}", f"env_{self.environment}"}
        names.update(f"engine_{item.engine}" for item in self.data)
        if self.backup_repository:
            names.add("pulih_repository")
        return sorted(names)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "asset_id": self.asset_id,
            "hostname": self.hostname,
            "address": self.address,
            "ssh_port": self.ssh_port,
            "ssh_user": self.ssh_user,
            "skpd": self.skpd,
            "environment": self.environment,
            "status": self.status,
            "os": self.os,
            "registered_by": self.registered_by,
            "registered_on": self.registered_on.isoformat(),
            "last_reviewed": self.last_reviewed.isoformat(),
            "data": [item.as_dict() for item in self.data],
        }
        optional = {
            "skpd_name": self.skpd_name,
            "reviewed_by": self.reviewed_by,
            "backup_repository": {"path": self.backup_repository} if self.backup_repository else None,
            "notes": self.notes,
            "maintenance_window": self.maintenance_window.as_dict() if self.maintenance_window else None,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out


@dataclass(frozen=True)
class Register:
    """All servers of one inventory (one or more register files)."""

    files: tuple[str, ...]
    assets: tuple[Asset, ...]
    office: str | None = None

    def hosts(self) -> list[Asset]:
        """Servers that Ansible may touch: those in operation, nothing else."""
        return [a for a in self.assets if a.in_operation]

    def by_id(self, asset_id: str) -> Asset | None:
        return next((a for a in self.assets if a.asset_id == asset_id), None)


@dataclass(frozen=True)
class Finding:
    """A rule of the SOP that an otherwise valid register does not meet."""

    kind: str
    asset_id: str
    hostname: str
    message: str
    file: str = ""
    line: int | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: entry '{self.asset_id}' ({self.hostname}): {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "asset_id": self.asset_id,
            "hostname": self.hostname,
            "message": self.message,
            "file": self.file,
            "line": self.line,
        }


def slug(text: str) -> str:
    """A group-name-safe form of a name: 'Dinas Kesehatan' -> 'dinas_kesehatan'."""
    return re.sub(r"[^a-z0-9]+", "_", text.strip().lower()).strip("_") or "unknown"


# --------------------------------------------------------------------------- YAML


class LineDict(dict[str, Any]):
    """A mapping that remembers the line of itself and of each of its keys."""

    line: int | None = None
    key_lines: dict[str, int]


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


class _RegisterLoader(yaml.SafeLoader):
    """SafeLoader that keeps dates as text (so a bad date is our error, not a crash),
    refuses duplicate keys (PyYAML silently keeps the last one) and records lines."""


_RegisterLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_mapping(loader: _RegisterLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        key = str(key)
        if key in out:
            raise _DuplicateKey(
                None, None, f"key '{key}' appears twice in the same mapping", key_node.start_mark
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


_RegisterLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


# A register of 300 servers is some 150 KiB, nested 6 deep: far larger or deeper is not a
# register, and is refused before it is parsed (a YAML bomb, a 10 MB file, 5000 brackets).
MAX_REGISTER_BYTES = 4 << 20
MAX_REGISTER_DEPTH = 16


def _too_deep(text: str) -> int | None:
    """The line where the document nests deeper than MAX_REGISTER_DEPTH (read as a stream of
    events, which takes no recursion), else None."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_REGISTER_DEPTH:
                return event.start_mark.line + 1 if event.start_mark is not None else 1
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return None


def _read_yaml(path: Path) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_REGISTER_BYTES:
            raise RegisterError(
                [Problem(str(path), f"is {size} bytes; a register is at most {MAX_REGISTER_BYTES} bytes")]
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegisterError([Problem(str(path), "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegisterError([Problem(str(path), f"cannot be read: {exc}")]) from None
    try:
        deep = _too_deep(text)
        if deep is not None:
            raise RegisterError(
                [
                    Problem(
                        str(path),
                        f"nests deeper than {MAX_REGISTER_DEPTH} levels; no register does",
                        line=deep,
                    )
                ]
            )
        return yaml.load(text, Loader=_RegisterLoader)  # a SafeLoader subclass (ruff S506)
    except yaml.MarkedYAMLError as exc:
        problem = exc.problem_mark or exc.context_mark
        line = problem.line + 1 if problem is not None else None
        what = exc.problem or exc.context or "unreadable"
        # Name the entry and field too: the line where the broken construct started
        # (context) tells the field; the last asset_id above it tells the entry.
        start = exc.context_mark or exc.problem_mark
        entry, field_name = _locate(text, start.line + 1 if start is not None else None)
        raise RegisterError(
            [Problem(str(path), f"not valid YAML: {what}", line=line, entry=entry, field=field_name)]
        ) from None
    except yaml.YAMLError as exc:
        raise RegisterError([Problem(str(path), f"not valid YAML: {exc}")]) from None


_KEY_LINE = re.compile(r"^\s*(?:-\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*:")
_ASSET_ID_LINE = re.compile(r"^\s*(?:-\s+)?asset_id\s*:\s*['\"]?([^'\"#]+?)['\"]?\s*(?:#.*)?$")


def _locate(text: str, line: int | None) -> tuple[str | None, str | None]:
    """Best guess of the entry and field a YAML syntax error sits in."""
    if line is None:
        return None, None
    lines = text.splitlines()[:line]
    field_match = _KEY_LINE.match(lines[-1]) if lines else None
    entry = None
    for candidate in reversed(lines):
        if m := _ASSET_ID_LINE.match(candidate):
            entry = f"'{m.group(1)}'"
            break
    return entry, field_match.group(1) if field_match else None


# --------------------------------------------------------------------------- validation

_ASSET_FIELDS: Final = {
    "asset_id": True,
    "hostname": True,
    "address": True,
    "ssh_port": False,
    "ssh_user": True,
    "skpd": True,
    "skpd_name": False,
    "environment": True,
    "status": True,
    "os": True,
    "data": False,
    "backup_repository": False,
    "registered_by": True,
    "registered_on": True,
    "last_reviewed": True,
    "reviewed_by": False,
    "notes": False,
    "maintenance_window": False,
}
_DB_FIELDS: Final = (
    "name",
    "engine",
    "database",
    "host",
    "port",
    "user",
    "socket",
    "password_var",
    "description",
    "restore_hooks",
)
_FILES_FIELDS: Final = ("name", "engine", "path", "exclude", "description", "restore_hooks")
_TOP_FIELDS: Final = ("plugin", "version", "office", "assets")
_SECRET_FIELDS: Final = ("password", "passwd", "secret", "login_password")


class _Checker:
    """Collects problems while turning one file's YAML into model objects."""

    within: str = ""  # while checking a data item: its place, data[N]

    def __init__(self, file: str, today: dt.date) -> None:
        self.file = file
        self.today = today
        self.problems: list[Problem] = []
        # (entry, field) already named as the likely meaning of a misspelt key:
        # its absence is not reported a second time.
        self._suggested: set[tuple[str | None, str]] = set()

    def add(
        self, message: str, *, line: int | None, entry: str | None = None, field: str | None = None
    ) -> None:
        if field and self.within and not field.startswith(self.within + "."):
            field = f"{self.within}.{field}"  # an item's field is named as data[N].field
        self.problems.append(Problem(self.file, message, line=line, entry=entry, field=field))

    @staticmethod
    def _line(mapping: Mapping[str, Any], key: str | None = None) -> int | None:
        if isinstance(mapping, LineDict):
            if key is not None and key in mapping.key_lines:
                return mapping.key_lines[key]
            return mapping.line
        return None

    def unknown_keys(self, mapping: Mapping[str, Any], allowed: Iterable[str], entry: str | None) -> None:
        allowed = list(allowed)
        for key in mapping:
            if key in allowed:
                continue
            line = self._line(mapping, key)
            if key.lower() in _SECRET_FIELDS:
                self.add(
                    "the register must not hold secrets; keep the password in Ansible Vault "
                    "and name its variable in 'password_var'",
                    line=line,
                    entry=entry,
                    field=key,
                )
                continue
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known fields: {', '.join(allowed)})"
            if close:
                self._suggested.add((entry, close[0]))
            self.add(f"unknown field{hint}", line=line, entry=entry, field=key)

    def text(
        self,
        mapping: Mapping[str, Any],
        key: str,
        entry: str | None,
        *,
        required: bool,
        pattern: re.Pattern[str] | None = None,
        pattern_hint: str = "",
    ) -> str | None:
        line = self._line(mapping, key)
        if key not in mapping or mapping[key] is None or mapping[key] == "":
            if required and (entry, key) not in self._suggested:
                self.add("is missing (it is required)", line=self._line(mapping), entry=entry, field=key)
            return None
        value = mapping[key]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.add(f"must be text, not {_kind(value)}", line=line, entry=entry, field=key)
            return None
        value = str(value).strip()
        if pattern is not None and not pattern.match(value):
            self.add(f"'{shown(value)}' is not valid: {pattern_hint}", line=line, entry=entry, field=key)
            return None
        return value

    def address(
        self, mapping: Mapping[str, Any], key: str, entry: str | None, *, required: bool, field: str
    ) -> str | None:
        value = self.text(mapping, key, entry, required=required)
        if value is not None and not _address_ok(value):
            self.add(
                f"'{shown(value)}' is neither an IP address nor a host name",
                line=self._line(mapping, key),
                entry=entry,
                field=field,
            )
            return None
        return value

    def choice(
        self, mapping: Mapping[str, Any], key: str, entry: str | None, choices: tuple[str, ...], *, what: str
    ) -> str | None:
        value = self.text(mapping, key, entry, required=True)
        if value is None:
            return None
        if value not in choices:
            close = difflib.get_close_matches(value, choices, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            self.add(
                f"unknown {what} '{value}' (known: {', '.join(choices)}){hint}",
                line=self._line(mapping, key),
                entry=entry,
                field=key,
            )
            return None
        return value

    def port(
        self, mapping: Mapping[str, Any], key: str, entry: str | None, default: int | None
    ) -> int | None:
        if key not in mapping or mapping[key] is None:
            return default
        value = mapping[key]
        if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
            self.add(f"'{value}' is not a port number", line=self._line(mapping, key), entry=entry, field=key)
            return default
        number = int(value)
        if not 1 <= number <= 65535:
            self.add(
                f"{number} is not a port number (1-65535)",
                line=self._line(mapping, key),
                entry=entry,
                field=key,
            )
            return default
        return number

    def date(self, mapping: Mapping[str, Any], key: str, entry: str | None) -> dt.date | None:
        value = self.text(mapping, key, entry, required=True)
        if value is None:
            return None
        line = self._line(mapping, key)
        if not _DATE.match(value):
            self.add(f"'{value}' is not a date; write it as YYYY-MM-DD", line=line, entry=entry, field=key)
            return None
        try:
            day = dt.date.fromisoformat(value)
        except ValueError:
            self.add(f"'{value}' is not a real calendar date", line=line, entry=entry, field=key)
            return None
        if day > self.today:
            self.add(f"{value} is in the future (today is {self.today})", line=line, entry=entry, field=key)
            return None
        return day


def shown(value: object) -> str:
    """Text as a message or a terminal may show it: control characters (ESC, line breaks, ...)
    escaped, never acted on; one line always."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def _kind(value: object) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "true/false"
    return type(value).__name__


def _address_ok(value: str) -> bool:
    """An IPv4 or IPv6 literal, or an RFC 1123 host name (whose last label is not all digits,
    so that '10.20.1.999' is neither)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return bool(_HOSTNAME.match(value)) and not value.rsplit(".", 1)[-1].isdigit()
    return True


def _parse_item(chk: _Checker, raw: Any, entry: str, index: int) -> DataItem | None:
    where = f"data[{index}]"
    if not isinstance(raw, Mapping):
        chk.add(
            f"must be a mapping with 'name' and 'engine', not {_kind(raw)}",
            line=None,
            entry=entry,
            field=where,
        )
        return None
    name = chk.text(
        raw,
        "name",
        entry,
        required=True,
        pattern=_IDENT,
        pattern_hint="use letters, digits, '.', '_' or '-' (it names backups)",
    )
    label = where
    engine = chk.text(raw, "engine", entry, required=True)
    if engine is not None and engine not in ENGINES:
        close = difflib.get_close_matches(engine, ENGINES, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        chk.add(
            f"unknown engine '{engine}' (known: {', '.join(ENGINES)}){hint}",
            line=chk._line(raw, "engine"),
            entry=entry,
            field=f"{label}.engine",
        )
        engine = None
    if engine is None or name is None:
        return None

    def sub(key: str) -> str:
        return f"{label}.{key}"

    if engine == "files":
        chk.unknown_keys(raw, _FILES_FIELDS, entry)
        path = chk.text(raw, "path", entry, required=True)
        if path is not None and not path.startswith("/"):
            chk.add(
                f"'{path}' must be an absolute path",
                line=chk._line(raw, "path"),
                entry=entry,
                field=sub("path"),
            )
            return None
        exclude = raw.get("exclude") or []
        if not isinstance(exclude, list) or not all(isinstance(x, str) for x in exclude):
            chk.add(
                "must be a list of patterns",
                line=chk._line(raw, "exclude"),
                entry=entry,
                field=sub("exclude"),
            )
            return None
        hooks = _parse_hooks(chk, raw, entry)
        if path is None or hooks is None:
            return None
        return DataItem(
            name=name,
            engine="files",
            path=path,
            exclude=tuple(exclude),
            description=chk.text(raw, "description", entry, required=False),
            pre_restore=hooks[0],
            post_restore=hooks[1],
        )

    chk.unknown_keys(raw, _DB_FIELDS, entry)
    database = chk.text(raw, "database", entry, required=True)
    password_var = chk.text(
        raw,
        "password_var",
        entry,
        required=False,
        pattern=_VAR_NAME,
        pattern_hint="name an Ansible variable (letters, digits, '_')",
    )
    socket = chk.text(raw, "socket", entry, required=False)
    if socket is not None and not socket.startswith("/"):
        chk.add(
            f"'{socket}' must be an absolute path",
            line=chk._line(raw, "socket"),
            entry=entry,
            field=sub("socket"),
        )
    port = chk.port(raw, "port", entry, None)
    hooks = _parse_hooks(chk, raw, entry)
    if database is None or hooks is None:
        return None
    return DataItem(
        pre_restore=hooks[0],
        post_restore=hooks[1],
        name=name,
        engine=engine,  # type: ignore[arg-type]  # checked against ENGINES above
        database=database,
        host=chk.address(raw, "host", entry, required=False, field=sub("host")),
        port=port,
        user=chk.text(
            raw,
            "user",
            entry,
            required=False,
            pattern=_DB_USER,
            pattern_hint="a database user has letters, digits and '_.@$-', and does not start with '-'",
        ),
        socket=socket,
        password_var=password_var,
        description=chk.text(raw, "description", entry, required=False),
    )


def _parse_hooks(
    chk: _Checker, raw: Mapping[str, Any], entry: str
) -> tuple[tuple[Hook, ...], tuple[Hook, ...]] | None:
    """An item's `restore_hooks` (pre and post lists of {argv, timeout}); None when invalid."""
    hooks = raw.get("restore_hooks")
    if hooks is None:
        return (), ()
    line = chk._line(raw, "restore_hooks")

    def bad(message: str) -> None:
        chk.add(message, line=line, entry=entry, field="restore_hooks")

    if not isinstance(hooks, Mapping) or not set(hooks) <= set(HOOK_PHASES):
        bad("must be a mapping of 'pre' and 'post', each a list of {argv: [/PROGRAM, ARG...], timeout: S}")
        return None
    parsed: dict[str, list[Hook]] = {"pre": [], "post": []}
    for phase in HOOK_PHASES:
        listed = hooks.get(phase) or []
        if not isinstance(listed, list):
            bad(f"{phase} must be a list of hooks")
            return None
        for hook in listed:
            argv = hook.get("argv") if isinstance(hook, Mapping) else None
            timeout = hook.get("timeout", 60) if isinstance(hook, Mapping) else None
            if isinstance(hook, Mapping) and not set(hook) <= {"argv", "timeout"}:
                bad(f"a hook has 'argv' and 'timeout', not {sorted(set(hook) - {'argv', 'timeout'})[0]!r}")
                return None
            if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
                bad(
                    f"a {phase} hook's argv is a list of words (no shell string), "
                    "like [/usr/bin/systemctl, stop, app]"
                )
                return None
            if not _ABSOLUTE_PROGRAM.match(argv[0]) or any("\x00" in a for a in argv):
                bad(f"a {phase} hook names its program by absolute path, not {shown(argv[0])!r}")
                return None
            if (
                isinstance(timeout, bool)
                or not isinstance(timeout, int)
                or not 1 <= timeout <= HOOK_TIMEOUT_MAX
            ):
                bad(f"a {phase} hook's timeout is 1 to {HOOK_TIMEOUT_MAX} seconds, not {shown(timeout)!r}")
                return None
            parsed[phase].append(Hook(tuple(argv), timeout))
    return tuple(parsed["pre"]), tuple(parsed["post"])


def _parse_window(chk: _Checker, raw: Mapping[str, Any], entry: str) -> MaintenanceWindow | None:
    """`maintenance_window: {timezone: Asia/Jakarta, slots: [{days: [sat, sun], start: "22:00",
    end: "04:00"}]}`, or None when the entry has none (no window: any time)."""
    window = raw.get("maintenance_window")
    if window is None:
        return None
    line = chk._line(raw, "maintenance_window")

    def bad(message: str) -> None:
        chk.add(message, line=line, entry=entry, field="maintenance_window")

    if not isinstance(window, Mapping) or not isinstance(window.get("slots"), list) or not window["slots"]:
        bad("must be a mapping with a 'timezone' and a list of 'slots' ({days, start, end})")
        return None
    zone = window.get("timezone")
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(str(zone))
    except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
        bad(f"timezone {shown(zone)!r} is not a time zone name (Asia/Jakarta, Asia/Makassar, Asia/Jayapura)")
        return None
    slots = []
    for slot in window["slots"]:
        days = slot.get("days") if isinstance(slot, Mapping) else None
        start, end = (str(slot.get(k, "")) if isinstance(slot, Mapping) else "" for k in ("start", "end"))
        if not isinstance(days, list) or not days or not all(d in DAYS for d in days):
            bad(f"a slot's days are a list of {', '.join(DAYS)}")
            return None
        if not _CLOCK.match(start) or not _CLOCK.match(end) or start == end:
            bad(
                f"a slot's start and end are two different times HH:MM, "
                f"not {shown(start)!r} and {shown(end)!r}"
            )
            return None
        slots.append(
            Slot(
                tuple(sorted({DAYS.index(d) for d in days})),
                dt.time.fromisoformat(start),
                dt.time.fromisoformat(end),
            )
        )
    unknown = sorted(set(window) - {"timezone", "slots"})
    if unknown:
        bad(f"unknown field {unknown[0]!r} (known: timezone, slots)")
        return None
    return MaintenanceWindow(str(zone), tuple(slots))


def _parse_asset(chk: _Checker, raw: Any, index: int) -> Asset | None:
    if not isinstance(raw, Mapping):
        chk.add(f"must be a mapping of fields, not {_kind(raw)}", line=None, entry=f"#{index + 1}")
        return None
    raw_id = raw.get("asset_id")
    entry = f"'{raw_id}'" if isinstance(raw_id, str | int) and str(raw_id).strip() else f"#{index + 1}"
    before = len(chk.problems)
    chk.unknown_keys(raw, _ASSET_FIELDS, entry)

    values: dict[str, Any] = {
        "asset_id": chk.text(
            raw,
            "asset_id",
            entry,
            required=True,
            pattern=_IDENT,
            pattern_hint="use letters, digits, '.', '_' or '-'",
        ),
        "hostname": chk.text(
            raw,
            "hostname",
            entry,
            required=True,
            pattern=_HOSTNAME,
            pattern_hint="a host name has letters, digits, '-' and '.'",
        ),
        "ssh_user": chk.text(
            raw,
            "ssh_user",
            entry,
            required=True,
            pattern=_SSH_USER,
            pattern_hint="a user name has letters, digits, '_', '.' and '-', and does not start with '-'",
        ),
        "skpd": chk.text(raw, "skpd", entry, required=True),
        "skpd_name": chk.text(raw, "skpd_name", entry, required=False),
        "os": chk.text(raw, "os", entry, required=True),
        "registered_by": chk.text(raw, "registered_by", entry, required=True),
        "reviewed_by": chk.text(raw, "reviewed_by", entry, required=False),
        "notes": chk.text(raw, "notes", entry, required=False),
        "environment": chk.choice(raw, "environment", entry, ENVIRONMENTS, what="environment"),
        "status": chk.choice(raw, "status", entry, STATUSES, what="status"),
        "ssh_port": chk.port(raw, "ssh_port", entry, 22),
        "registered_on": chk.date(raw, "registered_on", entry),
        "last_reviewed": chk.date(raw, "last_reviewed", entry),
    }
    values["address"] = chk.address(raw, "address", entry, required=True, field="address")

    registered_on, last_reviewed = values["registered_on"], values["last_reviewed"]
    if registered_on and last_reviewed and last_reviewed < registered_on:
        chk.add(
            f"{last_reviewed} is before the entry was registered ({registered_on})",
            line=chk._line(raw, "last_reviewed"),
            entry=entry,
            field="last_reviewed",
        )

    repo = raw.get("backup_repository")
    values["backup_repository"] = None
    if repo is not None:
        repo_path = repo.get("path") if isinstance(repo, Mapping) else None
        if not isinstance(repo_path, str) or not repo_path.startswith("/"):
            chk.add(
                "must be a mapping with an absolute 'path' where backups are kept",
                line=chk._line(raw, "backup_repository"),
                entry=entry,
                field="backup_repository",
            )
        else:
            values["backup_repository"] = repo_path

    values["maintenance_window"] = _parse_window(chk, raw, entry)

    items_raw = raw.get("data")
    items: list[DataItem] = []
    if items_raw is not None and not isinstance(items_raw, list):
        chk.add(
            f"must be a list of data items, not {_kind(items_raw)}",
            line=chk._line(raw, "data"),
            entry=entry,
            field="data",
        )
        items_raw = []
    for i, item_raw in enumerate(items_raw or []):
        chk.within = f"data[{i}]" if isinstance(item_raw, Mapping) else ""
        try:
            item = _parse_item(chk, item_raw, entry, i)
        finally:
            chk.within = ""
        if item is None:
            continue
        if any(other.name == item.name for other in items):
            chk.add(
                f"data item name '{item.name}' is used twice in this entry",
                line=chk._line(item_raw),
                entry=entry,
                field=f"data[{i}].name",
            )
            continue
        items.append(item)

    if len(chk.problems) > before:
        return None
    return Asset(data=tuple(items), source=chk.file, line=chk._line(raw), **values)


def parse_register(document: Any, file: str, today: dt.date) -> tuple[Register, list[Problem]]:
    """Turn one file's YAML document into a register, with every problem found."""
    chk = _Checker(file, today)
    if not isinstance(document, Mapping):
        chk.add(f"must be a mapping with 'plugin' and 'assets', not {_kind(document)}", line=None)
        return Register(files=(file,), assets=()), chk.problems
    chk.unknown_keys(document, _TOP_FIELDS, None)
    if document.get("plugin") != PLUGIN_NAME:
        chk.add(
            f"must be '{PLUGIN_NAME}' so Ansible reads this file as inventory",
            line=chk._line(document, "plugin"),
            field="plugin",
        )
    version = document.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        chk.add(
            f"format version {version!r} is not one this pulih reads (it reads {FORMAT_VERSION})",
            line=chk._line(document, "version"),
            field="version",
        )
    raw_assets = document.get("assets")
    if not isinstance(raw_assets, list):
        chk.add(
            "must be a list of servers" if raw_assets is not None else "is missing (it is required)",
            line=chk._line(document, "assets"),
            field="assets",
        )
        raw_assets = []
    assets = [a for i, raw in enumerate(raw_assets) if (a := _parse_asset(chk, raw, i)) is not None]
    office = document.get("office")
    return Register(
        files=(file,), assets=tuple(assets), office=office if isinstance(office, str) else None
    ), chk.problems


def duplicate_problems(assets: list[Asset]) -> list[Problem]:
    """Asset ids and host names are unique; so are the addresses of servers not decommissioned."""
    problems: list[Problem] = []
    seen: dict[tuple[str, str], Asset] = {}
    for asset in assets:
        keys = [("asset_id", asset.asset_id), ("hostname", asset.hostname.lower())]
        if asset.status != "decommissioned":
            keys.append(("address", asset.address.lower()))
        for field_name, value in keys:
            first = seen.setdefault((field_name, value), asset)
            if first is asset:
                continue
            where = f"{first.source}:{first.line}" if first.line else first.source
            problems.append(
                Problem(
                    asset.source,
                    f"'{getattr(asset, field_name)}' is already used by entry '{first.asset_id}' ({where})",
                    line=asset.line,
                    entry=f"'{asset.asset_id}'",
                    field=field_name,
                )
            )
    return problems


# --------------------------------------------------------------------------- loading


def find_register_files(inventory: Path) -> list[Path]:
    """The register files of an inventory: the file itself, or every
    ``*.asset_register.yml`` below a directory (as Ansible would read them)."""
    if inventory.is_file():
        return [inventory]
    if inventory.is_dir():
        return sorted(p for p in inventory.rglob("*") if p.is_file() and p.name.endswith(REGISTER_SUFFIXES))
    return []


def load_file(path: Path, today: dt.date | None = None) -> Register:
    """Load and validate one register file; raise RegisterError with every problem."""
    today = today or dt.date.today()
    register, problems = parse_register(_read_yaml(path), str(path), today)
    problems += duplicate_problems(list(register.assets))
    if problems:
        raise RegisterError(problems)
    return register


def load_inventory(inventory: Path, today: dt.date | None = None) -> Register:
    """Load every register file of an inventory as one register."""
    today = today or dt.date.today()
    files = find_register_files(inventory)
    if not files:
        what = "does not exist" if not inventory.exists() else "holds no *.asset_register.yml file"
        raise RegisterError(
            [Problem(str(inventory), f"{what}: pass the register file or its folder with -i")]
        )
    problems: list[Problem] = []
    assets: list[Asset] = []
    office: str | None = None
    for path in files:
        try:
            document = _read_yaml(path)
        except RegisterError as exc:
            problems += exc.problems
            continue
        register, found = parse_register(document, str(path), today)
        problems += found
        assets += register.assets
        office = office or register.office
    problems += duplicate_problems(assets)
    if problems:
        raise RegisterError(problems)
    return Register(files=tuple(str(p) for p in files), assets=tuple(assets), office=office)


def check(register: Register, today: dt.date, max_age_days: int = REVIEW_MAX_AGE_DAYS) -> list[Finding]:
    """The SOP's warnings on a valid register.

    The register must be reviewed at least once a year: an entry (other than a
    decommissioned one, which is history) last reviewed more than ``max_age_days``
    ago is a finding.
    """
    findings = []
    for asset in register.assets:
        if asset.review_overdue(today, max_age_days):
            age = asset.review_age_days(today)
            findings.append(
                Finding(
                    kind="review_overdue",
                    asset_id=asset.asset_id,
                    hostname=asset.hostname,
                    message=(
                        f"last reviewed {asset.last_reviewed} ({age} days ago); the SOP asks for "
                        f"a review at least every {max_age_days} days"
                    ),
                    file=asset.source,
                    line=asset.line,
                )
            )
    return findings


def host_vars(asset: Asset, today: dt.date, max_age_days: int = REVIEW_MAX_AGE_DAYS) -> dict[str, Any]:
    """The variables the inventory plugin gives a host."""
    overdue = asset.review_overdue(today, max_age_days)
    return {
        "ansible_host": asset.address,
        "ansible_port": asset.ssh_port,
        "ansible_user": asset.ssh_user,
        "pulih_asset": {
            "asset_id": asset.asset_id,
            "hostname": asset.hostname,
            "skpd": asset.skpd,
            "skpd_name": asset.skpd_name,
            "environment": asset.environment,
            "status": asset.status,
            "os": asset.os,
            "registered_by": asset.registered_by,
            "registered_on": asset.registered_on.isoformat(),
            "last_reviewed": asset.last_reviewed.isoformat(),
            "review_overdue": overdue,
            "register_file": asset.source,
        },
        "pulih_data_items": [item.as_dict() for item in asset.data],
        "pulih_repository_path": asset.backup_repository,
    }


@dataclass
class CheckResult:
    """What `pulih register check` found, ready for the terminal or --json."""

    inventory: str
    today: dt.date
    register: Register | None = None
    findings: list[Finding] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def status(self) -> Literal["clean", "findings", "invalid"]:
        if self.problems:
            return "invalid"
        return "findings" if self.findings else "clean"

    def as_dict(self) -> dict[str, Any]:
        reg = self.register
        return {
            "inventory": self.inventory,
            "today": self.today.isoformat(),
            "status": self.status,
            "files": list(reg.files) if reg else [],
            "assets": len(reg.assets) if reg else 0,
            "hosts": [a.hostname for a in reg.hosts()] if reg else [],
            "not_in_inventory": [
                {"asset_id": a.asset_id, "hostname": a.hostname, "status": a.status}
                for a in (reg.assets if reg else ())
                if not a.in_operation
            ],
            "findings": [f.as_dict() for f in self.findings],
            "errors": [p.as_dict() for p in self.problems],
        }


def run_check(inventory: Path, today: dt.date, max_age_days: int = REVIEW_MAX_AGE_DAYS) -> CheckResult:
    result = CheckResult(inventory=str(inventory), today=today)
    try:
        result.register = load_inventory(inventory, today)
    except RegisterError as exc:
        result.problems = exc.problems
        return result
    result.findings = check(result.register, today, max_age_days)
    return result

#!/usr/bin/env python3
# Copyright: pulih maintainers
# Apache License 2.0
"""pulih's receiver: the only thing a data server's key may run on the backup repository host.

Installed by pulih_common on the repository host and named in each key's authorized_keys line:

    restrict,command="/usr/bin/python3 /var/lib/pulih/pulih_receiver.py --repository /srv/pulih-repo
      --asset DC-SRV-2023-001" ssh-ed25519 AAAA... pulih@simpeg-db01
    restrict,command="/usr/bin/python3 /var/lib/pulih/pulih_receiver.py --repository /srv/pulih-repo
      --controller" ssh-ed25519 AAAA... pulih-controller

`restrict` takes away the shell, the terminal and every forwarding; the receiver reads the one
command the client asked for (SSH_ORIGINAL_COMMAND), split on blanks (never a shell), and does
it or refuses it. A data server's key (--asset) may only, for its own asset:

    store ITEM BACKUP_ID ARTIFACT [NEED_FREE_BYTES]   standard input -> a new artifact of an
                                                      unpublished backup; answers its SHA-256 and size
    publish ITEM BACKUP_ID                            standard input: the manifest; published only when
                                                      every artifact is the one the receiver stored
    abort ITEM BACKUP_ID                              an unpublished backup removed
    list ITEM                                         its published backups (JSON)
    fetch ITEM BACKUP_ID ARTIFACT                     an artifact of its own published backup
    fetch-granted GRANT_ID ARTIFACT                   another asset's, under a grant the controller placed

The controller's key (--controller) may list any asset's backups (`list [ASSET [ITEM]]`, each
with its last verification), recompute a published backup's checksums (`checksums ASSET ITEM
BACKUP_ID`), protect the backups a request depends on (`protect REQUEST_ID [allow-unverified]`,
the list on standard input; `unprotect REQUEST_ID`), prune one for retention (`prune ASSET ITEM
BACKUP_ID`, refused while it is protected), place and take back one-job
grants (`grant GRANT_ID GRANTEE ASSET ITEM BACKUP_ID SECONDS`, `revoke-grant GRANT_ID`) and
append a verification (`verification ASSET ITEM BACKUP_ID`, its JSON on standard input), and
append to and read the service's anchor log (`anchor-append`, one signed head of its audit
chain on standard input, refused unless it comes after the last; `anchor-read`). Nothing
replaces or edits a published backup, and only the controller's prune removes one. Every answer
is one JSON line on standard output (a fetch's is the artifact itself); a refusal is one line on
standard error and exit 3, a bad command exit 2, a failure exit 1. Standard library only,
Python 3.9+ (the repository host's).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

BAD_COMMAND, REFUSED, FAILED = 2, 3, 1
CHUNK = 1 << 20
MANIFEST = "manifest.json"
VERIFICATIONS = "verifications.jsonl"
TMP_PREFIX = ".tmp-"
STORED = ".stored.json"  # in an unpublished backup: what the receiver itself stored, and its hash
GRANTS = ".grants"
# Backups an open request depends on (schemas/protected.schema.json): never pruned.
PROTECTED = ".pulih-protected.json"
PROTECTED_FORMAT = "pulih.protected/1"
PRUNED_PREFIX = ".pruned-"  # a pruned backup, renamed out of the listing before it is removed
MAX_GRANT_SECONDS = 7 * 86400
ANCHOR = ".pulih-anchor.jsonl"  # the service's audit chain heads, one signed line each, append-only
ANCHOR_FORMAT = "pulih.anchor/1"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_DOCUMENT = 4 << 20  # a manifest or a verification: a few KiB; a file tree's list is an artifact

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # an asset id or an item, as the register has them
BACKUP_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{4}$")
GRANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{7,63}$")
ARTIFACTS = {
    f"{base}{suffix}"
    for base in ("database.pgdump.zst", "database.sql.zst", "files.tar.zst", "globals.sql.zst")
    for suffix in ("", ".age")
} | {"files.jsonl"}


class Refusal(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def refuse(message: str, code: int = REFUSED) -> NoReturn:
    raise Refusal(code, message)


def answer(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
    sys.stdout.flush()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checked(value: str, pattern: re.Pattern[str], what: str) -> str:
    if not pattern.match(value):
        refuse(f"{what} {value!r} is not valid", BAD_COMMAND)
    return value


def real_dir(path: str, what: str) -> str:
    """A directory that is no symbolic link (the repository's own layout, never a way out)."""
    if os.path.islink(path) or not os.path.isdir(path):
        refuse(f"{what} does not exist")
    return path


def read_document(limit: int = MAX_DOCUMENT) -> dict[str, Any]:
    raw = sys.stdin.buffer.read(limit + 1)
    if len(raw) > limit:
        refuse(f"the document on standard input is larger than {limit} bytes", BAD_COMMAND)
    try:
        doc = json.loads(raw)
    except ValueError:
        refuse("the document on standard input is not JSON", BAD_COMMAND)
    if not isinstance(doc, dict):
        refuse("the document on standard input is not a JSON object", BAD_COMMAND)
    return doc


def write_new(path: str, data: bytes, mode: int = 0o640) -> None:
    """A new file, written whole and flushed, or nothing (an existing one is never replaced)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: str, data: bytes, mode: int = 0o640) -> None:
    """Replace a file of the receiver's own (never a backup's) whole: written beside, then renamed."""
    part = f"{path}.{os.getpid()}"
    write_new(part, data, mode)
    os.rename(part, path)
    fsync_dir(os.path.dirname(path))


def size_text(count: int) -> str:
    return f"{count / (1 << 30):.1f} GiB" if count >= 1 << 27 else f"{count / (1 << 20):.1f} MiB"


def being_stored(path: str) -> bool:
    """Whether a live store holds the lock on a file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class Repository:
    def __init__(self, root: str, stale_hours: float = 1) -> None:
        self.root = real_dir(os.path.abspath(root), f"the repository {root}")
        self.stale_hours = stale_hours

    def item_dir(self, asset: str, item: str, *, create: bool = False) -> str:
        path = self.root
        for part in (asset, item):
            path = os.path.join(path, part)
            if create and not os.path.lexists(path):
                os.mkdir(path, 0o750)
            real_dir(path, f"{asset}/{item}")
        return path

    def unpublished(self, asset: str, item: str, backup_id: str, *, create: bool = False) -> str:
        item_dir = self.item_dir(asset, item, create=create)
        if os.path.lexists(os.path.join(item_dir, backup_id)):
            refuse(f"backup {asset}/{item}/{backup_id} is published: it is never written again")
        path = os.path.join(item_dir, TMP_PREFIX + backup_id)
        if create and not os.path.lexists(path):
            os.mkdir(path, 0o700)
        return real_dir(path, f"unpublished backup {asset}/{item}/{backup_id}")

    def published(self, asset: str, item: str, backup_id: str) -> str:
        path = os.path.join(self.item_dir(asset, item), backup_id)
        if not os.path.isfile(os.path.join(real_dir(path, f"backup {asset}/{item}/{backup_id}"), MANIFEST)):
            refuse(f"backup {asset}/{item}/{backup_id} is not published")
        return path

    # ------------------------------------------------------------------ a data server's verbs

    def store(self, asset: str, item: str, backup_id: str, artifact: str, need_free: int) -> None:
        where = os.path.join(self.root, asset, item)
        while not os.path.isdir(where):  # the filesystem the item's folder is (or will be) on
            where = os.path.dirname(where)
        free = shutil.disk_usage(where).free
        if need_free and free < need_free:
            refuse(
                f"not enough room in the repository: {size_text(free)} free at {where}, and this "
                "item's last backup plus the margin (pulih_common_space_margin_percent) needs "
                f"{size_text(need_free)}; free space or add disk, nothing was streamed",
                FAILED,
            )
        item_dir = self.item_dir(asset, item, create=True)
        new = not os.path.lexists(os.path.join(item_dir, TMP_PREFIX + backup_id))
        tmp = self.unpublished(asset, item, backup_id, create=True)
        if new:
            self._drop_stale(item_dir, keep=tmp)
        path = os.path.join(tmp, artifact)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
        except FileExistsError:
            refuse(f"{artifact} of {asset}/{item}/{backup_id} was stored already")
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as out:
                fcntl.flock(out.fileno(), fcntl.LOCK_EX)  # a live store is never taken for a dead one
                while chunk := sys.stdin.buffer.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:  # a full disk: what was written is no backup
            os.unlink(path)
            if exc.errno == errno.ENOSPC:
                refuse(
                    f"the repository filesystem is full (no space left on device) while storing {artifact} "
                    f"of {asset}/{item}/{backup_id}",
                    FAILED,
                )
            refuse(f"cannot store {artifact} of {asset}/{item}/{backup_id}: {exc.strerror}", FAILED)
        with self._locked(tmp):  # two artifacts of one backup stored at once both stay on record
            stored = self._stored(tmp)
            stored[artifact] = {"sha256": digest.hexdigest(), "size": size}
            self._write_stored(tmp, stored)
        answer({"artifact": artifact, "sha256": digest.hexdigest(), "size": size})

    def publish(self, asset: str, item: str, backup_id: str) -> None:
        manifest = read_document()
        tmp = self.unpublished(asset, item, backup_id)
        for key, want in (("backup_id", backup_id), ("asset_id", asset), ("item", item)):
            if manifest.get(key) != want:
                refuse(f"the manifest's {key} is {manifest.get(key)!r}, not {want!r}: not published")
        stored = self._stored(tmp)
        named = manifest.get("artifacts")
        if not isinstance(named, list) or not named:
            refuse("the manifest names no artifacts: not published", BAD_COMMAND)
        names = set()
        for artifact in named:
            name = artifact.get("name") if isinstance(artifact, dict) else None
            mine = stored.get(name) if isinstance(name, str) else None
            if mine is None:
                refuse(f"the manifest names {name!r}, which the receiver did not store: not published")
            if (artifact.get("sha256"), artifact.get("size")) != (mine["sha256"], mine["size"]):
                refuse(
                    f"{name}: the manifest says sha256 {artifact.get('sha256')} and {artifact.get('size')} "
                    f"bytes, the receiver stored {mine['sha256']} and {mine['size']} bytes: not published"
                )
            names.add(name)
        if names != set(stored):
            refuse(f"stored but not in the manifest: {', '.join(sorted(set(stored) - names))}: not published")
        write_new(
            os.path.join(tmp, MANIFEST), (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        )
        os.unlink(os.path.join(tmp, STORED))
        os.chmod(tmp, 0o750)
        fsync_dir(tmp)
        final = os.path.join(os.path.dirname(tmp), backup_id)
        if os.path.lexists(final):
            refuse(f"backup {asset}/{item}/{backup_id} is published: it is never written again")
        os.rename(tmp, final)
        fsync_dir(os.path.dirname(final))
        answer({"published": backup_id, "artifacts": {n: stored[n]["sha256"] for n in sorted(names)}})

    def abort(self, asset: str, item: str, backup_id: str) -> None:
        tmp = self.unpublished(asset, item, backup_id)
        # A store of it still running (its client was killed, the link not yet closed) ends first.
        for name in os.listdir(tmp):
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(tmp, name), os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                finally:
                    os.close(fd)
        with self._locked(tmp):
            shutil.rmtree(tmp)
        answer({"aborted": backup_id})

    def list(self, asset: str | None, item: str | None) -> None:
        found = []
        for asset_id in sorted(os.listdir(self.root)) if asset is None else [asset]:
            asset_dir = os.path.join(self.root, asset_id)
            if asset_id.startswith(".") or os.path.islink(asset_dir) or not os.path.isdir(asset_dir):
                continue
            for item_name in sorted(os.listdir(asset_dir)) if item is None else [item]:
                item_dir = os.path.join(asset_dir, item_name)
                if item_name.startswith(".") or os.path.islink(item_dir) or not os.path.isdir(item_dir):
                    continue
                for backup_id in sorted(os.listdir(item_dir)):
                    manifest_path = os.path.join(item_dir, backup_id, MANIFEST)
                    if backup_id.startswith(".") or not os.path.isfile(manifest_path):
                        continue
                    try:
                        with open(manifest_path, "rb") as handle:
                            manifest = json.load(handle)
                    except (OSError, ValueError):
                        manifest = None  # listed as unreadable: never restored, never pruned unseen
                    last = self._last_verification(os.path.join(item_dir, backup_id))
                    found.append(
                        {
                            "asset_id": asset_id,
                            "item": item_name,
                            "backup_id": backup_id,
                            "manifest": manifest,
                            "readable": manifest is not None,
                            "verified": bool(last and last.get("ok")),
                            "last_verification": last,
                        }
                    )
        protected = [
            e
            for e in self._protected()
            if (asset is None or e.get("asset_id") == asset) and (item is None or e.get("item") == item)
        ]
        answer({"backups": found, "protected": protected})

    def fetch(self, asset: str, item: str, backup_id: str, artifact: str) -> None:
        path = os.path.join(self.published(asset, item, backup_id), artifact)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            refuse(f"backup {asset}/{item}/{backup_id} has no {artifact}")
        with os.fdopen(fd, "rb") as handle:
            while chunk := handle.read(CHUNK):
                sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()

    def fetch_granted(self, grantee: str, grant_id: str, artifact: str) -> None:
        grant = self.grant_of(grant_id)
        if grant.get("grantee") != grantee:
            refuse(f"grant {grant_id} is not this server's")
        expires = dt.datetime.fromisoformat(str(grant.get("expires_at")).replace("Z", "+00:00"))
        if expires <= utcnow():
            refuse(f"grant {grant_id} expired at {grant['expires_at']}")
        self.fetch(grant["asset"], grant["item"], grant["backup_id"], artifact)

    # ------------------------------------------------------------------ the controller's verbs

    def checksums(self, asset: str, item: str, backup_id: str) -> None:
        """The SHA-256 and size of every artifact of a published backup, as the repository reads
        it now (a restore refuses a backup whose bytes changed before it touches anything)."""
        path = self.published(asset, item, backup_id)
        sums = {}
        for name in sorted(os.listdir(path)):
            if name not in ARTIFACTS:
                continue
            digest, size = hashlib.sha256(), 0
            with open(os.path.join(path, name), "rb") as handle:
                while chunk := handle.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
            sums[name] = {"sha256": digest.hexdigest(), "size": size}
        answer({"backup_id": backup_id, "artifacts": sums})

    def protect(self, request_id: str, allow_unverified: bool) -> None:
        """Protect the backups a request's plan names (standard input: {"backups": [{asset_id,
        item, backup_id}]}), replacing its earlier list; each must be published, and verified
        unless allowed otherwise. Nothing is written when one is refused."""
        doc = read_document(1 << 20)
        named = doc.get("backups")
        if not isinstance(named, list) or not all(isinstance(b, dict) for b in named):
            refuse("the document names no backups (a list of {asset_id, item, backup_id})", BAD_COMMAND)
        with self._locked(self.root):
            current = self._protected()
            now = utcnow().replace(microsecond=0).isoformat().replace("+00:00", "Z")
            missing, unverified, wanted = [], [], []
            for entry in named:
                key = self._key(entry)
                label = "%s:%s=%s" % key
                if not (NAME.match(key[0]) and NAME.match(key[1]) and BACKUP_ID.match(key[2])):
                    refuse(f"{label} is not a backup's name", BAD_COMMAND)
                backup_dir = os.path.join(self.root, *key)
                if not os.path.isfile(os.path.join(backup_dir, MANIFEST)) or os.path.islink(backup_dir):
                    missing.append(label)
                elif not (self._last_verification(backup_dir) or {}).get("ok"):
                    unverified.append(label)
                earlier = [e for e in current if e.get("request_id") == request_id and self._key(e) == key]
                fresh = {"asset_id": key[0], "item": key[1], "backup_id": key[2], "request_id": request_id}
                wanted.append(earlier[0] if earlier else {**fresh, "since": now})
            if missing:
                refuse(f"not in the repository: {', '.join(missing)}")
            if unverified and not allow_unverified:
                refuse(
                    "not verified (its last verification did not succeed, or none ran): "
                    + ", ".join(unverified)
                )
            after = [e for e in current if e.get("request_id") != request_id] + wanted
            self._write_protected(after)
        answer({"request_id": request_id, "protected": after, "unverified": unverified})

    def unprotect(self, request_id: str) -> None:
        with self._locked(self.root):
            current = self._protected()
            after = [e for e in current if e.get("request_id") != request_id]
            if len(after) != len(current):
                self._write_protected(after)
        answer({"request_id": request_id, "lifted": len(current) - len(after), "protected": after})

    def prune(self, asset: str, item: str, backup_id: str) -> None:
        """Retention's removal of one published backup, refused for a protected one."""
        path = self.published(asset, item, backup_id)
        with self._locked(self.root):  # no protection is placed on it while it goes
            holders = [e["request_id"] for e in self._protected() if self._key(e) == (asset, item, backup_id)]
            if holders:
                refuse(f"backup {asset}/{item}/{backup_id} is protected by {', '.join(holders)}: not pruned")
            gone = os.path.join(os.path.dirname(path), PRUNED_PREFIX + backup_id)
            os.rename(path, gone)  # out of every listing at once
            fsync_dir(os.path.dirname(path))
        shutil.rmtree(gone)
        answer({"pruned": backup_id})

    def grant(self, grant_id: str, grantee: str, asset: str, item: str, backup_id: str, seconds: int) -> None:
        self.published(asset, item, backup_id)
        if not 1 <= seconds <= MAX_GRANT_SECONDS:
            refuse(f"a grant lasts from 1 to {MAX_GRANT_SECONDS} seconds, not {seconds}", BAD_COMMAND)
        grants = os.path.join(self.root, GRANTS)
        if not os.path.lexists(grants):
            os.mkdir(grants, 0o700)
        real_dir(grants, "the grants folder")
        self._drop_expired(grants)
        expires = (utcnow() + dt.timedelta(seconds=seconds)).replace(microsecond=0)
        doc = {
            "format": "pulih.grant/1",
            "id": grant_id,
            "grantee": grantee,
            "asset": asset,
            "item": item,
            "backup_id": backup_id,
            "expires_at": expires.isoformat().replace("+00:00", "Z"),
        }
        try:
            write_new(
                os.path.join(grants, grant_id + ".json"), (json.dumps(doc, sort_keys=True) + "\n").encode()
            )
        except FileExistsError:
            refuse(f"grant {grant_id} exists already")
        answer(doc)

    def revoke_grant(self, grant_id: str) -> None:
        self.grant_of(grant_id)
        os.unlink(os.path.join(self.root, GRANTS, grant_id + ".json"))
        answer({"revoked": grant_id})

    def anchor_append(self) -> None:
        """One head of the service's audit chain (a signed pulih.anchor/1 line) appended to the
        anchor log. The log only grows: a head at or before the last one is refused, and
        nothing here rewrites or truncates it (the installer also makes it chattr +a)."""
        doc = read_document(64 << 10)
        seq = doc.get("seq")
        if (
            doc.get("format") != ANCHOR_FORMAT
            or not isinstance(seq, int)
            or isinstance(seq, bool)
            or not HEX64.match(str(doc.get("hash", "")))
        ):
            refuse("an anchor line is a pulih.anchor/1 document with its seq and hash", BAD_COMMAND)
        line = (json.dumps(doc, sort_keys=True) + "\n").encode()
        fd = os.open(
            os.path.join(self.root, ANCHOR), os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            last = self._last_anchored(fd)
            if last is not None and seq <= last:
                refuse(f"the anchor only grows: seq {seq} is not after the last anchored seq {last}")
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        answer({"anchored": seq})

    def anchor_read(self) -> None:
        """The anchor log as it is: a first line saying whether there is one, then its lines."""
        try:
            fd = os.open(os.path.join(self.root, ANCHOR), os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            answer({"exists": False})
            return
        answer({"exists": True})
        with os.fdopen(fd, "rb") as handle:
            while True:
                chunk = handle.read(CHUNK)
                if not chunk:
                    break
                sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()

    @staticmethod
    def _last_anchored(fd: int) -> int | None:
        """The seq of the anchor log's last line (read from its tail: the log grows for years)."""
        size = os.fstat(fd).st_size
        start = max(0, size - 65536)
        tail = os.pread(fd, size - start, start).decode("utf-8", "replace").splitlines()
        for raw in reversed(tail[1:] if start else tail):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                return int(json.loads(raw)["seq"])
        return None

    def verification(self, asset: str, item: str, backup_id: str) -> None:
        doc = read_document(64 << 10)
        line = (json.dumps(doc, sort_keys=True) + "\n").encode()
        fd = os.open(
            os.path.join(self.published(asset, item, backup_id), VERIFICATIONS),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW,
            0o640,
        )
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        answer({"recorded": backup_id})

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _last_verification(backup_dir: str) -> dict[str, Any] | None:
        last = None
        path = os.path.join(backup_dir, VERIFICATIONS)
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as handle:
            for raw in handle:
                with contextlib.suppress(ValueError):  # a torn last line of an interrupted append
                    last = json.loads(raw)
        return last if isinstance(last, dict) else None

    @staticmethod
    def _key(entry: dict[str, Any]) -> tuple[str, ...]:
        return tuple(str(entry.get(k, "")) for k in ("asset_id", "item", "backup_id"))

    def _protected(self) -> list[dict[str, Any]]:
        """The protected list; one that cannot be read fails the command (never prune on it)."""
        path = os.path.join(self.root, PROTECTED)
        try:
            with open(path, "rb") as handle:
                doc = json.load(handle)
        except FileNotFoundError:
            return []
        except ValueError:
            refuse(f"the repository's protected list {PROTECTED} is not JSON: repair it first", FAILED)
        if (
            not isinstance(doc, dict)
            or doc.get("format") != PROTECTED_FORMAT
            or not isinstance(doc.get("backups"), list)
        ):
            refuse(
                f"the repository's protected list {PROTECTED} is not a {PROTECTED_FORMAT} document", FAILED
            )
        entries: list[dict[str, Any]] = doc["backups"]
        return entries

    def _write_protected(self, entries: list[dict[str, Any]]) -> None:
        doc = {"format": PROTECTED_FORMAT, "backups": entries}
        replace_file(
            os.path.join(self.root, PROTECTED), (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
        )

    def grant_of(self, grant_id: str) -> dict[str, Any]:
        path = os.path.join(self.root, GRANTS, grant_id + ".json")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            refuse(f"there is no grant {grant_id}")
        with os.fdopen(fd, "rb") as handle:
            grant: dict[str, Any] = json.load(handle)
        return grant

    def _drop_stale(self, item_dir: str, keep: str) -> None:
        """Unpublished backups of runs that died: no store holds a lock on any of their files and
        nothing in them changed for `stale_hours`. Never listed, never restorable: removed."""
        cutoff = utcnow().timestamp() - self.stale_hours * 3600
        for name in os.listdir(item_dir):
            path = os.path.join(item_dir, name)
            if not name.startswith(TMP_PREFIX) or path == keep or os.path.islink(path):
                continue
            with contextlib.suppress(OSError):
                files = [os.path.join(path, f) for f in os.listdir(path)]
                if max(
                    [os.lstat(path).st_mtime] + [os.lstat(f).st_mtime for f in files]
                ) < cutoff and not any(being_stored(f) for f in files):
                    shutil.rmtree(path)

    @staticmethod
    def _drop_expired(grants: str) -> None:
        for name in os.listdir(grants):
            path = os.path.join(grants, name)
            try:
                with open(path, "rb") as handle:
                    expires = json.load(handle)["expires_at"]
                if dt.datetime.fromisoformat(expires.replace("Z", "+00:00")) <= utcnow():
                    os.unlink(path)
            except (OSError, ValueError, KeyError):
                continue

    @staticmethod
    @contextlib.contextmanager
    def _locked(tmp: str) -> Iterator[None]:
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @staticmethod
    def _stored(tmp: str) -> dict[str, Any]:
        try:
            with open(os.path.join(tmp, STORED), "rb") as handle:
                stored: dict[str, Any] = json.load(handle)
        except FileNotFoundError:
            return {}
        return stored

    @staticmethod
    def _write_stored(tmp: str, stored: dict[str, Any]) -> None:
        replace_file(os.path.join(tmp, STORED), (json.dumps(stored, sort_keys=True) + "\n").encode(), 0o600)


# Each verb: the words it takes and how they are checked.
ASSET_VERBS = {
    "store": (("item", NAME), ("backup", BACKUP_ID), ("artifact", None)),
    "publish": (("item", NAME), ("backup", BACKUP_ID)),
    "abort": (("item", NAME), ("backup", BACKUP_ID)),
    "list": (("item", NAME),),
    "fetch": (("item", NAME), ("backup", BACKUP_ID), ("artifact", None)),
    "fetch-granted": (("grant", GRANT_ID), ("artifact", None)),
}
CONTROLLER_VERBS = {
    "list": (),
    "checksums": (("asset", NAME), ("item", NAME), ("backup", BACKUP_ID)),
    "grant": (("grant", GRANT_ID), ("grantee", NAME), ("asset", NAME), ("item", NAME), ("backup", BACKUP_ID)),
    "revoke-grant": (("grant", GRANT_ID),),
    "protect": (("request", NAME),),
    "unprotect": (("request", NAME),),
    "prune": (("asset", NAME), ("item", NAME), ("backup", BACKUP_ID)),
    "verification": (("asset", NAME), ("item", NAME), ("backup", BACKUP_ID)),
    "anchor-append": (),
    "anchor-read": (),
}


def parse(command: str, controller: bool) -> tuple[str, dict[str, str], list[str]]:
    """The verb, its checked words, and the optional words after them."""
    words = command.split()
    if not words:
        refuse(
            "this key runs the pulih receiver only; name a command (store, publish, list, fetch, ...)",
            BAD_COMMAND,
        )
    verbs = CONTROLLER_VERBS if controller else ASSET_VERBS
    verb, rest = words[0], words[1:]
    if verb not in verbs:
        whose = "the controller's" if controller else "a data server's"
        refuse(
            f"{verb!r} is not a command {whose} key may run (it may: {', '.join(sorted(verbs))})", BAD_COMMAND
        )
    spec = verbs[verb]
    if len(rest) < len(spec):
        refuse(f"{verb} takes {' '.join(name.upper() for name, _ in spec)}", BAD_COMMAND)
    named = {}
    for (name, pattern), value in zip(spec, rest[: len(spec)]):  # noqa: B905 - Python 3.9 hosts
        if pattern is None:
            if value not in ARTIFACTS and not (
                verb.startswith("fetch") and value in (MANIFEST, VERIFICATIONS)
            ):
                refuse(f"{value!r} is not an artifact of a pulih backup", BAD_COMMAND)
            named[name] = value
        else:
            named[name] = checked(value, pattern, name)
    return verb, named, rest[len(spec) :]


def number(words: list[str], what: str, default: int | None = None) -> int:
    if not words and default is not None:
        return default
    if len(words) != 1 or not words[0].isdigit():
        refuse(f"{what} is one whole number", BAD_COMMAND)
    return int(words[0])


def run(args: argparse.Namespace, command: str) -> None:
    repo = Repository(args.repository, args.stale_hours)
    verb, w, extra = parse(command, args.controller)
    if args.controller:
        if verb == "list":
            asset = checked(extra[0], NAME, "asset") if extra else None
            item = checked(extra[1], NAME, "item") if len(extra) > 1 else None
            repo.list(asset, item)
        elif verb == "grant":
            repo.grant(w["grant"], w["grantee"], w["asset"], w["item"], w["backup"], number(extra, "SECONDS"))
        elif verb == "revoke-grant":
            repo.revoke_grant(w["grant"])
        elif verb == "checksums":
            repo.checksums(w["asset"], w["item"], w["backup"])
        elif verb == "protect":
            if extra not in ([], ["allow-unverified"]):
                refuse("protect takes REQUEST_ID [allow-unverified]", BAD_COMMAND)
            repo.protect(w["request"], allow_unverified=bool(extra))
        elif verb == "unprotect":
            repo.unprotect(w["request"])
        elif verb == "prune":
            repo.prune(w["asset"], w["item"], w["backup"])
        elif verb in ("anchor-append", "anchor-read"):
            if extra:
                refuse(f"{verb} takes no words", BAD_COMMAND)
            repo.anchor_append() if verb == "anchor-append" else repo.anchor_read()
        else:
            repo.verification(w["asset"], w["item"], w["backup"])
        return
    if extra and verb != "store":
        refuse(f"{verb} takes no more words", BAD_COMMAND)
    asset = args.asset
    if verb == "store":
        repo.store(asset, w["item"], w["backup"], w["artifact"], number(extra, "NEED_FREE_BYTES", 0))
    elif verb == "publish":
        repo.publish(asset, w["item"], w["backup"])
    elif verb == "abort":
        repo.abort(asset, w["item"], w["backup"])
    elif verb == "list":
        repo.list(asset, w["item"])
    elif verb == "fetch":
        repo.fetch(asset, w["item"], w["backup"], w["artifact"])
    else:
        repo.fetch_granted(asset, w["grant"], w["artifact"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", required=True)
    parser.add_argument(
        "--stale-hours",
        type=float,
        default=1,
        help="idle hours after which a dead run's unpublished backup goes (a live store holds a lock)",
    )
    whose = parser.add_mutually_exclusive_group(required=True)
    whose.add_argument("--asset", help="the asset id whose data server's key this is")
    whose.add_argument("--controller", action="store_true", help="the controller's key")
    args = parser.parse_args(argv)
    if args.asset is not None and not NAME.match(args.asset):
        print(f"pulih receiver: --asset {args.asset!r} is not an asset id", file=sys.stderr)
        return BAD_COMMAND
    os.umask(0o027)
    try:
        run(args, os.environ.get("SSH_ORIGINAL_COMMAND", ""))
    except Refusal as exc:
        print(f"pulih receiver: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:  # the client went away in the middle of a fetch
        return FAILED
    except (OSError, ValueError) as exc:
        print(f"pulih receiver: failed: {exc}", file=sys.stderr)
        return FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())

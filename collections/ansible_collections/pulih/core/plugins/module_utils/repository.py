# Copyright: pulih maintainers
# Apache License 2.0
"""The backup repository's layout, shared by pulih.core's modules.

    <repository>/<asset_id>/<item>/<backup_id>/manifest.json       published backup
    <repository>/<asset_id>/<item>/<backup_id>/verifications.jsonl one line per verification
    <repository>/<asset_id>/<item>/.tmp-<backup_id>/                being written; never listed

A backup directory appears under its final name only by an atomic rename after every
artifact and the manifest are on disk; anything starting with '.' is not a backup.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time

MANIFEST = "manifest.json"
VERIFICATIONS = "verifications.jsonl"
TMP_PREFIX = ".tmp-"
# Backups that open requests depend on (schemas/protected.schema.json): retention never
# prunes them, whoever runs it.
PROTECTED = ".pulih-protected.json"
PROTECTED_FORMAT = "pulih.protected/1"


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_verifications(backup_dir):
    path = os.path.join(backup_dir, VERIFICATIONS)
    found = []
    if os.path.isfile(path):
        with open(path, "rb") as handle:
            for raw in handle:
                try:
                    found.append(json.loads(raw))
                except ValueError:
                    continue  # a torn last line of an interrupted append
    return found


def list_backups(repository, asset=None, item=None):
    """Published backups, oldest first per item, with their last verification."""
    out = []
    if not os.path.isdir(repository):
        return out
    for asset_id in sorted(os.listdir(repository)):
        if asset_id.startswith(".") or (asset and asset_id != asset):
            continue
        asset_dir = os.path.join(repository, asset_id)
        if not os.path.isdir(asset_dir):
            continue
        for item_name in sorted(os.listdir(asset_dir)):
            if item_name.startswith(".") or (item and item_name != item):
                continue
            item_dir = os.path.join(asset_dir, item_name)
            if not os.path.isdir(item_dir):
                continue
            for backup_id in sorted(os.listdir(item_dir)):
                backup_dir = os.path.join(item_dir, backup_id)
                if backup_id.startswith(".") or not os.path.isfile(os.path.join(backup_dir, MANIFEST)):
                    continue
                try:
                    with open(os.path.join(backup_dir, MANIFEST), "rb") as handle:
                        manifest = json.load(handle)
                except (OSError, ValueError):
                    manifest = None
                verifications = read_verifications(backup_dir)
                last = verifications[-1] if verifications else None
                out.append(
                    {
                        "backup_id": backup_id,
                        "asset_id": asset_id,
                        "item": item_name,
                        "path": backup_dir,
                        "manifest": manifest,
                        "readable": manifest is not None,
                        "verified": bool(last and last.get("ok")),
                        "last_verification": last,
                    }
                )
    return out


def read_protected(repository):
    """The protected backups of a repository: [{asset_id, item, backup_id, request_id, since}]."""
    path = os.path.join(repository, PROTECTED)
    if not os.path.exists(path):
        return []
    with open(path, "rb") as handle:
        doc = json.load(handle)  # a broken file fails retention loudly rather than pruning
    if doc.get("format") != PROTECTED_FORMAT or not isinstance(doc.get("backups"), list):
        raise ValueError("%s is not a %s document" % (path, PROTECTED_FORMAT))
    return doc["backups"]


def write_protected(repository, entries):
    """Replace the protected list atomically (temporary file, fsync, rename, fsync)."""
    path = os.path.join(repository, PROTECTED)
    tmp = "%s.tmp-%d" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"format": PROTECTED_FORMAT, "backups": entries}, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(tmp, path)
    fsync_dir(repository)


def hold_writer_lock(handle):
    """Mark an artifact being written: its writer holds an exclusive lock on it until it
    ends, however it ends (the kernel drops the lock with the process)."""
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def being_written(partial_dir):
    """Whether a live writer holds the lock on any file of a temporary directory."""
    for name in os.listdir(partial_dir):
        path = os.path.join(partial_dir, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
    return False


def last_touched(partial_dir):
    times = [os.path.getmtime(partial_dir)]
    for name in os.listdir(partial_dir):
        with contextlib.suppress(OSError):
            times.append(os.lstat(os.path.join(partial_dir, name)).st_mtime)
    return max(times)


def stale_partials(repository, asset, item, idle_hours):
    """Temporary directories of runs that died: no writer holds a lock on them, and nothing
    in them changed for `idle_hours` (the moments between one run's tasks, when no stream
    holds a lock, are far shorter)."""
    cutoff = time.time() - idle_hours * 3600
    return [d for d in partials(repository, asset, item) if not being_written(d) and last_touched(d) < cutoff]


def partials(repository, asset, item):
    item_dir = os.path.join(repository, asset, item)
    if not os.path.isdir(item_dir):
        return []
    return sorted(
        os.path.join(item_dir, name) for name in os.listdir(item_dir) if name.startswith(TMP_PREFIX)
    )

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

import json
import os

MANIFEST = "manifest.json"
VERIFICATIONS = "verifications.jsonl"
TMP_PREFIX = ".tmp-"


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


def partials(repository, asset, item):
    item_dir = os.path.join(repository, asset, item)
    if not os.path.isdir(item_dir):
        return []
    return sorted(
        os.path.join(item_dir, name) for name in os.listdir(item_dir) if name.startswith(TMP_PREFIX)
    )

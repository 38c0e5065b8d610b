# Copyright: pulih maintainers
# Apache License 2.0
"""Which backup a restore uses, and whether it belongs to what is being restored."""

from __future__ import annotations

import datetime

DOCUMENTATION = r"""
name: restore_choice
short_description: Choose the backup to restore one data item from
description:
  - With I(backup_id), that backup, which must be a published backup of I(item) (a backup of
    another item or server is foreign and refused).
  - Without, the newest verified backup of I(item) taken at or before I(before) (any time when
    empty). Pre-restore backups hold a damaged state and are used only when named.
  - Returns the listing's entry, or C({error}) saying why there is none.
positional: _input
options:
  _input:
    description: The backups of one server, as the receiver lists them.
    type: list
    elements: dict
    required: true
  item:
    type: str
    required: true
    description: The data item's name.
  backup_id:
    type: str
    default: ''
    description: The backup to use.
  before:
    type: str
    default: ''
    description: The wanted restore point, ISO 8601 (a date alone means the end of that day, UTC).
  recorded:
    type: dict
    description:
      - The service's record (C(ASSET:ITEM:BACKUP_ID) to C({manifest_sha256, verified})); when given,
        a backup counts as verified only when the record says so, whatever the repository's list says.
  asset_id:
    type: str
    default: ''
    description: The server's asset id, to find its backups on I(recorded).
"""

EXAMPLES = r"""
_chosen: "{{ _listed.backups | pulih.core.restore_choice(item='simpeg', before='2026-11-20') }}"
"""

RETURN = r"""
_value:
  description: The chosen listing entry, or C({error}).
  type: dict
"""


def _instant(text):
    if "T" not in text:
        text += "T23:59:59+00:00"
    value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value


def restore_choice(backups, item, backup_id="", before="", recorded=None, asset_id=""):
    if recorded is not None:  # the service's record says what is verified, not the repository
        said = {k: bool((v or {}).get("verified")) for k, v in recorded.items()}
        backups = [
            dict(b, verified=said.get("%s:%s:%s" % (asset_id, b["item"], b["backup_id"]), False))
            for b in backups
        ]
    if backup_id:
        found = [b for b in backups if b["backup_id"] == backup_id]
        if not found:
            return {"error": "there is no published backup %s of this server" % backup_id}
        chosen = found[0]
        if chosen["item"] != item:
            return {"error": "backup %s is of data item %s, not %s" % (backup_id, chosen["item"], item)}
        if chosen.get("manifest") is None:
            return {"error": "the manifest of backup %s cannot be read" % backup_id}
        return chosen
    limit = _instant(before) if before else None
    mine = [b for b in backups if b["item"] == item and b.get("manifest")]
    usable = [
        b
        for b in mine
        if b.get("verified")
        and b["manifest"].get("kind", "scheduled") != "pre_restore"
        and (limit is None or _instant(b["manifest"]["started_at"]) <= limit)
    ]
    if not usable:
        return {
            "error": "no verified backup of %s%s (%d published, %d verified): name one with --backup"
            % (
                item,
                " taken at or before %s" % before if before else "",
                len(mine),
                sum(1 for b in mine if b.get("verified")),
            )
        }
    return max(usable, key=lambda b: (b["manifest"]["started_at"], b["backup_id"]))


class FilterModule:
    def filters(self):
        return {"restore_choice": restore_choice}

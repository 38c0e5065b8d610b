# Copyright: pulih maintainers
# Apache License 2.0
"""Which backups of an item retention keeps, and why."""

from __future__ import annotations

import datetime

DOCUMENTATION = r"""
name: retention_plan
short_description: Decide which backups of one item to keep and which to prune
description:
  - Keeps the I(keep_last) newest backups, the newest of each of the last I(keep_daily) days,
    I(keep_weekly) ISO weeks and I(keep_monthly) months that have backups; always the newest
    verified backup, every backup in I(protect) (an open request depends on it), every backup
    that is not a scheduled one (a pre-restore backup is evidence) and every backup whose
    manifest cannot be read. Everything else is pruned.
positional: _input
options:
  _input:
    description: The backups of one item, as listed by C(pulih.core.backup_list).
    type: list
    elements: dict
    required: true
  keep_last:
    type: int
    default: 7
    description: Newest backups kept whatever their date.
  keep_daily:
    type: int
    default: 7
    description: Days.
  keep_weekly:
    type: int
    default: 4
    description: ISO weeks.
  keep_monthly:
    type: int
    default: 6
    description: Months.
  protect:
    type: list
    elements: str
    default: []
    description: Backup ids never pruned.
"""

EXAMPLES = r"""
_plan: "{{ _backups.backups | pulih.core.retention_plan(keep_last=3, keep_daily=7) }}"
"""

RETURN = r"""
_value:
  description: C({keep, prune, reasons}); C(reasons) maps each kept id to why.
  type: dict
"""


def _when(backup):
    stamp = backup["backup_id"][:16]  # 20261121T074512Z
    return datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ")


def retention_plan(backups, keep_last=7, keep_daily=7, keep_weekly=4, keep_monthly=6, protect=()):
    newest_first = sorted(backups, key=lambda b: b["backup_id"], reverse=True)
    reasons = {}

    def keep(backup, why):
        reasons.setdefault(backup["backup_id"], []).append(why)

    for backup in newest_first[: max(keep_last, 0)]:
        keep(backup, "one of the last %d" % keep_last)
    for label, count, bucket in (
        ("daily", keep_daily, lambda d: d.strftime("%Y-%m-%d")),
        ("weekly", keep_weekly, lambda d: "%d-W%02d" % d.isocalendar()[:2]),
        ("monthly", keep_monthly, lambda d: d.strftime("%Y-%m")),
    ):
        seen = []
        for backup in newest_first:
            try:
                key = bucket(_when(backup))
            except ValueError:
                continue
            if key not in seen:
                if len(seen) >= count:
                    break
                seen.append(key)
                keep(backup, "%s %s" % (label, key))
    verified = next((b for b in newest_first if b.get("verified")), None)
    if verified is not None:
        keep(verified, "the newest verified backup")
    for backup in newest_first:
        manifest = backup.get("manifest")
        if backup["backup_id"] in set(protect):
            keep(backup, "an open request depends on it")
        if manifest is None:
            keep(backup, "manifest unreadable: never pruned automatically")
        elif manifest.get("kind", "scheduled") != "scheduled":
            keep(backup, "a %s backup is kept as evidence" % manifest.get("kind"))
    return {
        "keep": [b["backup_id"] for b in newest_first if b["backup_id"] in reasons],
        "prune": [b["backup_id"] for b in newest_first if b["backup_id"] not in reasons],
        "reasons": reasons,
    }


class FilterModule:
    def filters(self):
        return {"retention_plan": retention_plan}

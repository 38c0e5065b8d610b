# Copyright: pulih maintainers
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
module: backup_list
short_description: List the published backups of a repository
description:
  - Runs on the repository host and reads the repository layout (see the project README);
    only published backups are listed, never a C(.tmp-*) directory of a backup being written
    or interrupted. Each entry carries its manifest and its last verification.
  - Also lists the temporary directories of runs that died as C(stale_partials), which the
    backup role removes - those that no writer holds a lock on (a live stream always does, however
    long it takes) and in which nothing changed for I(stale_hours).
version_added: 0.1.0
author: pulih maintainers
options:
  repository:
    description: The repository's root directory.
    type: path
    required: true
  asset:
    description: Only this asset id.
    type: str
  item:
    description: Only this data item.
    type: str
  stale_hours:
    description: Hours an unlocked temporary directory must have been idle to be a dead run's leftover.
    type: float
    default: 1
"""

EXAMPLES = r"""
- name: Backups of one item
  pulih.core.backup_list:
    repository: /srv/pulih-repo
    asset: DC-SRV-2023-001
    item: simpeg
  delegate_to: backup-repo01
  register: _backups
"""

RETURN = r"""
backups:
  description: Published backups, oldest first within an item.
  type: list
  elements: dict
  returned: always
protected:
  description:
    - Backups (of I(asset) and I(item) when given) that an open request depends on, from the
      repository's C(.pulih-protected.json); retention never prunes them.
  type: list
  elements: dict
  returned: always
stale_partials:
  description: Temporary directories of interrupted runs (with I(asset) and I(item)).
  type: list
  elements: str
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pulih.core.plugins.module_utils.repository import (
    list_backups,
    read_protected,
    stale_partials,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            repository=dict(type="path", required=True),
            asset=dict(type="str"),
            item=dict(type="str"),
            stale_hours=dict(type="float", default=1),
        ),
        supports_check_mode=True,
    )
    p = module.params
    stale = []
    if p["asset"] and p["item"]:
        stale = stale_partials(p["repository"], p["asset"], p["item"], p["stale_hours"])
    try:
        protected = [
            e
            for e in read_protected(p["repository"])
            if (not p["asset"] or e["asset_id"] == p["asset"]) and (not p["item"] or e["item"] == p["item"])
        ]
    except (OSError, ValueError, KeyError) as exc:  # never prune on a list that cannot be read
        module.fail_json(msg="cannot read the repository's protected list: %s" % exc)
    backups = list_backups(p["repository"], p["asset"], p["item"])
    readable = [b for b in backups if b["readable"]]
    module.exit_json(
        changed=False,
        backups=backups,
        # What the next backup of the item is expected to need in the repository.
        last_bytes=sum(a.get("size") or 0 for a in readable[-1]["manifest"].get("artifacts") or [])
        if p["asset"] and p["item"] and readable
        else 0,
        stale_partials=stale,
        protected=protected,
    )


if __name__ == "__main__":
    main()

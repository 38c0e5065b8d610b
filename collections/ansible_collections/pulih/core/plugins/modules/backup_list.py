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
  - Also lists temporary directories older than I(stale_hours) as C(stale_partials), which the
    backup role removes.
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
    description: Age after which a temporary directory is an interrupted run's leftover.
    type: float
    default: 24
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
stale_partials:
  description: Temporary directories of interrupted runs (with I(asset) and I(item)).
  type: list
  elements: str
  returned: always
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pulih.core.plugins.module_utils.repository import list_backups, partials


def main():
    module = AnsibleModule(
        argument_spec=dict(
            repository=dict(type="path", required=True),
            asset=dict(type="str"),
            item=dict(type="str"),
            stale_hours=dict(type="float", default=24),
        ),
        supports_check_mode=True,
    )
    p = module.params
    stale = []
    if p["asset"] and p["item"]:
        cutoff = time.time() - p["stale_hours"] * 3600
        stale = [d for d in partials(p["repository"], p["asset"], p["item"]) if os.path.getmtime(d) < cutoff]
    module.exit_json(
        changed=False, backups=list_backups(p["repository"], p["asset"], p["item"]), stale_partials=stale
    )


if __name__ == "__main__":
    main()

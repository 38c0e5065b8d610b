#!/usr/bin/python
# Copyright: pulih maintainers
# Apache License 2.0
"""Protect the backups an open request depends on from retention, or lift the protection."""

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_protect
short_description: Keep the backups an open request's plan names out of retention's reach
description:
  - Runs on the repository host. Keeps one file per repository, C(.pulih-protected.json)
    (C(schemas/protected.schema.json)), listing every backup that an open request depends on;
    retention (C(pulih.core.backup_list) returns the list, the backup role never prunes what is on
    it) reads it whoever runs the backup, the pulih command or plain C(ansible-playbook).
  - With I(state=present) every named backup must be published, and verified unless
    I(allow_unverified); otherwise nothing is written and the module fails, naming them.
  - With I(state=absent) the request's entries are removed (its request closed).
version_added: 0.2.0
author: pulih maintainers
options:
  repository:
    description: The repository's path on this host.
    type: path
    required: true
  request_id:
    description: The request whose plan names the backups.
    type: str
    required: true
  backups:
    description: The backups the plan names.
    type: list
    elements: dict
    default: []
    suboptions:
      asset_id:
        description: The server's asset id.
        type: str
        required: true
      item:
        description: The data item.
        type: str
        required: true
      backup_id:
        description: The backup.
        type: str
        required: true
  allow_unverified:
    description: Protect a backup whose last verification failed or that was never verified.
    type: bool
    default: false
  state:
    description: C(present) protects the request's backups (replacing its earlier list), C(absent) lifts them.
    type: str
    choices: [present, absent]
    default: present
notes:
  - Supports check mode by checking and saying what it would write.
"""

EXAMPLES = r"""
- name: Protect the planned backup
  pulih.core.backup_protect:
    repository: /srv/pulih-repo
    request_id: PPD-2026-0001
    backups: [{asset_id: DC-SRV-2023-001, item: simpeg, backup_id: 20261120T020000Z-1a2b}]
"""

RETURN = r"""
protected:
  description: Every entry of the repository's protected list after the change.
  type: list
  elements: dict
  returned: always
missing:
  description: Named backups that are not published in the repository.
  type: list
  elements: str
  returned: always
unverified:
  description: Named backups whose last verification did not succeed.
  type: list
  elements: str
  returned: always
"""

import datetime

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pulih.core.plugins.module_utils.repository import (
    list_backups,
    read_protected,
    write_protected,
)


def _key(entry):
    return (entry["asset_id"], entry["item"], entry["backup_id"])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            repository=dict(type="path", required=True),
            request_id=dict(type="str", required=True),
            backups=dict(
                type="list",
                elements="dict",
                default=[],
                options=dict(
                    asset_id=dict(type="str", required=True),
                    item=dict(type="str", required=True),
                    backup_id=dict(type="str", required=True),
                ),
            ),
            allow_unverified=dict(type="bool", default=False),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        current = read_protected(p["repository"])
    except (OSError, ValueError) as exc:
        module.fail_json(
            msg="cannot read the protected list: %s" % exc, missing=[], unverified=[], protected=[]
        )
    others = [e for e in current if e.get("request_id") != p["request_id"]]
    missing, unverified, wanted = [], [], []
    if p["state"] == "present":
        published = {(b["asset_id"], b["item"], b["backup_id"]): b for b in list_backups(p["repository"])}
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        for named in p["backups"]:
            key = (named["asset_id"], named["item"], named["backup_id"])
            label = "%s:%s=%s" % key
            if key not in published:
                missing.append(label)
            elif not published[key]["verified"]:
                unverified.append(label)
            earlier = [e for e in current if e.get("request_id") == p["request_id"] and _key(e) == key]
            wanted.append(earlier[0] if earlier else dict(named, request_id=p["request_id"], since=now))
        refused = missing or (unverified and not p["allow_unverified"])
        if refused:
            module.fail_json(
                msg="not in the repository: %s" % ", ".join(missing)
                if missing
                else "not verified (its last verification did not succeed, or none ran): %s"
                % ", ".join(unverified),
                missing=missing,
                unverified=unverified,
                protected=current,
            )
    after = others + wanted
    changed = sorted(map(_key, after)) != sorted(map(_key, current)) or len(after) != len(current)
    if changed and not module.check_mode:
        try:
            write_protected(p["repository"], after)
        except OSError as exc:
            module.fail_json(
                msg="cannot write the protected list: %s" % exc, missing=[], unverified=[], protected=current
            )
    module.exit_json(changed=changed, protected=after, missing=missing, unverified=unverified)


if __name__ == "__main__":
    main()

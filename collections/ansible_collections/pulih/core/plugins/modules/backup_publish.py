# Copyright: pulih maintainers
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
module: backup_publish
short_description: Make a fully written backup visible in the repository, atomically
description:
  - Runs on the repository host. Writes C(manifest.json) into the backup's temporary
    directory, flushes every file and the directory to disk, then renames the directory to its
    final name and flushes the parent. Until that rename nothing of the backup is listed; after
    it, the backup is complete. An interrupted run leaves only a C(.tmp-*) directory.
  - Refuses when an artifact's size differs from the manifest (a truncated write).
version_added: 0.1.0
author: pulih maintainers
options:
  tmp_dir:
    description: The temporary directory the artifacts were written to.
    type: path
    required: true
  dest:
    description: The backup's final directory; must not exist.
    type: path
    required: true
  manifest:
    description: The manifest; its C(artifacts) list names the files and their sizes.
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Publish the backup
  pulih.core.backup_publish:
    tmp_dir: /srv/pulih-repo/DC-1/simpeg/.tmp-20261121T080000Z-1a2b
    dest: /srv/pulih-repo/DC-1/simpeg/20261121T080000Z-1a2b
    manifest: "{{ _manifest }}"
  delegate_to: backup-repo01
"""

RETURN = r"""
path:
  description: The published backup directory.
  type: str
  returned: success
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pulih.core.plugins.module_utils.repository import MANIFEST, fsync_dir


def main():
    module = AnsibleModule(
        argument_spec=dict(
            tmp_dir=dict(type="path", required=True),
            dest=dict(type="path", required=True),
            manifest=dict(type="dict", required=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if os.path.exists(p["dest"]):
        module.fail_json(msg="%s already exists: published backups are never replaced" % p["dest"])
    if module.check_mode:
        module.exit_json(changed=True, path=p["dest"])
    if not os.path.isdir(p["tmp_dir"]):
        module.fail_json(msg="%s is missing: nothing to publish" % p["tmp_dir"])
    for artifact in p["manifest"].get("artifacts", []):
        path = os.path.join(p["tmp_dir"], artifact["name"])
        if not os.path.isfile(path) or os.path.getsize(path) != artifact["size"]:
            module.fail_json(msg="%s is missing or not %s bytes: not publishing" % (path, artifact["size"]))
    try:
        tmp_manifest = os.path.join(p["tmp_dir"], MANIFEST)
        with open(tmp_manifest, "w", encoding="utf-8") as handle:
            json.dump(p["manifest"], handle, indent=2, sort_keys=True, ensure_ascii=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        for name in os.listdir(p["tmp_dir"]):
            fd = os.open(os.path.join(p["tmp_dir"], name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(p["tmp_dir"], 0o750)
        fsync_dir(p["tmp_dir"])
        os.rename(p["tmp_dir"], p["dest"])
        fsync_dir(os.path.dirname(p["dest"]))
    except OSError as exc:
        module.fail_json(msg="cannot publish %s: %s" % (p["dest"], exc))
    module.exit_json(changed=True, path=p["dest"])


if __name__ == "__main__":
    main()

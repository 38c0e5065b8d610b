# Copyright: pulih maintainers
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
module: receiver
short_description: Run one command of the backup repository's restricted receiver
description:
  - Runs where the task runs (a data server, with its own key, or the controller, with its
    key) and asks the repository host's receiver for one thing, for example C(list ITEM),
    C(publish ITEM BACKUP_ID) with the manifest as I(document), or C(abort ITEM BACKUP_ID).
    The receiver is the forced command of the key (C(restrict,command=) in the repository account's
    C(authorized_keys)); it decides what the key may do, this module only asks.
version_added: 0.2.0
author: pulih maintainers
options:
  receiver:
    description:
      - How to reach the receiver. C(address), C(port), C(user) of the repository host;
        C(ssh_identity) the private key; C(ssh_known_hosts) a file with the repository host's key.
    type: dict
    required: true
  command:
    description: The receiver's verb and its words (each a plain name, never a shell word).
    type: list
    elements: str
    required: true
  document:
    description: A JSON document sent on standard input (the manifest of a C(publish)).
    type: dict
  changes:
    description: Whether the command changes the repository (for Ansible's changed status).
    type: bool
    default: false
  missing_ok:
    description:
      - A refusal because there is nothing to act on is no failure (an C(abort) of a backup never
        stored or already published, a C(revoke-grant) of a grant gone).
    type: bool
    default: false
notes:
  - In check mode a command that changes the repository is not sent.
"""

EXAMPLES = r"""
- name: List this server's backups of an item
  pulih.core.receiver:
    receiver: {address: 10.20.0.5, user: pulih, ssh_identity: /var/lib/pulih/.ssh/id_ed25519,
               ssh_known_hosts: /var/lib/pulih/.ssh/known_hosts}
    command: [list, simpeg]
"""

RETURN = r"""
answer:
  description: The receiver's JSON answer.
  type: dict
  returned: success
document_sha256:
  description:
    - SHA-256 of the canonical form (sorted keys, no spaces, UTF-8) of I(document) as sent (a
      published manifest's digest, which the service records).
  type: str
  returned: when I(document) is given
verb:
  description: The command's verb (what a caller of the playbook picks its answers by).
  type: str
  returned: always
rc:
  description: The receiver's exit code (3 a refusal, 2 a bad command, 1 a failure, 255 no SSH).
  type: int
  returned: failure
"""

import json
import subprocess

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pulih.core.plugins.module_utils.agent_io import SSH_WORD, receiver_argv
from ansible_collections.pulih.core.plugins.module_utils.canonical import document_sha256


# Refusals that mean there is nothing to act on: an abort or a revoke of what is not there.
_NOTHING_THERE = ("does not exist", "is published", "there is no grant")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            receiver=dict(type="dict", required=True),
            command=dict(type="list", elements="str", required=True),
            document=dict(type="dict"),
            changes=dict(type="bool", default=False),
            missing_ok=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    verb = p["command"][0] if p["command"] else ""
    for word in p["command"] + [str(p["receiver"].get(k, "")) for k in ("user", "address")]:
        if not SSH_WORD.match(word):
            module.fail_json(msg="%r cannot be sent to the receiver safely" % word)
    if module.check_mode and p["changes"]:
        module.exit_json(
            changed=True, answer={}, verb=verb, msg="would ask the receiver: %s" % " ".join(p["command"])
        )
    data = (json.dumps(p["document"], sort_keys=True) + "\n").encode() if p["document"] is not None else b""
    try:
        done = subprocess.run(
            receiver_argv(p["receiver"], p["command"]), input=data, capture_output=True, timeout=600
        )
    except (OSError, subprocess.SubprocessError) as exc:
        module.fail_json(msg="cannot reach the repository's receiver: %s" % exc, verb=verb, rc=255)
    message = done.stderr.decode("utf-8", "replace").strip().replace("pulih receiver: ", "", 1)
    if done.returncode != 0:
        if p["missing_ok"] and done.returncode == 3 and any(w in message for w in _NOTHING_THERE):
            module.exit_json(changed=False, answer={}, verb=verb)
        if done.returncode == 255:
            message = "SSH to the repository's receiver failed: %s" % (message or "no message")
        module.fail_json(msg="the repository refused %s: %s" % (verb, message), rc=done.returncode, verb=verb)
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        module.fail_json(msg="the repository's receiver answered no JSON to %s" % verb, rc=1, verb=verb)
    sent = {"document_sha256": document_sha256(p["document"])} if p["document"] is not None else {}
    module.exit_json(changed=p["changes"], answer=answer, verb=verb, **sent)


if __name__ == "__main__":
    main()

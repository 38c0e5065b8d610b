# Copyright: pulih maintainers
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
module: agent_push
short_description: Back up on this data server and push the backup to the repository's receiver
description:
  - Runs on the data server, over the controller's own connection. Starts the pulih agent here
    with the request (and its secrets) on standard input, and pushes what it writes to the backup
    repository through the restricted receiver (C(store ITEM BACKUP_ID ARTIFACT)), with this
    server's own key; the repository host never logs in here and never sees a secret.
  - The stream is hashed (SHA-256) and counted as it is sent; the receiver answers its own hash
    and size of what it stored, and a difference fails the item (the unpublished backup is
    aborted). The hashes, sizes and the agent's result (row counts, versions) come back to the
    controller from here, not from the repository.
  - On any failure (the agent, a tool in its pipeline, the receiver's refusal, a full repository,
    the controller gone) the receiver is asked to abort the unpublished backup.
version_added: 0.2.0
author: pulih maintainers
extends_documentation_fragment:
  - pulih.core.agent
options:
  item:
    description: The register's item name.
    type: str
    required: true
  backup_id:
    description: The new backup's id.
    type: str
    required: true
  artifact:
    description: The artifact the agent's output is stored as.
    type: str
    required: true
  events_artifact:
    description: Also store the agent's per-file events as this artifact (a file tree's file list).
    type: str
  need_free_bytes:
    description: Free space the receiver must have before it stores anything.
    type: int
    default: 0
notes:
  - Supports check mode by doing nothing and saying what it would have done.
"""

EXAMPLES = r"""
- name: Dump a database and push it to the repository
  pulih.core.agent_push:
    server: simpeg-db01
    receiver: {address: 10.20.0.5, port: 22, user: pulih, ssh_identity: /var/lib/pulih/.ssh/id_ed25519,
               ssh_known_hosts: /var/lib/pulih/.ssh/known_hosts}
    item: simpeg
    backup_id: 20261121T080000Z-3c4d
    artifact: database.pgdump.zst
    request: {mode: dump, engine: postgresql, conn: {database: simpeg}}
"""

RETURN = r"""
sha256:
  description: SHA-256 of the stream as the agent wrote it (and the receiver stored it).
  type: str
  returned: success
size:
  description: Bytes sent (and stored).
  type: int
  returned: success
events_sha256:
  description: SHA-256 of the file list (with I(events_artifact)).
  type: str
  returned: success and events_artifact
events_size:
  description: Bytes of the file list.
  type: int
  returned: success and events_artifact
result:
  description: The agent's result (row counts, versions, ...).
  type: dict
  returned: success
seconds:
  description: Wall time of the stream.
  type: float
  returned: always
"""

import json
import subprocess
import tempfile
import threading
import time

import contextlib

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pulih.core.plugins.module_utils.agent_io import (
    AGENT_ARGUMENTS,
    CHUNK,
    SSH_WORD,
    AgentStderr,
    ControllerWatch,
    Failed,
    Hasher,
    agent_failure,
    agent_params_problem,
    agent_request,
    check_local,
    kill_agent,
    receiver_answer,
    receiver_argv,
    reply_problem,
    start_agent,
)


def _push_file(receiver, words, handle):
    proc = subprocess.Popen(
        receiver_argv(receiver, words), stdin=handle, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    return receiver_answer(proc, "storing %s" % words[3])


def _abort(receiver, item, backup_id):
    """Drop the unpublished backup on the repository (nothing of it was ever listed)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            receiver_argv(receiver, ["abort", item, backup_id]),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
        )


def main():
    module = AnsibleModule(
        argument_spec=dict(
            **AGENT_ARGUMENTS,
            item=dict(type="str", required=True),
            backup_id=dict(type="str", required=True),
            artifact=dict(type="str", required=True),
            events_artifact=dict(type="str"),
            need_free_bytes=dict(type="int", default=0),
        ),
        supports_check_mode=True,
    )
    p = module.params
    problem = agent_params_problem(p)
    if problem:
        module.fail_json(msg=problem)
    for word in (p["item"], p["backup_id"], p["artifact"], p["events_artifact"] or "x"):
        if not SSH_WORD.match(word):  # the receiver checks them again; never a shell word here
            module.fail_json(msg="%r is not an item, backup id or artifact name" % word)
    if module.check_mode:
        module.exit_json(changed=True, msg="would back up %s to the repository" % p["item"], seconds=0.0)

    try:
        request = agent_request(p)
    except Failed as exc:
        module.fail_json(msg=str(exc))
    receiver = p["receiver"]

    started = time.monotonic()
    agent = store = timer = watch = None
    events = None
    store_words = ["store", p["item"], p["backup_id"], p["artifact"], str(max(p["need_free_bytes"], 0))]

    def kill():
        kill_agent(agent)
        if store is not None and store.poll() is None:
            store.kill()

    try:
        check_local(p)
        if p["events_artifact"]:
            events = tempfile.TemporaryFile(prefix="pulih-files-")  # noqa: SIM115 - closed in finally
        # The receiver first: it checks its room before it reads a byte.
        store = subprocess.Popen(
            receiver_argv(receiver, store_words),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        agent = start_agent(p)
        watch = ControllerWatch(kill)
        watch.start()
        reader = AgentStderr(agent.stderr, events)
        reader.start()
        timer = threading.Timer(p["timeout"], kill)
        timer.daemon = True
        timer.start()
        try:
            agent.stdin.write((json.dumps(request) + "\n").encode())
            agent.stdin.close()
        except BrokenPipeError:
            pass  # the agent stopped reading: its exit code and message say why
        hasher, size, sent_all = Hasher(), 0, True
        hasher.start()
        try:
            for block in iter(lambda: agent.stdout.read(CHUNK), b""):
                hasher.blocks.put(block)
                try:
                    store.stdin.write(block)
                except BrokenPipeError:  # the receiver refused or failed: its answer says why
                    sent_all = False
                    kill()
                    break
                size += len(block)
        finally:
            hasher.blocks.put(None)
            hasher.join()
        code = agent.wait()
        reader.join()
        stored = receiver_answer(store, "storing %s" % p["artifact"])  # closes its standard input
        timer.cancel()
        if not watch.stop():
            raise Failed("the controller that started this backup is gone")
        mismatch = reply_problem(p, code, reader)
        if mismatch:  # an agent of another release: its result is not taken, whatever it did
            raise Failed(mismatch)
        if code != 0 or reader.result is None:
            raise Failed(agent_failure(p, code, reader))
        if not sent_all:
            raise Failed("the repository's receiver stopped reading %s" % p["artifact"])
        digest = hasher.digest.hexdigest()
        if (stored.get("sha256"), stored.get("size")) != (digest, size):
            raise Failed(
                "%s: the agent sent %d bytes with SHA-256 %s, the repository stored %s bytes with "
                "SHA-256 %s: the link or the repository changed the backup, nothing was published"
                % (p["artifact"], size, digest, stored.get("size"), stored.get("sha256"))
            )
        out = dict(changed=True, result=reader.result, sha256=digest, size=size)
        if events is not None:
            events.flush()
            events.seek(0)
            events_stored = _push_file(
                receiver, ["store", p["item"], p["backup_id"], p["events_artifact"]], events
            )
            events_digest = reader.events_digest.hexdigest()
            if (events_stored.get("sha256"), events_stored.get("size")) != (
                events_digest,
                reader.events_size,
            ):
                raise Failed(
                    "%s: the repository stored something else than the agent's file list: "
                    "nothing was published" % p["events_artifact"]
                )
            out.update(events_sha256=events_digest, events_size=reader.events_size, files=len(reader.files))
        out["seconds"] = round(time.monotonic() - started, 3)
        module.exit_json(**out)
    except (Failed, OSError) as exc:
        kill()
        _abort(receiver, p["item"], p["backup_id"])
        module.fail_json(msg=str(exc), seconds=round(time.monotonic() - started, 3))
    finally:
        if timer is not None:
            timer.cancel()
        if watch is not None:
            watch.stop()
        if events is not None:
            events.close()


if __name__ == "__main__":
    main()

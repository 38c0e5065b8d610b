# Copyright: pulih maintainers
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
module: agent_pull
short_description: Run the pulih agent here, fed a backup fetched from the repository's receiver
description:
  - Runs on the server that verifies or restores, over the controller's own connection. Fetches
    the backup's artifacts from the repository through the restricted receiver with this
    server's own key (C(fetch) for its own asset's backups, C(fetch-granted) under a grant the
    controller placed for another asset's), hashes each as it arrives and compares it with the
    SHA-256 and size the manifest names, and streams the data artifact into the agent started
    here with the request (and its secrets, which never touch the repository host).
  - A checksum that differs fails the task as a checksum mismatch, whatever the agent said.
  - With no artifact of role C(data) the agent gets the request alone (a restore's probe, swap
    or discard); a C(file_list) artifact is still fetched to compare the agent's file events with.
version_added: 0.2.0
author: pulih maintainers
extends_documentation_fragment:
  - pulih.core.agent
options:
  source:
    description:
      - Where the backup is. C(item) and C(backup_id) of this server's own asset, or C(grant) the
        id of the grant the controller placed for this server. Required with I(artifacts).
    type: dict
  artifacts:
    description:
      - The manifest's artifacts (C(name), C(role), C(sha256), C(size)) to fetch. The one of role
        C(data) is streamed into the agent; C(file_list) is fetched to compare the agent's file
        events with; the others are fetched and hashed only.
    type: list
    elements: dict
    default: []
  expect_counts:
    description: Row counts the agent's result must match (verification).
    type: dict
  expect_files_ignore:
    description: Exclude patterns; paths of the file list they match are not compared.
    type: list
    elements: str
    default: []
  compare_files:
    description: Compare the agent's file events with the backup's file list.
    type: bool
    default: false
notes:
  - In check mode every artifact is fetched and hashed, and nothing is restored.
"""

EXAMPLES = r"""
- name: Test-restore this server's newest backup of an item
  pulih.core.agent_pull:
    server: simpeg-db01
    receiver: {address: 10.20.0.5, user: pulih, ssh_identity: /var/lib/pulih/.ssh/id_ed25519,
               ssh_known_hosts: /var/lib/pulih/.ssh/known_hosts}
    source: {item: simpeg, backup_id: 20261121T080000Z-3c4d}
    artifacts: "{{ manifest.artifacts }}"
    request: {mode: verify, engine: postgresql, conn: {database: simpeg}}
"""

RETURN = r"""
result:
  description: The agent's result (row counts, ...).
  type: dict
  returned: success
differences:
  description: What did not match I(expect_counts) or the file list.
  type: list
  elements: str
  returned: always
matches:
  description: True when nothing differed.
  type: bool
  returned: always
checksums:
  description: The SHA-256 of each artifact as fetched.
  type: dict
  returned: success
seconds:
  description: Wall time.
  type: float
  returned: always
"""

import hashlib
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
    agent_failure,
    agent_params_problem,
    agent_request,
    check_local,
    compare_counts,
    compare_files,
    kill_agent,
    receiver_argv,
    refusal,
    reply_problem,
    start_agent,
)


def _fetch_words(source, name):
    if source.get("grant"):
        return ["fetch-granted", source["grant"], name]
    return ["fetch", source["item"], source["backup_id"], name]


def _mismatch(artifact, digest, size):
    return (
        "checksum mismatch: %s of the backup differs from the manifest (%s bytes with SHA-256 %s fetched, "
        % (
            artifact["name"],
            size,
            digest,
        )
        + "%s bytes with SHA-256 %s in the manifest)" % (artifact.get("size"), artifact.get("sha256"))
    )


def _fetch_refusal(message, name):
    return refusal(message, "to serve %s" % name, "cannot fetch %s from the repository" % name)


def _fetch(receiver, source, artifact, sink=None):
    """Fetch one artifact, hashing it; into `sink` (a file object) when given. Its digest and size."""
    fetch = subprocess.Popen(
        receiver_argv(receiver, _fetch_words(source, artifact["name"])),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    digest, size = hashlib.sha256(), 0
    for block in iter(lambda: fetch.stdout.read(CHUNK), b""):
        digest.update(block)
        size += len(block)
        if sink is not None:
            sink.write(block)
    err = fetch.stderr.read().decode("utf-8", "replace").strip()
    if fetch.wait() != 0:
        raise Failed(_fetch_refusal(err, artifact["name"]))
    return digest.hexdigest(), size


def main():
    module = AnsibleModule(
        argument_spec=dict(
            **AGENT_ARGUMENTS,
            source=dict(type="dict"),
            artifacts=dict(type="list", elements="dict", default=[]),
            expect_counts=dict(type="dict"),
            expect_files_ignore=dict(type="list", elements="str", default=[]),
            compare_files=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    problem = agent_params_problem(p)
    if problem:
        module.fail_json(msg=problem, differences=[], matches=False)
    source = p["source"] or {}
    if p["artifacts"] and not source:
        module.fail_json(
            msg="artifacts to fetch need a source (item and backup_id, or grant)", differences=[]
        )
    words = [source.get("grant") or "x", source.get("item") or "x", source.get("backup_id") or "x"]
    for word in words + [a.get("name", "") for a in p["artifacts"]]:
        if not SSH_WORD.match(str(word)):
            module.fail_json(msg="%r is not a grant, item, backup id or artifact name" % word, differences=[])
    data = [a for a in p["artifacts"] if a.get("role") == "data"]
    if len(data) > 1:
        module.fail_json(msg="the manifest names %d data artifacts, not one" % len(data), differences=[])
    try:
        request = agent_request(p)
    except Failed as exc:
        module.fail_json(msg=str(exc), differences=[])
    receiver = p["receiver"]
    started = time.monotonic()
    agent = fetch = timer = watch = None
    file_list = None

    def kill():
        kill_agent(agent)
        if fetch is not None and fetch.poll() is None:
            fetch.kill()

    try:
        check_local(p)
        checksums, bad = {}, []
        # The small artifacts first: a file list to compare with, the roles' SQL hashed only.
        for artifact in p["artifacts"]:
            if data and artifact is data[0]:
                continue
            sink = None
            if artifact.get("role") == "file_list" and p["compare_files"]:
                file_list = tempfile.NamedTemporaryFile(prefix="pulih-files-")  # noqa: SIM115 - closed in finally
                sink = file_list
            digest, size = _fetch(receiver, source, artifact, sink)
            checksums[artifact["name"]] = digest
            if (digest, size) != (artifact.get("sha256"), artifact.get("size")):
                bad.append(_mismatch(artifact, digest, size))
        if module.check_mode and data:  # read only: every artifact fetched and hashed, nothing restored
            digest, size = _fetch(receiver, source, data[0])
            checksums[data[0]["name"]] = digest
            if (digest, size) != (data[0].get("sha256"), data[0].get("size")):
                bad.append(_mismatch(data[0], digest, size))
        if bad:
            raise Failed("; ".join(bad))
        if module.check_mode:
            module.exit_json(
                changed=False,
                differences=[],
                matches=True,
                checksums=checksums,
                msg="check mode: only the checksums were compared, nothing was restored"
                if data
                else "check mode: the agent was not started",
                seconds=round(time.monotonic() - started, 3),
            )
        if file_list is not None:
            file_list.flush()

        if data:
            fetch = subprocess.Popen(
                receiver_argv(receiver, _fetch_words(source, data[0]["name"])),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        agent = start_agent(p)
        watch = ControllerWatch(kill)
        watch.start()
        reader = AgentStderr(agent.stderr, None)
        reader.start()
        timer = threading.Timer(p["timeout"], kill)
        timer.daemon = True
        timer.start()
        digest, size, feeding = hashlib.sha256(), 0, True
        try:
            agent.stdin.write((json.dumps(request) + "\n").encode())
        except BrokenPipeError:
            feeding = False
        fetched, fetch_error = 0, ""
        if fetch is not None:
            # Every byte is hashed, also after the agent stopped reading: a corrupt backup is
            # named as one, not as whatever the agent made of it.
            for block in iter(lambda: fetch.stdout.read(CHUNK), b""):
                digest.update(block)
                size += len(block)
                if feeding:
                    try:
                        agent.stdin.write(block)
                    except BrokenPipeError:
                        feeding = False
            fetch_error = fetch.stderr.read().decode("utf-8", "replace").strip()
            fetched = fetch.wait()
        with contextlib.suppress(BrokenPipeError):
            agent.stdin.close()
        agent.stdout.read()
        code = agent.wait()
        reader.join()
        timer.cancel()
        if not watch.stop():
            raise Failed("the controller that started this %s is gone" % p["request"].get("mode"))
        if data:
            if fetched != 0:
                raise Failed(_fetch_refusal(fetch_error, data[0]["name"]))
            hexdigest = digest.hexdigest()
            checksums[data[0]["name"]] = hexdigest
            if (hexdigest, size) != (data[0].get("sha256"), data[0].get("size")):
                raise Failed(_mismatch(data[0], hexdigest, size))
        mismatch = reply_problem(p, code, reader)
        if mismatch:  # an agent of another release: its result is not taken, whatever it did
            raise Failed(mismatch)
        if code != 0 or reader.result is None:
            raise Failed(agent_failure(p, code, reader))
        diffs = []
        if p["expect_counts"] is not None:
            diffs += compare_counts(p["expect_counts"], reader.result.get("row_counts") or {})
        if file_list is not None:
            diffs += compare_files(file_list.name, reader.files, p["expect_files_ignore"])
        module.exit_json(
            changed=p["request"].get("mode") not in ("verify", "probe"),
            result=reader.result,
            differences=diffs,
            matches=not diffs,
            checksums=checksums,
            seconds=round(time.monotonic() - started, 3),
        )
    except (Failed, OSError) as exc:
        kill()
        module.fail_json(
            msg=str(exc), differences=[], matches=False, seconds=round(time.monotonic() - started, 3)
        )
    finally:
        if timer is not None:
            timer.cancel()
        if watch is not None:
            watch.stop()
        if file_list is not None:
            file_list.close()


if __name__ == "__main__":
    main()

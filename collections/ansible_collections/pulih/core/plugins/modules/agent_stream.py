# Copyright: pulih maintainers
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
module: agent_stream
short_description: Stream a backup artifact between the repository host and a data server
description:
  - Runs on the backup repository host. Starts the pulih agent on a data server over SSH
    (host key checked, key authentication only), hands it a request on standard input, and
    either stores what it writes (I(dest), a backup) or feeds it a stored artifact (I(src), a
    verification or a restore's stage).
  - A stored stream is hashed (SHA-256) and counted as it is written, and flushed to disk; when
    anything fails (the agent, a tool in its pipeline, the SSH link, a full disk) the partial
    file is removed and the task fails with the agent's own message.
  - Secrets in I(request) travel on the SSH channel's standard input, never in a command line.
version_added: 0.1.0
author: pulih maintainers
options:
  address:
    description: Address of the data server, as the repository host reaches it.
    type: str
    required: true
  port:
    description: SSH port of the data server.
    type: int
    default: 22
  user:
    description: SSH user on the data server.
    type: str
    required: true
  ssh_identity:
    description: Private key file on the repository host.
    type: path
  ssh_known_hosts:
    description: Known hosts file on the repository host; the data server's key must be in it.
    type: path
  agent:
    description: Path of C(pulih_agent.py) on the data server.
    type: str
    default: /var/lib/pulih/pulih_agent.py
  python:
    description: Python interpreter on the data server.
    type: str
    default: /usr/bin/python3
  tool_path:
    description:
      - Folders on the data server searched before its C(PATH) for the tools the agent runs
        (C(pg_dump) of another major version, a C(zstd) under C(/opt)).
    type: list
    elements: str
    default: []
  need_free_bytes:
    description:
      - With I(dest), the free space the repository's filesystem must have before the stream
        starts (the item's last backup plus a margin); the task fails before anything streams
        when it has less.
    type: int
    default: 0
  request:
    description: The agent's request (mode, engine, connection without its password, ...).
    type: dict
    required: true
  secret:
    description:
      - The secrets of the request, kept apart so that only they are masked in output
        (C(password) of the database connection, C(identity) an age private key).
    type: dict
    default: {}
  dest:
    description: Store the agent's output here (a backup). Must not exist.
    type: path
  src:
    description:
      - Feed this file to the agent after the request (a verification or restore).
      - With neither I(src) nor I(dest) the agent gets only the request (a restore's swap or discard).
    type: path
  events_dest:
    description: Write the agent's per-file events here as JSON lines (a file tree's file list).
    type: path
  expect_counts:
    description: Row counts the agent's result must match (verification).
    type: dict
  expect_files:
    description: A JSON-lines file list the agent's per-file events must match (verification).
    type: path
  expect_files_ignore:
    description:
      - Exclude patterns of the item; paths of I(expect_files) they match are not compared.
      - A restore in place keeps the live tree's excluded paths where they were.
    type: list
    elements: str
    default: []
  timeout:
    description: Seconds the whole stream may take.
    type: int
    default: 86400
notes:
  - Supports check mode by doing nothing and saying what it would have done.
"""

EXAMPLES = r"""
- name: Pull a dump into the repository
  pulih.core.agent_stream:
    address: 10.20.1.11
    user: pulih
    ssh_identity: /home/pulih/.ssh/id_ed25519
    ssh_known_hosts: /home/pulih/.ssh/known_hosts
    request: {mode: dump, engine: postgresql, conn: {database: simpeg}}
    dest: /srv/pulih-repo/DC-1/simpeg/.tmp-20261121T080000Z/database.pgdump.zst
  delegate_to: backup-repo01
  no_log: true
"""

RETURN = r"""
sha256:
  description: SHA-256 of the stored stream (with I(dest)).
  type: str
  returned: success and dest
size:
  description: Bytes stored (with I(dest)).
  type: int
  returned: success and dest
events_sha256:
  description: SHA-256 of I(events_dest).
  type: str
  returned: success and events_dest
events_size:
  description: Bytes written to I(events_dest).
  type: int
  returned: success and events_dest
result:
  description: The agent's result (row counts, versions, ...).
  type: dict
  returned: success
differences:
  description: What did not match I(expect_counts) or I(expect_files).
  type: list
  elements: str
  returned: always
matches:
  description: True when nothing differed from what was expected.
  type: bool
  returned: always
seconds:
  description: Wall time of the stream.
  type: float
  returned: always
"""

import errno
import json
import os
import subprocess
import threading
import time

import contextlib

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pulih.core.plugins.module_utils.agent_io import (
    CHUNK,
    SAFE_PATH,
    SSH_WORD,
    AgentStderr,
    ControllerWatch,
    Hasher,
    agent_request,
    compare_counts,
    compare_files,
    size_text,
    ssh_argv,
)
from ansible_collections.pulih.core.plugins.module_utils.repository import hold_writer_lock


def _ssh_argv(p):
    return ssh_argv(p, [p["python"], p["agent"]])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            address=dict(type="str", required=True),
            port=dict(type="int", default=22),
            user=dict(type="str", required=True),
            ssh_identity=dict(type="path"),
            ssh_known_hosts=dict(type="path"),
            agent=dict(type="str", default="/var/lib/pulih/pulih_agent.py"),
            python=dict(type="str", default="/usr/bin/python3"),
            tool_path=dict(type="list", elements="str", default=[]),
            need_free_bytes=dict(type="int", default=0),
            request=dict(type="dict", required=True),
            secret=dict(type="dict", default={}, no_log=True),
            dest=dict(type="path"),
            src=dict(type="path"),
            events_dest=dict(type="path"),
            expect_counts=dict(type="dict"),
            expect_files=dict(type="path"),
            expect_files_ignore=dict(type="list", elements="str", default=[]),
            timeout=dict(type="int", default=86400),
        ),
        mutually_exclusive=[("dest", "src")],
        supports_check_mode=True,
    )
    p = module.params
    for key in ("agent", "python"):
        if not SAFE_PATH.match(p[key]):
            module.fail_json(msg="%s must be a plain absolute path, got %r" % (key, p[key]))
    for folder in p["tool_path"]:
        if not SAFE_PATH.match(folder):
            module.fail_json(msg="tool_path entries must be plain absolute paths, got %r" % folder)
    for key in ("user", "address"):
        if not SSH_WORD.match(p[key]):
            module.fail_json(msg="%s %r is not a user or host name ssh can be given safely" % (key, p[key]))
    if p["dest"] and os.path.exists(p["dest"]):
        module.fail_json(msg="%s already exists: a backup artifact is never overwritten" % p["dest"])
    if p["src"] and not os.path.isfile(p["src"]):
        module.fail_json(msg="%s does not exist on the repository host" % p["src"])
    if p["dest"] and p["need_free_bytes"] > 0:
        folder = os.path.dirname(p["dest"])
        while not os.path.isdir(folder):  # in check mode the backup's folder was not made
            folder = os.path.dirname(folder)
        info = os.statvfs(folder)
        have = info.f_bavail * info.f_frsize
        if have < p["need_free_bytes"]:
            module.fail_json(
                msg="not enough room in the repository: %s free at %s, and this item's last backup "
                "plus the margin (pulih_common_space_margin_percent) needs %s; free space or add disk, "
                "nothing was streamed" % (size_text(have), folder, size_text(p["need_free_bytes"])),
                differences=[],
                matches=False,
            )
    what = (
        "store %s" % p["dest"]
        if p["dest"]
        else "send %s" % p["src"]
        if p["src"]
        else "run a %s request" % p["request"].get("mode")
    )
    if module.check_mode:
        module.exit_json(
            changed=p["request"].get("mode") not in ("verify",),
            msg="would %s via the agent on %s" % (what, p["address"]),
            differences=[],
            matches=True,
            seconds=0.0,
        )

    request = agent_request(p)

    started = time.monotonic()
    out_handle = events_handle = None
    created = []
    proc = None
    # A daemon thread, cancelled in finally: a pending timer must never keep the module alive.
    timer = watch = None
    try:
        if p["dest"]:
            out_handle = open(p["dest"], "xb")  # noqa: SIM115 - closed in finally, removed on failure
            created.append(p["dest"])
            hold_writer_lock(out_handle)  # a live write is never taken for a dead run's leftover
        if p["events_dest"]:
            events_handle = open(p["events_dest"], "xb")  # noqa: SIM115 - as above
            created.append(p["events_dest"])
            hold_writer_lock(events_handle)
        proc = subprocess.Popen(
            _ssh_argv(p), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        watch = ControllerWatch(proc.kill)
        watch.start()
        reader = AgentStderr(proc.stderr, events_handle)
        reader.start()
        timer = threading.Timer(p["timeout"], proc.kill)
        timer.daemon = True
        timer.start()
        hasher, size = Hasher(), 0
        try:
            proc.stdin.write((json.dumps(request) + "\n").encode())
            if p["src"]:
                with open(p["src"], "rb") as source:
                    for block in iter(lambda: source.read(CHUNK), b""):
                        proc.stdin.write(block)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the agent stopped reading: its exit code and message say why
        if out_handle is not None:
            hasher.start()
            try:
                for block in iter(lambda: proc.stdout.read(CHUNK), b""):
                    hasher.blocks.put(block)
                    out_handle.write(block)
                    size += len(block)
            finally:
                hasher.blocks.put(None)
                hasher.join()
            out_handle.flush()
            os.fsync(out_handle.fileno())
        else:
            proc.stdout.read()
        code = proc.wait()
        timer.cancel()
        reader.join()
        if not watch.stop():  # a stream nobody waits for is not kept, complete or not
            raise OSError(errno.EPIPE, "the controller that started this stream is gone")
        if events_handle is not None:
            events_handle.flush()
            os.fsync(events_handle.fileno())
        seconds = round(time.monotonic() - started, 3)
        if code != 0 or reader.result is None:
            why = "; ".join(reader.messages[-6:]) or "no message"
            if code == 255:
                why = "SSH to %s@%s:%s failed: %s" % (p["user"], p["address"], p["port"], why)
            elif code == 127:  # the remote shell found no such program
                why = (
                    "there is no Python at %s on %s: install python3 (3.9 or later) or set "
                    "pulih_common_python (%s)" % (p["python"], p["address"], why)
                )
            elif code == 2 and "can't open file" in why:
                why = "the agent is not installed at %s on %s (%s)" % (p["agent"], p["address"], why)
            module.fail_json(
                msg="the agent on %s failed (exit %s): %s" % (p["address"], code, why),
                rc=code,
                seconds=seconds,
                differences=[],
                matches=False,
            )
        diffs = []
        if p["expect_counts"] is not None:
            diffs += compare_counts(p["expect_counts"], reader.result.get("row_counts") or {})
        if p["expect_files"]:
            diffs += compare_files(p["expect_files"], reader.files, p["expect_files_ignore"])
        created = []  # complete: keep
        out = dict(
            changed=p["request"].get("mode") != "verify",
            result=reader.result,
            differences=diffs,
            matches=not diffs,
            seconds=seconds,
        )
        if p["dest"]:
            out.update(sha256=hasher.digest.hexdigest(), size=size)
        if p["events_dest"]:
            out.update(
                events_sha256=reader.events_digest.hexdigest(),
                events_size=reader.events_size,
                files=len(reader.files),
            )
        module.exit_json(**out)
    except OSError as exc:
        if proc is not None and proc.poll() is None:
            proc.kill()
        if exc.errno == errno.ENOSPC:
            module.fail_json(
                msg="the repository filesystem is full (no space left on device) while writing %s"
                % (p["dest"] or p["events_dest"]),
                differences=[],
                matches=False,
            )
        module.fail_json(msg="cannot %s: %s" % (what, exc), differences=[], matches=False)
    finally:
        if timer is not None:
            timer.cancel()
        if watch is not None:
            watch.stop()
        for handle in (out_handle, events_handle):
            if handle is not None and not handle.closed:
                with contextlib.suppress(OSError):
                    handle.close()
        for path in created:
            with contextlib.suppress(OSError):
                os.unlink(path)


if __name__ == "__main__":
    main()

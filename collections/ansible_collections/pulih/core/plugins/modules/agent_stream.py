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
import fnmatch
import hashlib
import json
import os
import queue
import re
import subprocess
import threading
import time

import contextlib

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pulih.core.plugins.module_utils.repository import hold_writer_lock

CHUNK = 1 << 20
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./-]+$")
_SSH_WORD = re.compile(r"^[A-Za-z0-9_:.\[\]][A-Za-z0-9_:.%\[\]-]*$")  # never an option, never a space


def _size(count):
    return (
        "%.1f GiB" % (count / float(1 << 30)) if count >= 1 << 27 else "%.1f MiB" % (count / float(1 << 20))
    )


def _ssh_argv(p):
    argv = [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
        "-o",
        "ControlMaster=no",
        "-o",
        "ControlPath=none",
        "-p",
        str(p["port"]),
        # AES-GCM first: with AES-NI it costs a fraction of ChaCha20 on a bulk stream.
        "-c",
        "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com",
    ]
    if p["ssh_identity"]:
        argv += ["-o", "IdentitiesOnly=yes", "-i", p["ssh_identity"]]
    if p["ssh_known_hosts"]:
        argv += ["-o", "UserKnownHostsFile=" + p["ssh_known_hosts"]]
    # The user as the value of -l and the address after "--": nothing from the register can
    # be read as an ssh option ("-oProxyCommand=..."). ssh hands the remote command to a
    # shell: only plain paths go there, nothing from data.
    return [*argv, "-l", p["user"], "--", p["address"], p["python"], p["agent"]]


class _Hasher(threading.Thread):
    """SHA-256 in its own thread (hashlib releases the GIL), overlapping the disk writes."""

    def __init__(self):
        super().__init__(daemon=True)
        self.digest = hashlib.sha256()
        self.blocks = queue.Queue(maxsize=8)

    def run(self):
        for block in iter(self.blocks.get, None):
            self.digest.update(block)


class _Stderr(threading.Thread):
    """Reads the agent's standard error: structured events and the tools' messages."""

    def __init__(self, stream, events_handle):
        super().__init__(daemon=True)
        self.stream = stream
        self.events_handle = events_handle
        self.events_digest = hashlib.sha256()
        self.events_size = 0
        self.result = None
        self.files = {}
        self.messages = []

    def run(self):
        for raw in iter(self.stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if not line.startswith("@@pulih "):
                if line.strip():
                    self.messages = ([*self.messages, line])[-40:]
                continue
            try:
                event = json.loads(line[8:])
            except ValueError:
                continue
            kind = event.pop("event", None)
            if kind == "result":
                self.result = event
            elif kind == "file":
                self.files[event["path"]] = event
                if self.events_handle is not None:
                    data = (json.dumps(event, sort_keys=True) + "\n").encode()
                    self.events_handle.write(data)
                    self.events_digest.update(data)
                    self.events_size += len(data)


class _ControllerWatch(threading.Thread):
    """Stops the stream when the controller that started this module is gone.

    Ansible reads a module's output only when it ends, so nothing else would tell a stream of
    hours that nobody waits for it any more. Every few seconds this writes a newline to
    standard output (Ansible skips whitespace before a module's JSON); once the controller
    and its connection are gone the write fails, and the stream is killed, so that its
    partial artifacts are removed and nothing of the run keeps writing.
    """

    def __init__(self, on_gone, every=1.0):
        super().__init__(daemon=True)
        self.on_gone, self.every = on_gone, every
        self.done = threading.Event()
        self.gone = False
        self.lock = threading.Lock()  # no newline in the middle of the module's JSON

    def beat(self):
        """Whether the controller still reads our output (False once it is gone)."""
        with self.lock:
            if not self.gone and not self.done.is_set():
                try:
                    os.write(1, b"\n")
                except OSError:
                    self.gone = True
                    self.on_gone()
        return not self.gone

    def run(self):
        while not self.done.wait(self.every) and self.beat():
            pass

    def stop(self):
        """No more beats (the module's JSON follows); False when the controller is gone."""
        alive = self.beat()
        with self.lock:
            self.done.set()
        return alive


def _compare_counts(expected, actual):
    diffs = []
    for table in sorted(set(expected) | set(actual)):
        if table not in actual:
            diffs.append("table %s: in the manifest (%s rows), not restored" % (table, expected[table]))
        elif table not in expected:
            diffs.append("table %s: restored (%s rows), not in the manifest" % (table, actual[table]))
        elif int(expected[table]) != int(actual[table]):
            diffs.append(
                "table %s: %s rows in the manifest, %s restored" % (table, expected[table], actual[table])
            )
    return diffs


# What a file list says of an entry besides its type, and how a difference reads. A key is
# compared when both sides have it (older lists have fewer; an agent that is not root lists no
# owners, since it could not have restored them).
_FILE_ATTRIBUTES = (
    ("size", "size"),
    ("sha256", "content (SHA-256)"),
    ("target", "link target"),
    ("sparse", "sparseness"),
    ("mode", "mode"),
    ("owner", "owner"),
    ("group", "group"),
    ("mtime", "modification time"),
    ("xattrs", "extended attributes"),
    ("acl_access", "ACL"),
    ("acl_default", "default ACL"),
)
_MAX_DIFFERENCES = 25


def _excluded(path, patterns):
    """Whether the agent's walk leaves `path` out: a pattern matches it or a folder above it
    (the walk never enters an excluded folder)."""
    parts = path.split("/")
    for depth in range(1, len(parts) + 1):
        here = "/".join(parts[:depth])
        if any(fnmatch.fnmatch(here, p) or fnmatch.fnmatch(parts[depth - 1], p) for p in patterns):
            return True
    return False


def _compare_files(expected_path, actual, ignore=()):
    """Differences between a file list (JSON lines) and the entries an agent listed; paths
    that the patterns in `ignore` match are not compared (excluded paths kept in place)."""
    expected = {}
    with open(expected_path, "rb") as handle:
        for raw in handle:
            if raw.strip():
                entry = json.loads(raw)
                if not _excluded(entry["path"], ignore):
                    expected[entry["path"]] = entry
    diffs = []
    for path in sorted(set(expected) | set(actual)):
        want, got = expected.get(path), actual.get(path)
        if got is None:
            diffs.append("%s: in the file list, not restored" % path)
        elif want is None:
            diffs.append("%s: restored, not in the file list" % path)
        elif want.get("type") != got.get("type"):
            diffs.append(
                "%s: a %s in the file list, a %s restored" % (path, want.get("type"), got.get("type"))
            )
        else:
            for key, what in _FILE_ATTRIBUTES:
                if key in want and key in got and want[key] != got[key]:
                    diffs.append("%s: %s differs from the file list" % (path, what))
    if len(diffs) > _MAX_DIFFERENCES:
        diffs[_MAX_DIFFERENCES:] = ["and %d more differences" % (len(diffs) - _MAX_DIFFERENCES)]
    return diffs


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
        if not _SAFE_PATH.match(p[key]):
            module.fail_json(msg="%s must be a plain absolute path, got %r" % (key, p[key]))
    for folder in p["tool_path"]:
        if not _SAFE_PATH.match(folder):
            module.fail_json(msg="tool_path entries must be plain absolute paths, got %r" % folder)
    for key in ("user", "address"):
        if not _SSH_WORD.match(p[key]):
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
                "nothing was streamed" % (_size(have), folder, _size(p["need_free_bytes"])),
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

    request = json.loads(json.dumps(p["request"]))
    if p["tool_path"]:
        request["tool_path"] = p["tool_path"]
    if p["secret"].get("password") is not None:
        request.setdefault("conn", {})["password"] = p["secret"]["password"]
    if p["secret"].get("identity"):
        request["identity"] = p["secret"]["identity"]

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
        watch = _ControllerWatch(proc.kill)
        watch.start()
        reader = _Stderr(proc.stderr, events_handle)
        reader.start()
        timer = threading.Timer(p["timeout"], proc.kill)
        timer.daemon = True
        timer.start()
        hasher, size = _Hasher(), 0
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
            diffs += _compare_counts(p["expect_counts"], reader.result.get("row_counts") or {})
        if p["expect_files"]:
            diffs += _compare_files(p["expect_files"], reader.files, p["expect_files_ignore"])
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

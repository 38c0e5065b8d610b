# Copyright: pulih maintainers
# Apache License 2.0
"""What the modules that run the pulih agent share: its event stream on standard error, the
stream's hash, the watch on the controller, ssh's argument vector, the check of the agent's
release, and the comparisons of a verification (row counts, a file list)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import queue
import re
import signal
import subprocess
import threading

import contextlib

from ansible_collections.pulih.core.plugins.module_utils.agent_request_schema import (
    PULIH_VERSION,
    SCHEMA_VERSION,
    UPGRADE,
    request_problem,
    version_mismatch,
)

CHUNK = 1 << 20
SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./-]+$")
SSH_WORD = re.compile(r"^[A-Za-z0-9_:.\[\]][A-Za-z0-9_:.%\[\]-]*$")  # never an option, never a space


def size_text(count):
    return (
        "%.1f GiB" % (count / float(1 << 30)) if count >= 1 << 27 else "%.1f MiB" % (count / float(1 << 20))
    )


def ssh_argv(p, remote):
    """ssh to p's user@address:port, key and known hosts only, running the words `remote`."""
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
    # shell: only plain words go there (paths, a receiver's checked verbs), nothing from data.
    return [*argv, "-l", p["user"], "--", p["address"], *remote]


def receiver_argv(receiver, words):
    """ssh to the repository's receiver (its forced command reads `words`, never a shell)."""
    target = {
        "address": receiver["address"],
        "port": int(receiver.get("port") or 22),
        "user": receiver["user"],
        "ssh_identity": receiver.get("ssh_identity"),
        "ssh_known_hosts": receiver.get("ssh_known_hosts"),
    }
    return ssh_argv(target, words)


class Hasher(threading.Thread):
    """SHA-256 in its own thread (hashlib releases the GIL), overlapping the disk writes."""

    def __init__(self):
        super().__init__(daemon=True)
        self.digest = hashlib.sha256()
        self.blocks = queue.Queue(maxsize=8)

    def run(self):
        for block in iter(self.blocks.get, None):
            self.digest.update(block)


class AgentStderr(threading.Thread):
    """Reads the agent's standard error: structured events and the tools' messages."""

    def __init__(self, stream, events_handle):
        super().__init__(daemon=True)
        self.stream = stream
        self.events_handle = events_handle
        self.events_digest = hashlib.sha256()
        self.events_size = 0
        self.hello = None  # the agent's first event: its pulih version
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
            if kind == "hello":
                self.hello = event
            elif kind == "result":
                self.result = event
            elif kind == "file":
                self.files[event["path"]] = event
                if self.events_handle is not None:
                    data = (json.dumps(event, sort_keys=True) + "\n").encode()
                    self.events_handle.write(data)
                    self.events_digest.update(data)
                    self.events_size += len(data)


class ControllerWatch(threading.Thread):
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


def compare_counts(expected, actual):
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


def excluded(path, patterns):
    """Whether the agent's walk leaves `path` out: a pattern matches it or a folder above it
    (the walk never enters an excluded folder)."""
    parts = path.split("/")
    for depth in range(1, len(parts) + 1):
        here = "/".join(parts[:depth])
        if any(fnmatch.fnmatch(here, p) or fnmatch.fnmatch(parts[depth - 1], p) for p in patterns):
            return True
    return False


def compare_files(expected_path, actual, ignore=()):
    """Differences between a file list (JSON lines) and the entries an agent listed; paths
    that the patterns in `ignore` match are not compared (excluded paths kept in place)."""
    expected = {}
    with open(expected_path, "rb") as handle:
        for raw in handle:
            if raw.strip():
                entry = json.loads(raw)
                if not excluded(entry["path"], ignore):
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


# --------------------------------------------------------------------------- the agent on this server


# The options the modules that start the agent on this server share (doc fragment pulih.core.agent).
AGENT_ARGUMENTS = dict(
    server=dict(type="str", required=True),
    agent=dict(type="str", default="/var/lib/pulih/pulih_agent.pyz"),
    python=dict(type="str", default="/usr/bin/python3"),
    tool_path=dict(type="list", elements="str", default=[]),
    receiver=dict(type="dict", required=True),
    request=dict(type="dict", required=True),
    secret=dict(type="dict", default={}, no_log=True),
    timeout=dict(type="int", default=86400),
)


class Failed(Exception):
    """A step of a stream on this server failed; the message says what to do."""


def agent_params_problem(p):
    """Why the agent's paths cannot be used (None when they can)."""
    for key in ("agent", "python"):
        if not SAFE_PATH.match(p[key]):
            return "%s must be a plain absolute path, got %r" % (key, p[key])
    for folder in p["tool_path"]:
        if not SAFE_PATH.match(folder):
            return "tool_path entries must be plain absolute paths, got %r" % folder
    receiver = p["receiver"]
    for key in ("user", "address"):
        if not SSH_WORD.match(str(receiver.get(key, ""))):
            return "receiver %s %r is not a name ssh takes safely" % (key, receiver.get(key))
    return None


def agent_request(p):
    """The agent's request (schemas/agent_request.schema.json) for the task's one item, with
    its tool path and its secrets (kept out of the task's arguments). Raises Failed, before
    anything starts, when it does not match the schema the agent checks it against too."""
    item = json.loads(json.dumps(p["request"]))
    mode = item.pop("mode", None)
    if p["secret"].get("password") is not None:
        item.setdefault("conn", {})["password"] = p["secret"]["password"]
    if p["secret"].get("identity"):
        item["identity"] = p["secret"]["identity"]
    request = {
        "schema_version": SCHEMA_VERSION,
        "pulih_version": PULIH_VERSION,
        "mode": mode,
        "items": [item],
    }
    if p["tool_path"]:
        request["tool_path"] = p["tool_path"]
    problem = request_problem(request)
    if problem:
        # The message names the field, never its value: the request holds the secrets.
        raise Failed("%s (for the agent on %s; the roles and the agent disagree)" % (problem, p["server"]))
    return request


def check_local(p):
    """Fail before anything starts when this server lacks the agent's Python or its key."""
    if not os.path.exists(p["python"]):
        raise Failed(
            "there is no Python at %s on %s: install python3 (3.9 or later) or set pulih_common_python"
            % (p["python"], p["server"])
        )
    identity = p["receiver"].get("ssh_identity")
    if identity and not os.path.isfile(identity):
        raise Failed(
            "%s has no key for the repository at %s: make one (ssh-keygen -t ed25519) and put its public "
            "key on the repository host with the receiver's restrict,command= line (README, Keys)"
            % (p["server"], identity)
        )


def start_agent(p):
    """The agent in a session of its own, so that its whole pipeline can be stopped at once."""
    return subprocess.Popen(
        [p["python"], p["agent"]],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def kill_agent(agent):
    """The agent's whole group: its pipeline (pg_dump | zstd, tar) holds its pipes too."""
    if agent is not None:
        with contextlib.suppress(OSError):
            os.killpg(agent.pid, signal.SIGKILL)


def reply_problem(p, code, reader):
    """Why the agent's reply is not taken: an agent of another pulih release (the message names
    the older side, to upgrade), or one older than the version check, which says no release.
    None when it is of this release, or failed before it could say (agent_failure says why)."""
    if reader.hello is None:
        if code not in (0, 5):  # not installed, no Python, killed: not a question of versions
            return None
        return "the agent on %s says no pulih version: it is older than the controller (pulih %s); %s" % (
            p["server"],
            PULIH_VERSION,
            UPGRADE["agent"],
        )
    return version_mismatch(reader.hello.get("pulih_version"), PULIH_VERSION, p["server"])


def agent_failure(p, code, reader):
    why = "; ".join(reader.messages[-6:]) or "no message"
    if code == 2 and "can't open file" in why:
        why = "the agent is not installed at %s on %s (%s)" % (p["agent"], p["server"], why)
    return "the agent on %s failed (exit %s): %s" % (p["server"], code, why)


def refusal(message, what, fallback):
    """The receiver's refusal (one 'pulih receiver: ...' line) as the error of `what`."""
    return message.replace("pulih receiver: ", "the repository refused %s: " % what, 1) or fallback


def receiver_answer(proc, what):
    """The receiver's one JSON line, or its refusal as the error."""
    out, err = proc.communicate()
    message = err.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        if proc.returncode == 255:
            raise Failed(
                "SSH to the repository's receiver failed while %s: %s" % (what, message or "no message")
            )
        raise Failed(refusal(message, what, what))
    try:
        return json.loads(out)
    except ValueError:
        raise Failed("the repository's receiver gave no answer while %s" % what) from None

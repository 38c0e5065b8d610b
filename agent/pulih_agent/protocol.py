"""The agent's protocol: its request (the first line of standard input, validated against
schemas/agent_request.schema.json by the generated request_schema), the "@@pulih <json>"
events on standard error, and its errors.

Versions. The request carries the controller's pulih version and the agent's first event
("hello") its own; each side refuses the other's release unless both are of the same pulih
major.minor (request_schema.version_mismatch, one rule for both sides), and says which side
to upgrade: the older one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from .request_schema import PULIH_VERSION, SCHEMA_VERSION, UPGRADE, request_problem, version_mismatch

CHUNK = 1 << 20
# Streaming modes carry one item: their standard input or output is that item's artifact.
STREAMING = ("dump", "verify", "stage")
MAX_REQUEST_BYTES = 16 << 20


class AgentError(Exception):
    """A failure the agent can say in one sentence a person can act on."""


class BadRequest(AgentError):
    """The request itself is wrong (the controller and this agent disagree)."""


# The item being run, named in its events when the request carries several.
_CURRENT = {}


def emit(event, **fields):
    fields["event"] = event
    fields.update(_CURRENT)
    sys.stderr.write("@@pulih " + json.dumps(fields, sort_keys=True) + "\n")
    sys.stderr.flush()


def set_current_item(index, item, several):
    """Events from here on belong to item `index` (named only when the request has several)."""
    _CURRENT.clear()
    if several:
        _CURRENT["index"] = index
        if item.get("name"):
            _CURRENT["item"] = item["name"]


def tool_version(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except OSError:
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else None


def read_line(fd=0, limit=MAX_REQUEST_BYTES):
    """The first line of `fd`, read byte by byte: what follows it is the artifact."""
    line = b""
    while not line.endswith(b"\n"):
        char = os.read(fd, 1)
        if not char:
            break
        line += char
        if len(line) > limit:
            raise BadRequest("the request is longer than %d bytes" % limit)
    return line


def say_hello():
    """The first event: which pulih this agent is, for the controller to check."""
    emit("hello", pulih_version=PULIH_VERSION, schema_version=SCHEMA_VERSION)


def controller_problem(request):
    """Why this agent takes no request from the controller that sent `request`: another pulih
    release, or a schema version of another release (a controller older than the version
    check sends none). None when it takes it; the schema's check comes after this one."""
    theirs = request.get("pulih_version")
    if isinstance(theirs, str):
        mismatch = version_mismatch(PULIH_VERSION, theirs, socket.gethostname())
        if mismatch:
            return mismatch
    schema = request.get("schema_version")
    if schema == SCHEMA_VERSION:
        return None
    newer = isinstance(schema, int) and schema > SCHEMA_VERSION
    return "the request is of schema version %r and this agent (pulih %s) speaks %d: %s" % (
        schema,
        PULIH_VERSION,
        SCHEMA_VERSION,
        UPGRADE["agent" if newer else "controller"],
    )


def parse_request(line):
    """The request in `line`, checked against the schema; BadRequest says what is wrong."""
    if not line.strip():
        raise BadRequest("no request on standard input")
    try:
        request = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("the request is not JSON: %s" % exc) from None
    problem = controller_problem(request) if isinstance(request, dict) else None
    if problem:
        raise BadRequest(problem)
    problem = request_problem(request)
    if problem:
        raise BadRequest(problem)
    return request


def read_request(fd=0):
    return parse_request(read_line(fd))

"""The agent's protocol: its request (the first line of standard input, validated against
schemas/agent_request.schema.json by the generated request_schema), the "@@pulih <json>"
events on standard error, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .request_schema import request_problem

CHUNK = 1 << 20
SCHEMA_VERSION = 1
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


def parse_request(line):
    """The request in `line`, checked against the schema; BadRequest says what is wrong."""
    if not line.strip():
        raise BadRequest("no request on standard input")
    try:
        request = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("the request is not JSON: %s" % exc) from None
    if isinstance(request, dict) and request.get("schema_version") not in (None, SCHEMA_VERSION):
        raise BadRequest(
            "the request is of schema version %r and this agent speaks %d: install the agent that "
            "comes with the controller's pulih (the roles copy it to the server)"
            % (request.get("schema_version"), SCHEMA_VERSION)
        )
    problem = request_problem(request)
    if problem:
        raise BadRequest(problem)
    return request


def read_request(fd=0):
    return parse_request(read_line(fd))

# Copyright: pulih maintainers
# Apache License 2.0
from __future__ import annotations


class ModuleDocFragment:
    """The options of the modules that start the pulih agent on the server they run on and
    reach the repository's receiver from there (pulih.core.agent_push, pulih.core.agent_pull)."""

    DOCUMENTATION = r"""
options:
  server:
    description: This server's name or address, for messages only.
    type: str
    required: true
  agent:
    description: Path of the agent (C(pulih_agent.pyz), a zipapp) on this server.
    type: str
    default: /var/lib/pulih/pulih_agent.pyz
  python:
    description: Python interpreter the agent runs with.
    type: str
    default: /usr/bin/python3
  tool_path:
    description: Folders searched before C(PATH) for the tools the agent runs.
    type: list
    elements: str
    default: []
  receiver:
    description:
      - How this server reaches the repository's receiver. C(address), C(port), C(user) of the
        repository host; C(ssh_identity) this server's private key (its public key is in the
        repository account's C(authorized_keys) with C(restrict,command=)); C(ssh_known_hosts) a
        known hosts file holding the repository host's key.
    type: dict
    required: true
  request:
    description: The agent's request (mode, engine, connection without its password, ...).
    type: dict
    required: true
  secret:
    description:
      - The secrets of the request, kept apart so that they are masked (C(password) of the
        database connection, C(identity) an age private key).
    type: dict
    default: {}
  timeout:
    description: Seconds the whole stream may take.
    type: int
    default: 86400
"""

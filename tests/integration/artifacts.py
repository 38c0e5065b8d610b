"""What the ansible-runner artifacts of a test module's runs show about where each task ran and
what it was given: the repository host must run none of them and be given no secret."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SECRET_KEYS = {"secret", "password", "identity"}
# These run in the controller itself, whatever host they are for.
ON_THE_CONTROLLER = {"ansible.builtin.debug", "ansible.builtin.set_fact", "ansible.builtin.assert"}


def secret_keys(value: Any) -> set[str]:
    """Names of secret-bearing keys with a value anywhere in a module's arguments."""
    if isinstance(value, dict):
        found = {k for k, v in value.items() if k in SECRET_KEYS and v not in (None, "", {}, [])}
        return found.union(*(secret_keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(secret_keys(v) for v in value))
    return set()


@dataclass
class Tasks:
    on_repository: list[tuple[str, str]] = field(default_factory=list)  # (task, action)
    with_secret: set[str] = field(default_factory=set)  # actions given a secret
    receiver_verbs: set[str] = field(default_factory=set)
    leaked: list[str] = field(default_factory=list)  # tasks whose arguments hold a secret in clear
    seen: int = 0


def tasks_of(env: dict[str, Any]) -> Tasks:
    """Every task result in the runs of the test module's state folder."""
    state = env["state"]
    repo_host = state.repository_host
    assert repo_host is not None
    repo = repo_host.address
    found = Tasks()
    for path in Path(env["environ"]["PULIH_STATE_DIR"]).rglob("job_events/*.json"):
        event = json.loads(path.read_text())
        data = event.get("event_data", {})
        res = data.get("res")
        if event.get("event") not in ("runner_on_ok", "runner_on_failed") or not isinstance(res, dict):
            continue
        found.seen += 1
        action = data.get("task_action", "")
        delegated = (res.get("_ansible_delegated_vars") or {}).get("ansible_host")
        args = (res.get("invocation") or {}).get("module_args") or {}
        text = json.dumps(args)
        if state.db_password in text or "AGE-SECRET-KEY-" in text:
            found.leaked.append(data.get("task", ""))
        if repo in (delegated, data.get("remote_addr")) or data.get("host") == repo_host.name:
            if action not in ON_THE_CONTROLLER:
                found.on_repository.append((data.get("task", ""), action))
        elif secret_keys(args):
            found.with_secret.add(action)
        if action == "pulih.core.receiver" and res.get("verb"):
            found.receiver_verbs.add(res["verb"])
    return found

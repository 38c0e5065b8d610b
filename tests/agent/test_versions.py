"""The agent and the controller check each other's release: the request carries the
controller's pulih version, the agent's first event ("hello") its own, and each side refuses
the other unless both are of the same major.minor release, with a message that names the side
to upgrade (the older one). The agent here is the zipapp the roles ship, run as on a server, or
a copy of it that says another version; the controller is the module pulih.core.agent_pull,
run by Ansible."""

from __future__ import annotations

import importlib
import io
import json
import re
import subprocess
import sys
import tomllib
import zipapp
import zipfile
from pathlib import Path

import pytest
import yaml

import pulih
from tests import agentkit
from tests.conftest import PROJECT

VERSION = agentkit.PULIH_VERSION
MAJOR, MINOR = (int(part) for part in VERSION.split(".")[:2])
NEXT_MINOR = f"{MAJOR}.{MINOR + 1}.0"
NEXT_MAJOR = f"{MAJOR + 1}.0.0"
PATCH = f"{MAJOR}.{MINOR}.{int(VERSION.split('.')[2]) + 7}"
UPGRADE_AGENT = "upgrade the agent (make collection, then reinstall the collection"
UPGRADE_CONTROLLER = "upgrade the controller (install the pulih bundle or collection of the agent's release)"
# What the agent of the release before the version check (873ebc3) writes when it refuses a
# request of schema version 2: no hello, exit 5.
PREVIOUS_AGENTS_REFUSAL = (
    b"pulih agent: the request is of schema version 2 and this agent speaks 1: install the agent "
    b"that comes with the controller's pulih (the roles copy it to the server)\n"
    b'@@pulih {"event": "timing", "seconds": 0.0}\n'
)


def older_release() -> str:
    if MINOR:
        return f"{MAJOR}.{MINOR - 1}.0"
    if MAJOR:
        return f"{MAJOR - 1}.0.0"
    pytest.skip("no release is older than 0.0")


def probe(tree: Path, **versions: object) -> dict:
    """A probe of a file tree: it touches nothing, and needs no server of any kind."""
    item = {"engine": "files", "live": str(tree), "token": "a", "nonce": "1"}
    return {"mode": "probe", "items": [item], **versions}


def run_line(line: bytes) -> agentkit.Run:
    done = subprocess.run(
        ["/usr/bin/python3", str(agentkit.ensure_built())], input=line, capture_output=True, timeout=60
    )
    return agentkit.Run(done)


# --------------------------------------------------------------------------- what the agent carries


def test_the_zipapp_carries_the_projects_version_and_says_it_first(tmp_path):
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["version"]
    galaxy = PROJECT / "collections" / "ansible_collections" / "pulih" / "core" / "galaxy.yml"
    assert project == pulih.__version__ == yaml.safe_load(galaxy.read_text())["version"] == VERSION
    assert project == agentkit.package("request_schema").PULIH_VERSION
    agentkit.package("protocol")
    assert sys.modules["pulih_agent"].__version__ == project
    run = agentkit.run(probe(tmp_path))
    assert run.code == 0, run.stderr
    assert run.events[0] == {
        "event": "hello",
        "pulih_version": project,
        "schema_version": agentkit.SCHEMA_VERSION,
    }


# --------------------------------------------------------------------------- the agent refuses


@pytest.mark.parametrize(
    ("controller", "upgrade"),
    [
        (NEXT_MINOR, UPGRADE_AGENT),
        (NEXT_MAJOR, UPGRADE_AGENT),
        ("older", UPGRADE_CONTROLLER),
    ],
)
def test_the_agent_refuses_a_controller_of_another_release(tmp_path, controller, upgrade):
    controller = older_release() if controller == "older" else controller
    run = agentkit.run(probe(tmp_path, pulih_version=controller))
    assert run.code == 5, run.stderr
    assert run.message.startswith("the agent on ") and upgrade in run.message
    assert f" is pulih {VERSION} and the controller is {controller}: " in run.message
    assert run.of("result") == [] and run.stdout == b""
    assert run.of("hello")[0]["pulih_version"] == VERSION  # the refusal says who refused


def test_a_controller_of_another_patch_release_is_served(tmp_path):
    run = agentkit.run(probe(tmp_path, pulih_version=PATCH))
    assert run.code == 0, run.stderr
    assert run.result["exists"] is True


def test_the_agent_refuses_a_controller_older_than_the_version_check(tmp_path):
    """What the previous release's modules send: schema version 1, no pulih version."""
    item = {"engine": "files", "live": str(tmp_path), "token": "a", "nonce": "1"}
    run = run_line(json.dumps({"schema_version": 1, "mode": "probe", "items": [item]}).encode() + b"\n")
    assert run.code == 5, run.stderr
    assert run.message == (
        f"the request is of schema version 1 and this agent (pulih {VERSION}) speaks "
        f"{agentkit.SCHEMA_VERSION}: {UPGRADE_CONTROLLER}"
    )
    assert run.of("result") == []


# --------------------------------------------------------------------------- the controller refuses


def agent_saying(version: str, folder: Path) -> Path:
    """The shipped zipapp, but built as of pulih `version` (its generated request_schema says so)."""
    source = folder / "src"
    with zipfile.ZipFile(agentkit.ensure_built()) as archive:
        archive.extractall(source)
    schema = source / "pulih_agent" / "request_schema.py"
    text = schema.read_text()
    assert f'PULIH_VERSION = "{VERSION}"' in text
    schema.write_text(text.replace(f'PULIH_VERSION = "{VERSION}"', f'PULIH_VERSION = "{version}"', 1))
    target = folder / "pulih_agent.pyz"
    zipapp.create_archive(source, target, interpreter="/usr/bin/python3")
    return target


def agent_pull(agent: Path, tree: Path) -> tuple[str, dict]:
    """pulih.core.agent_pull's status (SUCCESS, FAILED!) and result for a probe of `tree`, run
    by Ansible on this machine."""
    args = {
        "server": "db-lama",
        "agent": str(agent),
        "receiver": {"address": "127.0.0.1", "user": "pulih"},  # a probe fetches nothing
        "request": {"mode": "probe", "engine": "files", "live": str(tree), "token": "a", "nonce": "1"},
    }
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible"),
            "localhost",
            "-c",
            "local",
            "-i",
            "localhost,",
            "-e",
            "ansible_python_interpreter=/usr/bin/python3",
            "-m",
            "pulih.core.agent_pull",
            "-a",
            json.dumps(args),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=PROJECT,
    )
    said = re.search(r"^localhost \| (\S+) => ", done.stdout, re.MULTILINE)
    assert said, done.stdout + done.stderr
    return said.group(1), json.JSONDecoder().raw_decode(done.stdout[said.end() :])[0]


def test_the_controller_takes_the_reply_of_an_agent_of_its_own_release(tmp_path):
    status, answer = agent_pull(agentkit.ensure_built(), tmp_path)
    assert status == "SUCCESS", answer
    assert answer["result"]["exists"] is True


@pytest.mark.parametrize(("agent", "upgrade"), [(NEXT_MINOR, UPGRADE_CONTROLLER), ("older", UPGRADE_AGENT)])
def test_the_controller_refuses_the_reply_of_an_agent_of_another_release(tmp_path, agent, upgrade):
    agent = older_release() if agent == "older" else agent
    status, answer = agent_pull(agent_saying(agent, tmp_path), tmp_path)
    assert status == "FAILED!"
    # The controller's own words (the agent refused too, but its exit is not what is reported).
    said = answer["msg"]
    assert said.startswith(f"the agent on db-lama is pulih {agent} and the controller is {VERSION}: ")
    assert upgrade in said
    assert "result" not in answer


def module_utils(name):
    return importlib.import_module(f"ansible_collections.pulih.core.plugins.module_utils.{name}")


def test_the_controller_refuses_an_agent_older_than_the_version_check(ansible_plugins):
    """The previous release's agent refuses the request and says no version: upgrade it."""
    agent_io = module_utils("agent_io")
    reader = agent_io.AgentStderr(io.BytesIO(PREVIOUS_AGENTS_REFUSAL), None)
    reader.run()
    problem = agent_io.reply_problem({"server": "db-lama"}, 5, reader)
    assert problem == (
        f"the agent on db-lama says no pulih version: it is older than the controller (pulih {VERSION}); "
        "upgrade the agent (make collection, then reinstall the collection: its roles copy the agent "
        "to every server)"
    )
    # An agent that never started (no Python, not installed) is not a question of versions.
    silent = agent_io.AgentStderr(io.BytesIO(b""), None)
    silent.run()
    assert agent_io.reply_problem({"server": "db-lama"}, 2, silent) is None


@pytest.mark.parametrize(
    ("agent", "controller", "side"),
    [
        ("0.4.0", "0.4.3", None),
        ("0.4.9", "0.4.0", None),
        ("0.4.0", "0.5.0", "agent"),
        ("0.5.0", "0.4.7", "controller"),
        ("1.0.0", "0.9.0", "controller"),
        ("0.9.0", "1.0.0", "agent"),
        ("unknown", "0.4.0", "agent"),
        ("0.4.0", None, "controller"),
    ],
)
def test_compatible_is_the_same_major_minor_release(ansible_plugins, agent, controller, side):
    assert module_utils("agent_request_schema").side_to_upgrade(agent, controller) == side

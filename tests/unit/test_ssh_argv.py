"""The SSH command line to the repository's receiver: nothing from the register can become an
ssh option.

Checked with ssh's own parser (`ssh -G` prints the configuration a command line gives and
connects nowhere), for the injection the issue found: `ssh_user: "-oProxyCommand=..."`."""

from __future__ import annotations

import importlib
import json
import subprocess

import pytest


class AgentIO:
    """module_utils.agent_io, and its ssh command line to a receiver's verb."""

    def __init__(self, module) -> None:
        self.module = module
        self.SSH_WORD = module.SSH_WORD
        self.compare_files = module.compare_files

    def _ssh_argv(self, p):
        return self.module.ssh_argv(p, ["list", "simpeg"])


@pytest.fixture(scope="module")
def agent_io(ansible_plugins):  # the loader makes ansible_collections.pulih importable
    return AgentIO(importlib.import_module("ansible_collections.pulih.core.plugins.module_utils.agent_io"))


def ssh_config(argv: list[str]) -> dict[str, str]:
    """What ssh makes of the command line, without the remote command."""
    end = argv.index("--") + 2  # the options, "--" and the destination
    done = subprocess.run(["ssh", "-G", *argv[1:end]], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)


def params(**changes):
    base = {
        "address": "127.0.0.5",
        "port": 2222,
        "user": "pulih",
        "ssh_identity": None,
        "ssh_known_hosts": None,
        "python": "/usr/bin/python3",
        "agent": "/var/lib/pulih/pulih_agent.pyz",
    }
    return {**base, **changes}


def test_an_option_as_user_runs_nothing(agent_io, tmp_path):
    # "user@host" after the options let ssh read this as -oProxyCommand and run it.
    canary = tmp_path / "pwned"
    argv = agent_io._ssh_argv(params(user=f"-oProxyCommand=touch {canary}"))
    done = subprocess.run(
        [*argv[: argv.index("--")], "-o", "ConnectTimeout=2", *argv[argv.index("--") :]],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 255
    assert not list(tmp_path.iterdir()), "ssh ran the register's ProxyCommand"


def test_a_plain_user_is_the_login_name(agent_io):
    config = ssh_config(agent_io._ssh_argv(params()))
    assert (config["user"], config["hostname"], config["port"]) == ("pulih", "127.0.0.5", "2222")
    assert config.get("proxycommand", "none") == "none"


def test_an_option_as_address_is_never_read_as_one(agent_io, tmp_path):
    argv = agent_io._ssh_argv(params(address="-oProxyCommand=touch /tmp/x"))
    assert argv[argv.index("--") + 1] == "-oProxyCommand=touch /tmp/x"
    done = subprocess.run(["ssh", "-G", *argv[1 : argv.index("--") + 2]], capture_output=True, text=True)
    assert "proxycommand touch" not in done.stdout.lower()


@pytest.mark.parametrize("word", ["-oProxyCommand=x", "a b", "x;y", "", "pulih\nx"])
def test_the_module_refuses_what_is_not_a_plain_name(agent_io, word):
    assert not agent_io.SSH_WORD.match(word)


@pytest.mark.parametrize(
    "word", ["pulih", "root", "127.0.0.1", "simpeg-db01.kota.go.id", "fe80::1%eth0", "::1"]
)
def test_the_module_accepts_users_and_addresses(agent_io, word):
    assert agent_io.SSH_WORD.match(word)


def test_the_post_swap_comparison_skips_excluded_paths_and_what_lies_in_excluded_folders(agent_io, tmp_path):
    """After an undo from a pre-restore backup (which holds everything), the live tree's
    excluded paths are the live ones: not compared, nor anything inside an excluded folder."""
    listed = tmp_path / "files.jsonl"
    entries = [
        {"path": "a.txt", "type": "file", "size": 1, "sha256": "x"},
        {"path": "cache", "type": "dir"},
        {"path": "cache/s1", "type": "file", "size": 1, "sha256": "y"},
        {"path": "b.tmp", "type": "file", "size": 1, "sha256": "z"},
    ]
    listed.write_text("".join(json.dumps(e) + "\n" for e in entries))
    live = {"a.txt": entries[0]}
    assert agent_io.compare_files(str(listed), live, ["cache", "*.tmp"]) == []
    assert agent_io.compare_files(str(listed), live, []) == [
        "b.tmp: in the file list, not restored",
        "cache: in the file list, not restored",
        "cache/s1: in the file list, not restored",
    ]

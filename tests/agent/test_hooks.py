"""The agent's restore hooks (mode 'hook'), as it runs them on a data server: each an argument
list without a shell, no standard input, an environment of its own (none of the agent's),
stopped with its whole process group at its timeout; pre-restore hooks stop at the first
failure, post-restore hooks all run; every result has its exit, time and end of output."""

from __future__ import annotations

import os
import time

from tests import agentkit

hooks = agentkit.package("hooks")


def test_a_hook_runs_without_a_shell_and_its_output_and_exit_are_reported(tmp_path):
    marker = tmp_path / "maintenance-on"
    done = hooks.run_hook(["/usr/bin/touch", str(marker)], 10)
    assert done["ok"] and done["rc"] == 0 and marker.exists() and not done["timed_out"]
    # No shell: a ';' is an argument to echo, never a second command.
    said = hooks.run_hook(["/bin/echo", "satu;", "/usr/bin/touch", str(tmp_path / "never")], 10)
    assert said["output"].strip() == f"satu; /usr/bin/touch {tmp_path / 'never'}"
    assert not (tmp_path / "never").exists()
    failed = hooks.run_hook(["/bin/sh", "-c", "echo aplikasi sibuk >&2; exit 3"], 10)
    assert (failed["ok"], failed["rc"], failed["output"].strip()) == (False, 3, "aplikasi sibuk")
    missing = hooks.run_hook(["/nonexistent/stop-app"], 10)
    assert (
        not missing["ok"]
        and missing["rc"] is None
        and "cannot start /nonexistent/stop-app" in missing["output"]
    )


def test_a_hook_gets_no_secret_of_the_agent_and_only_the_end_of_a_long_output(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "rahasia-sekali")
    env = hooks.run_hook(["/usr/bin/env"], 10)
    assert "rahasia-sekali" not in env["output"] and "PATH=/usr/local/sbin" in env["output"]
    long = hooks.run_hook(["/bin/sh", "-c", "seq 1 100000"], 10)
    assert len(long["output"]) <= hooks.OUTPUT_TAIL and long["output"].rstrip().endswith("100000")


def test_a_hook_past_its_timeout_is_stopped_with_its_children(tmp_path):
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    done = hooks.run_hook(["/bin/sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"], 1)
    assert done["timed_out"] and not done["ok"] and done["rc"] is None
    assert time.monotonic() - started < 30 and "stopped after its timeout of 1 s" in done["output"]
    child = int(pidfile.read_text())
    for _ in range(100):  # the group was killed: the child goes too (reaped by init)
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the hook's child {child} outlived its timeout")


def test_pre_hooks_stop_at_the_first_failure_and_post_hooks_all_run(tmp_path):
    touch = lambda name: {"argv": ["/usr/bin/touch", str(tmp_path / name)], "timeout": 10}  # noqa: E731
    fail = {"argv": ["/bin/false"], "timeout": 10}
    pre = agentkit.run(
        {"mode": "hook", "engine": "postgresql", "phase": "pre", "hooks": [touch("a"), fail, touch("b")]}
    )
    assert pre.code == 0, pre.stderr
    assert [h["ok"] for h in pre.result["hooks"]] == [True, False] and pre.result["ok"] is False
    assert (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    post = agentkit.run({"mode": "hook", "engine": "files", "phase": "post", "hooks": [fail, touch("c")]})
    assert [h["ok"] for h in post.result["hooks"]] == [False, True] and (tmp_path / "c").exists()


def test_a_hook_request_without_its_hooks_or_with_a_shell_string_is_refused():
    bare = agentkit.run({"mode": "hook", "engine": "files", "phase": "pre"})
    assert bare.code != 0 and "hooks" in bare.message
    string = agentkit.run(
        {
            "mode": "hook",
            "engine": "files",
            "phase": "pre",
            "hooks": [{"argv": "systemctl stop x", "timeout": 5}],
        }
    )
    assert string.code != 0 and "argv" in string.message

"""The agent's pipelines: pipefail always (any process failing fails the stream, by name), every
process killed when the Python side fails, secrets only as in-memory files, and a dump whose
compressor dies mid-stream failing the item."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests import agentkit

pipeline = agentkit.package("pipeline")
protocol = agentkit.package("protocol")


def test_the_last_process_failing_fails_the_pipeline():
    with pytest.raises(protocol.AgentError, match=r"^false exited 1$"), pipeline.Pipeline() as pipe:
        first = pipe.add(["true"])
        pipe.add(["false"], stdin=first.stdout, stdout=subprocess.DEVNULL)


def test_a_middle_process_failing_fails_the_pipeline_although_the_last_succeeds():
    with pytest.raises(protocol.AgentError, match=r"^sh exited 7$"), pipeline.Pipeline() as pipe:
        first = pipe.add(["printf", "data"])
        middle = pipe.add(["sh", "-c", "cat >/dev/null; exit 7"], stdin=first.stdout)
        pipe.add(["cat"], stdin=middle.stdout, stdout=subprocess.DEVNULL)


def test_every_failure_is_named():
    with (
        pytest.raises(protocol.AgentError, match=r"^false exited 1; sh exited 3$"),
        pipeline.Pipeline() as pipe,
    ):
        pipe.add(["false"], stdout=subprocess.DEVNULL)
        pipe.add(["sh", "-c", "exit 3"], stdout=subprocess.DEVNULL)


def test_a_program_that_is_not_there_is_said_so():
    with (
        pytest.raises(protocol.AgentError, match=r"^cannot run pulih-no-such-tool: "),
        pipeline.Pipeline() as pipe,
    ):
        pipe.add(["pulih-no-such-tool"])


def test_an_error_on_the_python_side_kills_every_process():
    with pytest.raises(RuntimeError), pipeline.Pipeline() as pipe:
        sleeper = pipe.add(["sleep", "300"], stdout=subprocess.DEVNULL)
        raise RuntimeError("the agent failed while the pipeline ran")
    assert sleeper.poll() is not None, "killed, and waited for (no zombie)"


def test_a_secret_is_an_in_memory_file_only_the_children_read(tmp_path):
    path = pipeline.secret_path("pa:ss\nword")
    fd = int(path.rsplit("/", 1)[1])
    assert str(Path(f"/proc/self/fd/{fd}").readlink()).startswith("/memfd:pulih-secret")
    assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600, "libpq and the MariaDB client want 0600"
    assert pipeline.secret_path("pa:ss\nword") == path, "one file per secret"
    with pipeline.Pipeline() as pipe:
        reader = pipe.add(["cat", path])
        out = reader.stdout.read()
    assert out == b"pa:ss\nword"
    assert all(b"pa:ss" not in p.read_bytes() for p in tmp_path.rglob("*")), "never on disk"


def test_an_encrypted_backup_without_an_identity_is_refused_before_anything_runs():
    with (
        pytest.raises(protocol.AgentError, match="encrypted and no age identity"),
        pipeline.Pipeline() as pipe,
    ):
        pipeline.add_input_stages(pipe, {"encrypted": True})
        assert pipe.procs == []


def test_the_compressor_follows_the_request():
    assert pipeline.compressor({}) == ["zstd", "-q", "-c", "-T0", "-3"]
    assert pipeline.compressor({"zstd_level": 9, "zstd_threads": 2}) == ["zstd", "-q", "-c", "-T2", "-9"]


def test_copy_stream_moves_everything_between_pipes():
    data = os.urandom(3 * pipeline.CHUNK + 17)
    source = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    sink = subprocess.Popen(["sha256sum"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def feed():
        source.stdin.write(data)
        source.stdin.close()

    feeder = threading.Thread(target=feed)
    feeder.start()
    pipeline.copy_stream(source.stdout, sink.stdin)
    feeder.join()
    sink.stdin.close()
    assert sink.stdout.read().split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert source.wait() == 0 and sink.wait() == 0


def test_a_dump_whose_compressor_dies_mid_stream_fails_the_item(tmp_path):
    """zstd (first on tool_path) reads a little and dies: the agent exits 3 naming it, even
    though tar and the Python side did nothing wrong."""
    tools = tmp_path / "bin"
    tools.mkdir()
    fake = tools / "zstd"
    fake.write_text("#!/bin/sh\nhead -c 100 >/dev/null\nexit 9\n")
    fake.chmod(0o755)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big").write_bytes(os.urandom(4 << 20))
    started = time.monotonic()
    run = agentkit.run({"mode": "dump", "engine": "files", "path": str(tree), "tool_path": [str(tools)]})
    assert run.code == 3, run.stderr
    assert "zstd exited 9" in run.message
    assert run.of("result") == [], "no result: the item failed"
    assert time.monotonic() - started < 120

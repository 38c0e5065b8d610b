"""Processes joined by pipes, pipefail always; the compression and encryption stages around a
dump or a restore; secrets as in-memory files."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from .protocol import CHUNK, AgentError

# Secrets (a database password, an age identity) reach the tools as in-memory files
# (memfd), open in this process only: the children read them as /dev/fd/N, and they vanish
# with the agent however it ends, SIGKILL included. Never a file on disk, never the
# environment, never a command line.
_SECRET_FDS = {}


def secret_path(content):
    """A path to an in-memory file holding `content` (mode 0600, as libpq and the MariaDB
    client want), readable by the children this process starts."""
    fd = _SECRET_FDS.get(content)
    if fd is None:
        fd = os.memfd_create("pulih-secret")
        os.fchmod(fd, 0o600)
        os.write(fd, content.encode("utf-8"))
        _SECRET_FDS[content] = fd
    return "/dev/fd/%d" % fd


def secret_fds():
    return tuple(_SECRET_FDS.values())


class Pipeline:
    """Processes connected by pipes; fails if any of them fails (pipefail).

    As a context manager: on leaving normally it waits for every process and raises when
    one failed; on an exception it kills them all, so no half-run pipeline outlives an error.
    """

    def __init__(self):
        self.procs = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            if issubclass(exc_type, AgentError):  # the agent's own refusal says it all
                self.kill()
                return False
            # A process that failed shows on the Python side as a broken pipe or a stream that
            # ends early ("ReadError: empty file"): its exit code is the failure to report.
            failed = self.failed_processes()
            self.kill()
            if failed:
                seen = (
                    ""
                    if issubclass(exc_type, BrokenPipeError)
                    else " (then %s: %s)" % (exc_type.__name__, exc)
                )
                raise AgentError("; ".join(failed) + seen) from None
            return False
        self.wait()
        return False

    def failed_processes(self, grace=5.0):
        """The processes that have exited with a failure, waiting up to `grace` seconds for
        the first one (the others may be blocked on a pipe, and are not waited for)."""
        deadline = time.monotonic() + grace
        while True:
            failed = [
                "%s exited %d" % (name, proc.returncode)
                for name, proc in self.procs
                if proc.poll() is not None and proc.returncode != 0
            ]
            if failed or time.monotonic() >= deadline:
                return failed
            time.sleep(0.05)

    def add(self, argv, stdin=None, stdout=subprocess.PIPE, env=None):
        try:
            proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, env=env, pass_fds=secret_fds())
        except OSError as exc:
            raise AgentError("cannot run %s: %s" % (argv[0], exc)) from None
        if (
            stdin is not None
            and stdin not in (subprocess.PIPE, subprocess.DEVNULL)
            and hasattr(stdin, "close")
        ):
            stdin.close()  # the child holds it now
        self.procs.append((argv[0], proc))
        return proc

    def wait(self):
        failed = []
        for name, proc in self.procs:
            code = proc.wait()
            if code != 0:
                failed.append("%s exited %d" % (name, code))
        if failed:
            raise AgentError("; ".join(failed))

    def kill(self):
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def compressor(request):
    level = int(request.get("zstd_level", 3))
    return ["zstd", "-q", "-c", "-T%d" % int(request.get("zstd_threads", 0)), "-%d" % level]


def add_output_stages(pipe, request, source_stdout):
    """zstd, then age when recipients are given, writing to our standard output."""
    recipients = request.get("recipients") or []
    out = sys.stdout.buffer
    out.flush()
    if not recipients:
        return pipe.add(compressor(request), stdin=source_stdout, stdout=out.fileno())
    zstd = pipe.add(compressor(request), stdin=source_stdout)
    age = ["age"]
    for recipient in recipients:
        age += ["-r", recipient]
    return pipe.add(age, stdin=zstd.stdout, stdout=out.fileno())


def add_input_stages(pipe, request):
    """age -d when encrypted, then zstd -d, reading our standard input."""
    stdin = sys.stdin.buffer
    if request.get("encrypted"):
        if not request.get("identity"):
            raise AgentError("the backup is encrypted and no age identity was given")
        age = pipe.add(["age", "-d", "-i", secret_path(request["identity"])], stdin=stdin)
        return pipe.add(["zstd", "-q", "-d", "-c"], stdin=age.stdout)
    return pipe.add(["zstd", "-q", "-d", "-c"], stdin=stdin)


def copy_stream(src, dst):
    """Copy between pipes without going through Python buffers where Linux allows."""
    src_fd, dst_fd = src.fileno(), dst.fileno()
    while True:
        try:
            moved = os.splice(src_fd, dst_fd, CHUNK)  # novm: 3.10+; older Pythons copy below
        except (AttributeError, OSError):
            data = os.read(src_fd, CHUNK)
            if not data:
                return
            os.write(dst_fd, data)
            continue
        if moved == 0:
            return

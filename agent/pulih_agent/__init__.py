"""pulih agent: the part of a backup, verification or restore that runs on a data server,
started there by the controller's modules (pulih.core.agent_push, agent_pull), which send its
output to the repository's receiver or feed it what they fetch from there. It ships as one
file, a zipapp (make agent), and runs with the server's own Python.

Protocol. The first line of standard input is a JSON request (schemas/agent_request.schema.json:
a schema version, the controller's pulih version, a mode and a list of items; it carries the
database password and any age identity, which therefore never appear in a process list; the
tools get them as in-memory files, see pipeline.secret_path). Then:
  mode "dump":   the artifact is written to standard output (compressed, maybe encrypted);
  mode "verify": the artifact follows on standard input; it is restored into scratch
                 space, measured, and the scratch space removed;
  mode "stage", "swap", "discard": a restore in three steps (see restore.py);
  mode "probe":  whether a restore's target exists, and what would stop its stage.
Standard error carries the tools' own messages and lines "@@pulih <json>" with structured
results: {"event": "hello", "pulih_version": ..., "schema_version": ...} first, before the
request is read (a controller of another release refuses the reply, as the agent refuses its
request: see protocol), {"event": "file", ...} per file of a tree, {"event": "result", ...}
once per item at the end (with "index" and "item" when the request has several). The exit
code is 0 only when every process of every pipeline of every item succeeded (pipefail, always).

Standard library, the system's psycopg2 (python3-psycopg2) and PyMySQL (python3-pymysql),
and the command-line tools pg_dump, pg_restore, mariadb-dump, mariadb, tar, zstd and age.
The oldest Python it runs on is OLDEST_PYTHON (checked in CI with vermin).
"""

from .request_schema import PULIH_VERSION as __version__  # noqa: F401 - the project's, built in

OLDEST_PYTHON = (3, 9)

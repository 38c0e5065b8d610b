"""The agent's request: one JSON line, checked against schemas/agent_request.schema.json by
generated code on both sides (the modules before they send it, the agent before it acts), with
a message that names the field and never a value; a request of several items reports each."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import zipfile

import jsonschema
import pytest

from tests import agentkit
from tests.conftest import PROJECT

SCHEMA = json.loads((PROJECT / "schemas" / "agent_request.schema.json").read_text())
protocol = agentkit.package("protocol")
SECRET = "s3cret:pa\\ss"

VALID = [
    {
        "mode": "dump",
        "engine": "postgresql",
        "conn": {"database": "simpeg", "port": 5432, "password": SECRET},
    },
    {"mode": "dump", "engine": "pg_globals", "conn": {"database": "simpeg"}},
    {"mode": "dump", "engine": "mariadb", "conn": {"database": "sirs", "port": "3306"}, "recipients": []},
    {"mode": "dump", "engine": "files", "path": "/srv/dokumen", "exclude": ["cache/*"], "zstd_level": 3},
    {"mode": "verify", "engine": "files", "encrypted": False, "scratch_parent": None, "room_bytes": None},
    {"mode": "verify", "engine": "mariadb", "conn": {"database": "x"}, "scratch_database": "pulih_verify_1"},
    {"mode": "stage", "engine": "files", "live": "/srv/x", "token": "ab12", "nonce": "0", "jobs": 0},
    {
        "mode": "swap",
        "engine": "postgresql",
        "conn": {"database": "x"},
        "live": "x",
        "token": "a",
        "nonce": "b",
    },
    {
        "mode": "probe",
        "engine": "mysql",
        "conn": {"socket": "/run/m.sock"},
        "live": "x",
        "token": "a",
        "nonce": "1",
    },
]
INVALID = [
    ({"schema_version": agentkit.SCHEMA_VERSION, "mode": "dump"}, "must contain ['items'] properties"),
    ({"mode": "backup", "engine": "files", "path": "/x"}, "data.mode must be one of"),
    ({"mode": "dump", "engine": "oracle", "conn": {"database": "x"}}, "data.items[0].engine must be one of"),
    ({"mode": "dump", "engine": "files", "path": "relative"}, "data.items[0].path must match pattern"),
    ({"mode": "dump", "engine": "files"}, "data.items[0] must contain ['path'] properties"),
    ({"mode": "dump", "engine": "postgresql", "conn": {}}, "data.items[0].conn must contain ['database']"),
    (
        {"mode": "dump", "engine": "files", "path": "/x", "pth": "/y"},
        "data.items[0] must not contain {'pth'}",
    ),
    (
        {"mode": "dump", "engine": "postgresql", "conn": {"database": "x", "passwd": SECRET}},
        "data.items[0].conn must not contain {'passwd'}",
    ),
    (
        {"mode": "verify", "engine": "postgresql", "conn": {"database": "x"}},
        "must contain ['scratch_database'] properties",
    ),
    ({"mode": "stage", "engine": "files", "live": "/x"}, "must contain ['nonce', 'token'] properties"),
    ({"mode": "swap", "engine": "files", "live": "/x", "token": "a;b", "nonce": "1"}, "token must match"),
    (
        {
            "mode": "dump",
            "engine": "postgresql",
            "conn": {"database": "x", "password": SECRET, "port": "54x2"},
        },
        "data.items[0].conn.port must match pattern",
    ),
    ({"mode": "dump", "engine": "files", "path": "/x", "zstd_level": 40}, "zstd_level must be smaller than"),
    (
        {"mode": "dump", "engine": "files", "path": "/x", "recipients": ["ssh-ed25519 AAAA"]},
        "must match pattern",
    ),
]


def test_the_schema_is_a_valid_draft_7_schema():
    jsonschema.Draft7Validator.check_schema(SCHEMA)


def test_the_committed_validator_is_the_one_the_schema_gives():
    """Both sides run generated code; a schema changed without `make agent` fails here."""
    check = subprocess.run(
        [sys.executable, str(PROJECT / "scripts" / "build_agent.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("request_", VALID)
def test_a_valid_request_passes_both_validators(request_):
    wired = agentkit.wire(request_)
    jsonschema.validate(wired, SCHEMA)
    assert protocol.parse_request(agentkit.request_line(request_)) == wired


@pytest.mark.parametrize(("request_", "says"), INVALID)
def test_an_invalid_request_is_refused_with_the_field_named_and_no_value(request_, says):
    wired = agentkit.wire(request_)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wired, SCHEMA)  # the reference implementation agrees
    with pytest.raises(protocol.BadRequest) as refused:
        protocol.parse_request(agentkit.request_line(request_))
    assert says in str(refused.value)
    assert SECRET not in str(refused.value) and "54x2" not in str(refused.value)


def module_utils(name):
    """A module of the collection's module_utils, through Ansible's own collection loader (the
    ansible_plugins fixture): a plain import would shadow it for every later test here."""
    return importlib.import_module(f"ansible_collections.pulih.core.plugins.module_utils.{name}")


def test_the_modules_validator_is_the_agents(ansible_plugins):
    """agent_io (what the modules import) refuses what the agent refuses, before it starts it."""
    agent_request_schema = module_utils("agent_request_schema")
    for request_ in VALID:
        assert agent_request_schema.request_problem(agentkit.wire(request_)) is None
    for request_, says in INVALID:
        assert says in agent_request_schema.request_problem(agentkit.wire(request_))


def test_the_module_refuses_a_request_the_agent_would_refuse_before_it_starts_it(ansible_plugins):
    """agent_io.agent_request: the task's one item, with its secrets merged in, as the wire
    request; a field the schema refuses fails the task naming it, never the password."""
    agent_io = module_utils("agent_io")
    params = {
        "server": "simpeg-db01",
        "tool_path": ["/opt/pg16/bin"],
        "request": {"mode": "dump", "engine": "postgresql", "conn": {"database": "simpeg"}},
        "secret": {"password": SECRET},
    }
    assert agent_io.agent_request(params) == {
        "schema_version": agentkit.SCHEMA_VERSION,
        "pulih_version": agentkit.PULIH_VERSION,
        "mode": "dump",
        "tool_path": ["/opt/pg16/bin"],
        "items": [{"engine": "postgresql", "conn": {"database": "simpeg", "password": SECRET}}],
    }
    params["request"]["zstd_level"] = 0
    with pytest.raises(agent_io.Failed) as refused:
        agent_io.agent_request(params)
    assert "data.items[0].zstd_level must be bigger than or equal to 1" in str(refused.value)
    assert "simpeg-db01" in str(refused.value) and SECRET not in str(refused.value)


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (b"", "no request on standard input"),
        (b"\n", "no request on standard input"),
        (b"{not json\n", "the request is not JSON"),
        (b"\xff\xfe\n", "the request is not JSON"),
        (
            b'{"schema_version": 99, "mode": "dump", "items": []}\n',
            f"of schema version 99 and this agent (pulih {agentkit.PULIH_VERSION}) speaks "
            f"{agentkit.SCHEMA_VERSION}: upgrade the agent",
        ),
        (b"[1, 2]\n", "data must be object"),
    ],
)
def test_a_malformed_line_is_a_bad_request(line, says):
    with pytest.raises(protocol.BadRequest) as refused:
        protocol.parse_request(line)
    assert says in str(refused.value)


def test_a_bad_request_exits_5_and_writes_nothing(tmp_path):
    run = agentkit.run({"mode": "dump", "engine": "files", "path": str(tmp_path), "zstd_level": 99})
    assert run.code == 5
    assert run.stdout == b""
    assert "zstd_level must be smaller than or equal to 19" in run.message


def test_streaming_modes_take_one_item(tmp_path):
    item = {"engine": "files", "path": str(tmp_path)}
    run = agentkit.run({"mode": "dump", "items": [item, item]})
    assert run.code == 5
    assert "data.items must contain less than or equal to 1 items" in run.message


def test_each_item_of_a_request_is_reported_alone(tmp_path):
    """Three probes, the middle one on a database that is not there: the others still run and
    report, each event names its item, and the exit code says one failed."""
    (tmp_path / "present").mkdir()
    ids = {"token": "t1", "nonce": "n1"}
    items = [
        {"name": "dokumen", "engine": "files", "live": str(tmp_path / "present"), **ids},
        {
            "name": "simpeg",
            "engine": "postgresql",
            "live": "simpeg",
            "conn": {"host": "127.0.0.1", "port": 9, "database": "simpeg"},
            **ids,
        },
        {"name": "arsip", "engine": "files", "live": str(tmp_path / "absent"), **ids},
    ]
    run = agentkit.run({"mode": "probe", "items": items})
    assert run.code == 3
    results = {event["item"]: event for event in run.of("result")}
    assert results["dokumen"]["exists"] is True and results["dokumen"]["index"] == 0
    assert results["arsip"]["exists"] is False and results["arsip"]["index"] == 2
    [failed] = run.of("item_failed")
    assert failed["item"] == "simpeg" and failed["index"] == 1
    assert "cannot connect to PostgreSQL database 'postgres': connection to server at" in failed["message"]
    assert run.message.startswith("item 1 (simpeg): cannot connect")


def test_the_zipapp_holds_python_source_only_and_runs_without_site_packages(tmp_path):
    """Nothing compiled inside (no jsonschema, no rpds-py), and a file-tree request runs on a
    Python with no site-packages at all: the standard library is all it needs."""
    with zipfile.ZipFile(agentkit.ensure_built()) as archive:
        names = archive.namelist()
    assert names and all(name.endswith(".py") for name in names), names
    assert "pulih_agent/request_schema.py" in names and "__main__.py" in names
    (tmp_path / "tree").mkdir()
    run = agentkit.run(
        {"mode": "probe", "engine": "files", "live": str(tmp_path / "tree"), "token": "a", "nonce": "1"},
        python=("/usr/bin/python3", "-I", "-S"),
    )
    assert run.code == 0, run.stderr
    assert run.result["exists"] is True

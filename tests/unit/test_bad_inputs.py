"""The corpus of bad input (corpus/bad_inputs.yml): every case exits 2 (or the code it names)
with one line naming the file, entry, field or option, one JSON document on stdout under
--json, no traceback, and no control character reaching the terminal. Run in-process (the
same entry point as the installed command) so that 100+ cases take seconds.

Beside it, a property test: whatever a register file holds, the validator either accepts it
or gives problems that name the file, never an exception."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pulih import cli
from pulih import register as reg
from tests.conftest import EXAMPLE_REGISTER, PROJECT
from tests.integration.client import Service

CORPUS = yaml.safe_load((Path(__file__).parent / "corpus" / "bad_inputs.yml").read_text(encoding="utf-8"))
# One account that may take every step, so that each case meets the check it is about.
ANYONE = {
    "any": (
        ["requester", "receiver", "approver", "operator", "auditor"],
        ["bkpsdm", "dinkes", "bapenda", "diskominfo"],
        ["request", "approve", "restore", "backup", "read"],
    )
}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pulih serve --init runs as root")


@pytest.fixture(scope="module")
def service():
    """The gated commands' service: the example register, and a vault password file that is
    missing (the vault cases); its state folder is also the template of the {state} cases."""
    served = Service(PROJECT / "inventories" / "example", people=ANYONE)
    served.init()
    served.stop()
    served.start(ANSIBLE_VAULT_PASSWORD_FILE="/nonexistent/vault-pass")
    try:
        yield served
    finally:
        served.remove()


def materialize(case: dict[str, Any], tmp_path: Path, service: Service) -> tuple[list[str], dict[str, str]]:
    """The case's files in tmp_path, and its command line and environment."""
    example = EXAMPLE_REGISTER.read_text(encoding="utf-8")
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    register = inventory / "dc.asset_register.yml"
    text = case.get("register")
    if "change" in case:
        old, new = case["change"]
        assert old in example, f"{case['id']}: the change must change the example"
        text = example.replace(old, new, 1)
    if text == "@deep":
        nested = "[" * 5000 + "]" * 5000
        register.write_text(f"plugin: pulih.core.asset_register\nversion: 1\nassets: {nested}\n")
    elif text == "@big":
        register.write_text(example + "#" + "x" * (10 << 20) + "\n")
    elif text == "@latin1":
        register.write_bytes(example.replace("Kepegawaian", "Kepegawaian \xe9").encode("latin-1"))
    elif text is not None:
        register.write_text(text, encoding="utf-8")
    (tmp_path / "empty").mkdir()
    env: dict[str, str] = {
        "PULIH_SERVER": service.server,
        "PULIH_TOKEN": service.tokens["any"],
        **(case.get("env") or {}),
    }
    state = tmp_path / "state"
    if "serve_config" in case:  # a copy of the service's state folder, its config changed
        shutil.copytree(service.state, state, symlinks=True, ignore=shutil.ignore_patterns("pulih.sock"))
        config = state / "config.yml"
        text = case["serve_config"] if case.get("replace") else config.read_text() + case["serve_config"]
        config.write_text(text, encoding="utf-8")
    if "csv" in case:
        (tmp_path / "servers.csv").write_text(case["csv"], encoding="utf-8")
    places = {
        "{register}": str(register),
        "{example}": str(PROJECT / "inventories" / "example"),
        "{csv}": str(tmp_path / "servers.csv"),
        "{out}": str(tmp_path / "out" / "dc.asset_register.yml"),
        "{empty_dir}": str(tmp_path / "empty"),
        "{state}": str(state),
        "{long_skpd}": "s" * 129,
        "{long_text}": "x" * 2001,
    }
    args = case.get("args") or ["register", "check", "-i", "{register}"]
    return [places.get(a, a).replace("\\e", "\x1b") for a in args], env


def run(args: list[str], env: dict[str, str], monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["pulih", *args])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PULIH_TODAY", env.get("PULIH_TODAY", "2026-11-21"))
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    out, err = capsys.readouterr()
    return int(stopped.value.code or 0), out, err


def test_the_corpus_holds_a_hundred_cases_with_distinct_ids():
    assert len(CORPUS) >= 100
    assert len({c["id"] for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=[c["id"] for c in CORPUS])
def test_bad_input_is_refused_in_one_line(case, tmp_path, monkeypatch, capsys, service):
    args, env = materialize(case, tmp_path, service)
    code, out, err = run(args, env, monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    want = case.get("exit", 2)
    assert code == want, err
    assert "Traceback" not in err + out
    assert "\x1b" not in err and "\x1b" not in out, "a control character reached the terminal"
    assert any(case["says"] in line for line in lines), err
    # One line: the problem (register check also counts them in a summary line of its own).
    problem_lines = [line for line in lines if case["says"] in line]
    assert len(problem_lines) == 1 and "\n" not in problem_lines[0]

    code, out, err = run([*args, "--json"], env, monkeypatch, capsys)
    assert code == want
    doc = json.loads(out)  # exactly one JSON document
    assert isinstance(doc, dict) and doc.get("status") in ("error", "invalid")
    texts = [doc.get("message", "")]
    for error in doc.get("errors") or []:  # a run report's lines, or a register's problems as records
        fields = ("file", "message", "line", "entry", "field")
        texts.append(error if isinstance(error, str) else str(reg.Problem(**{k: error[k] for k in fields})))
    assert any(case["says"] in text for text in texts), texts


# --------------------------------------------------------------------------- the validator


TODAY = dt.date(2026, 11, 21)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.dates().map(str),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
field_names = st.sampled_from([*sorted(reg._ASSET_FIELDS), "data", "adress", "password", "x"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    entries=st.lists(st.dictionaries(field_names, values, max_size=14), max_size=4),
    version=scalars,
)
def test_any_register_document_is_accepted_or_refused_by_name(tmp_path, entries, version):
    path = tmp_path / "fuzz.asset_register.yml"
    doc = {"plugin": "pulih.core.asset_register", "version": version, "office": "X", "assets": entries}
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    try:
        reg.load_file(path, TODAY)
    except reg.RegisterError as exc:
        assert exc.problems
        for problem in exc.problems:
            text = str(problem)
            assert text.startswith(str(path)) and "\n" not in text

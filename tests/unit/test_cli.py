"""The pulih command as a person or a script runs it: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import EXAMPLE_REGISTER, EXAMPLE_TODAY, PROJECT

PULIH = [sys.executable, "-m", "pulih"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PULIH, *args], capture_output=True, text=True, cwd=PROJECT, env=env, timeout=60)


def test_register_check_reports_the_overdue_entry_and_exits_1():
    result = run("register", "check", "-i", "inventories/example/", "--today", EXAMPLE_TODAY)
    assert result.returncode == 1
    assert "DC-SRV-2022-004" in result.stderr
    assert "474 days ago" in result.stderr
    assert "Traceback" not in result.stderr


def test_register_check_json():
    result = run("register", "check", "-i", "inventories/example/", "--today", EXAMPLE_TODAY, "--json")
    doc = json.loads(result.stdout)
    assert doc["status"] == "findings"
    assert [f["asset_id"] for f in doc["findings"]] == ["DC-SRV-2022-004"]
    assert doc["not_in_inventory"] == [
        {"asset_id": "DC-SRV-2019-007", "hostname": "simpus-old", "status": "decommissioned"}
    ]
    assert len(doc["hosts"]) == 7


def test_register_check_clean_exits_0():
    # Before the overdue entry's year ran out.
    assert run("register", "check", "-i", str(EXAMPLE_REGISTER), "--today", "2026-06-01").returncode == 0


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("    os: Debian 11\n", "", "os"),
        ("asset_id: DC-SRV-2024-006", "asset_id: DC-SRV-2024-005", "asset_id"),
        ("registered_on: 2022-03-21", "registered_on: 2022-13-01", "registered_on"),
        ("engine: mysql\n", "engine: db2\n", "data[1].engine"),
        ("    hostname: pajak-stg01", "    hostname: [pajak-stg01", "hostname"),
    ],
)
def test_invalid_register_is_one_line_exit_2_no_traceback(tmp_path, old, new, field):
    path = tmp_path / "dc.asset_register.yml"
    path.write_text(EXAMPLE_REGISTER.read_text().replace(old, new, 1))
    result = run("register", "check", "-i", str(tmp_path), "--today", EXAMPLE_TODAY)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert str(path) in errors[0]
    assert "entry '" in errors[0]
    assert f"field '{field}'" in errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("register", "check", "-i", "/nonexistent/inventory"),
        ("register", "check"),
        ("register", "check", "-i", "inventories/example", "--today", "kemarin"),
        ("register", "show", "-i", "/nonexistent/inventory"),
        ("register", "frobnicate"),
    ],
)
def test_bad_arguments_exit_2(args):
    env = {k: v for k, v in os.environ.items() if k != "PULIH_INVENTORY"}
    result = run(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr


def test_register_show_lists_every_server_and_what_ansible_sees():
    result = run("register", "show", "-i", "inventories/example", "--today", EXAMPLE_TODAY, "--json")
    doc = json.loads(result.stdout)
    by_host = {a["hostname"]: a for a in doc["assets"]}
    assert len(by_host) == 8
    assert by_host["simpus-old"]["in_inventory"] is False
    assert by_host["siak-arsip01"]["review_overdue"] is True
    assert "skpd_disdukcapil" in by_host["siak-arsip01"]["groups"]
    table = run("register", "show", "-i", "inventories/example", "--today", EXAMPLE_TODAY)
    assert table.returncode == 0
    assert "not in inventory" in table.stdout


CSV = """\
Kode Aset;Nama Server;IP;Port SSH;User SSH;OPD;Environment;Status;Sistem Operasi;Didaftarkan Oleh;\
Tanggal Daftar;Terakhir Ditinjau;item_name;item_engine;item_database;item_port;item_user;\
item_password_var;item_path
DC-01;simpeg-db01;10.20.1.11;22;pulih;bkpsdm;production;In Operation;Debian 12;andi;14/02/2023;02/03/2026;\
simpeg;postgresql;simpeg;5432;pulih_backup;vault_simpeg;
DC-01;;;;;;;;;;;;simpeg-dokumen;files;;;;;/srv/simpeg/dokumen
DC-02;simpus-db01;10.20.2.21;22;pulih;dinkes;production;in_operation;Debian 12;andi;05/06/2023;2026-05-18;\
simpus;mariadb;simpus;3306;pulih_backup;;
DC-03;arsip-old;10.20.2.21;22;root;dinkes;production;decommissioned;CentOS 7;andi;2019-04-02;2023-06-05;;;;;;;
"""


def test_register_import_writes_a_register_the_plugin_reads(tmp_path):
    source = tmp_path / "aset.csv"
    source.write_text(CSV, encoding="utf-8")
    target = tmp_path / "inv" / "dc.asset_register.yml"
    result = run(
        "register",
        "import",
        str(source),
        "-o",
        str(target),
        "--office",
        "Diskominfo",
        "--today",
        EXAMPLE_TODAY,
    )
    assert result.returncode == 0, result.stderr
    doc = yaml.safe_load(target.read_text())
    assert doc["plugin"] == "pulih.core.asset_register"
    first = doc["assets"][0]
    assert first["registered_on"] == "2023-02-14"
    assert first["status"] == "in_operation"
    assert [i["name"] for i in first["data"]] == ["simpeg", "simpeg-dokumen"]
    assert first["data"][0]["port"] == 5432
    check = run("register", "check", "-i", str(target.parent), "--today", EXAMPLE_TODAY, "--json")
    assert json.loads(check.stdout)["hosts"] == ["simpeg-db01", "simpus-db01"]
    graph = subprocess.run(
        ["ansible-inventory", "-i", str(target.parent), "--graph"],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        env={**os.environ, "PULIH_TODAY": EXAMPLE_TODAY},
    )
    assert "@skpd_bkpsdm" in graph.stdout
    assert "arsip-old" not in graph.stdout


def test_register_import_refuses_a_bad_sheet_and_writes_nothing(tmp_path):
    source = tmp_path / "aset.csv"
    source.write_text(
        CSV.replace("14/02/2023", "31/02/2023").replace("DC-01;;;;;;;;", "DC-01;;10.9.9.9;;;;;;")
    )
    target = tmp_path / "dc.asset_register.yml"
    result = run("register", "import", str(source), "-o", str(target), "--today", EXAMPLE_TODAY)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert any(f"{source}:2: entry 'DC-01': field 'registered_on'" in e for e in errors), errors
    assert any(
        f"{source}:3: entry 'DC-01': field 'address'" in e and "differs from row 2" in e for e in errors
    )
    assert not target.exists()
    assert list(tmp_path.iterdir()) == [source], "no temporary file left behind"


def test_register_import_does_not_overwrite_without_force(tmp_path):
    source = tmp_path / "aset.csv"
    source.write_text(CSV)
    target = tmp_path / "dc.asset_register.yml"
    target.write_text("keep me")
    assert run("register", "import", str(source), "-o", str(target), "--today", EXAMPLE_TODAY).returncode == 2
    assert target.read_text() == "keep me"
    assert (
        run(
            "register", "import", str(source), "-o", str(target), "--today", EXAMPLE_TODAY, "--force"
        ).returncode
        == 0
    )


def test_ansible_inventory_graph_of_the_example():
    result = subprocess.run(
        ["ansible-inventory", "-i", "inventories/example/", "--graph"],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for group in (
        "@skpd_bkpsdm",
        "@skpd_dinkes",
        "@skpd_disdukcapil",
        "@skpd_bapenda",
        "@engine_postgresql",
        "@engine_mariadb",
        "@engine_files",
        "@env_production",
        "@env_staging",
    ):
        assert group in result.stdout
    assert "simpus-old" not in result.stdout
    assert "WARNING" not in result.stderr, result.stderr

"""pulih.core.asset_register, in the style of community.general's inventory plugin tests:
the plugin is loaded through Ansible's own plugin loader and parsed into InventoryData."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from ansible.errors import AnsibleParserError
from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader

from tests.conftest import EXAMPLE_REGISTER, EXAMPLE_TODAY, PROJECT


@pytest.fixture
def inventory(ansible_plugins, monkeypatch):
    monkeypatch.setenv("PULIH_TODAY", EXAMPLE_TODAY)
    plugin = ansible_plugins.inventory_loader.get("pulih.core.asset_register")  # a fresh instance each time
    plugin.inventory = InventoryData()
    return plugin


def parse(plugin, path):
    plugin.parse(plugin.inventory, DataLoader(), str(path), cache=False)
    return plugin.inventory


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("dc.asset_register.yml", True),
        ("dc.asset_register.yaml", True),
        ("hosts.yml", False),
        ("asset_register.txt", False),
    ],
)
def test_verify_file(inventory, tmp_path, name, ok):
    path = tmp_path / name
    path.write_text("plugin: pulih.core.asset_register\n")
    assert inventory.verify_file(str(path)) is ok


def test_only_servers_in_operation_become_hosts(inventory):
    data = parse(inventory, EXAMPLE_REGISTER)
    assert set(data.hosts) == {
        "simpeg-db01",
        "simpus-db01",
        "sikda-app01",
        "siak-arsip01",
        "pajak-db01",
        "pajak-stg01",
        "backup-repo01",
    }
    assert "simpus-old" not in data.hosts


def test_groups_by_skpd_engine_environment(inventory):
    data = parse(inventory, EXAMPLE_REGISTER)
    members = {name: sorted(h.name for h in group.get_hosts()) for name, group in data.groups.items()}
    assert members["skpd_dinkes"] == ["sikda-app01", "simpus-db01"]
    assert members["engine_postgresql"] == ["pajak-db01", "pajak-stg01", "siak-arsip01", "simpeg-db01"]
    assert members["engine_mysql"] == ["pajak-db01"]
    assert members["env_staging"] == ["pajak-stg01"]
    assert members["pulih_repository"] == ["backup-repo01"]


def test_host_vars(inventory):
    host = parse(inventory, EXAMPLE_REGISTER).get_host("siak-arsip01")
    hv = host.get_vars()
    assert (hv["ansible_host"], hv["ansible_port"], hv["ansible_user"]) == ("10.20.3.31", 22, "pulih")
    assert hv["pulih_asset"]["review_overdue"] is True
    assert hv["pulih_asset"]["asset_id"] == "DC-SRV-2022-004"
    assert [i["engine"] for i in hv["pulih_data_items"]] == ["postgresql", "files"]
    repo = parse(inventory, EXAMPLE_REGISTER).get_host("backup-repo01").get_vars()
    assert repo["pulih_repository_path"] == "/srv/pulih-repo"


def test_review_clock_comes_from_the_environment(inventory, monkeypatch):
    monkeypatch.setenv("PULIH_TODAY", "2026-07-01")
    hv = parse(inventory, EXAMPLE_REGISTER).get_host("siak-arsip01").get_vars()
    assert hv["pulih_asset"]["review_overdue"] is False


def test_invalid_register_is_a_parser_error_naming_entry_and_field(inventory, tmp_path):
    path = tmp_path / "dc.asset_register.yml"
    path.write_text(EXAMPLE_REGISTER.read_text().replace("engine: mysql\n", "engine: oracle\n", 1))
    with pytest.raises(AnsibleParserError, match=r"entry 'DC-SRV-2024-005': field 'data\[1\].engine'"):
        parse(inventory, path)
    assert not inventory.inventory.hosts, "a broken register yields no hosts at all"


def test_bad_clock_is_a_parser_error(inventory, monkeypatch):
    monkeypatch.setenv("PULIH_TODAY", "yesterday")
    with pytest.raises(AnsibleParserError, match="not a date"):
        parse(inventory, EXAMPLE_REGISTER)


def test_servers_get_the_agents_python_at_the_lowest_precedence(inventory):
    data = parse(inventory, EXAMPLE_REGISTER)
    # A variable of group all from the inventory source: group_vars/ and host_vars/ files beside
    # the register override it, and it holds without the project's ansible.cfg.
    assert data.groups["all"].get_vars()["ansible_python_interpreter"] == "/usr/bin/python3"
    assert "ansible_python_interpreter" not in data.get_host("simpeg-db01").get_vars()


def test_group_vars_beside_the_register_override_the_python(tmp_path):
    folder = tmp_path / "inv"
    (folder / "group_vars").mkdir(parents=True)
    (folder / "dc.asset_register.yml").write_text(EXAMPLE_REGISTER.read_text())
    (folder / "group_vars" / "skpd_dinkes.yml").write_text(
        "ansible_python_interpreter: /opt/py/bin/python3\n"
    )
    done = subprocess.run(
        ["ansible-inventory", "-i", str(folder), "--list"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=PROJECT,
        env={**os.environ, "PULIH_TODAY": EXAMPLE_TODAY},
    )
    hostvars = json.loads(done.stdout)["_meta"]["hostvars"]

    def python(host):  # a value an inventory plugin sets is listed as unsafe (never templated)
        value = hostvars[host]["ansible_python_interpreter"]
        return value["__ansible_unsafe"] if isinstance(value, dict) else value

    assert python("simpus-db01") == "/opt/py/bin/python3"
    assert python("simpeg-db01") == "/usr/bin/python3"


def test_the_plugin_and_the_modules_need_no_pulih_package():
    # The collection is installed where the pulih package is not (tests/integration/
    # test_collection_install.py runs it so): the validator is the collection's own.
    plugins = PROJECT / "collections" / "ansible_collections" / "pulih" / "core" / "plugins"
    importing = re.compile(r"^\s*(from|import)\s+pulih(\s|\.|$)", re.MULTILINE)
    offenders = [
        str(p.relative_to(plugins)) for p in plugins.rglob("*.py") if importing.search(p.read_text())
    ]
    assert offenders == []
    source = (plugins / "inventory" / "asset_register.py").read_text()
    assert "from ansible_collections.pulih.core.plugins.module_utils import register" in source

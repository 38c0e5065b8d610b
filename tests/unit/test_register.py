"""The register validator: every fault gives exactly one error naming file, line, entry and field."""

from __future__ import annotations

import datetime as dt

import pytest

from pulih import register as reg
from tests.conftest import EXAMPLE_REGISTER

TODAY = dt.date(2026, 11, 21)


def test_example_register_loads_with_only_servers_in_operation_as_hosts():
    register = reg.load_inventory(EXAMPLE_REGISTER.parent, TODAY)
    assert len(register.assets) == 8
    hosts = {a.hostname for a in register.hosts()}
    assert "simpus-old" not in hosts
    assert len(hosts) == 7
    assert register.by_id("DC-SRV-2019-007").status == "decommissioned"


def test_groups_come_from_skpd_engine_environment_and_repository():
    register = reg.load_file(EXAMPLE_REGISTER, TODAY)
    assert register.by_id("DC-SRV-2024-005").groups() == [
        "engine_mysql",
        "engine_postgresql",
        "env_production",
        "skpd_bapenda",
    ]
    assert "pulih_repository" in register.by_id("DC-SRV-2023-008").groups()


def test_overdue_review_is_the_only_finding_of_the_example():
    findings = reg.check(reg.load_file(EXAMPLE_REGISTER, TODAY), TODAY)
    assert [(f.kind, f.asset_id) for f in findings] == [("review_overdue", "DC-SRV-2022-004")]
    assert "474 days ago" in findings[0].message


@pytest.mark.parametrize(
    ("today", "overdue"),
    [
        (dt.date(2026, 8, 4), False),  # exactly 365 days: still within the year
        (dt.date(2026, 8, 5), True),
    ],
)
def test_review_boundary_is_365_days(today, overdue):
    register = reg.load_file(EXAMPLE_REGISTER, today)
    assert bool(reg.check(register, today)) is overdue


def test_decommissioned_entries_are_not_review_findings(example_text, register_dir):
    # simpus-old was last reviewed in 2023 but is decommissioned: history, not a finding.
    register = reg.load_file(register_dir(example_text), TODAY)
    assert "DC-SRV-2019-007" not in {f.asset_id for f in reg.check(register, TODAY)}


def test_address_reuse_by_a_decommissioned_server_is_not_a_duplicate(example_text, register_dir):
    reg.load_file(register_dir(example_text), TODAY)  # simpus-old shares 10.20.2.21


FAULTS = [
    # (description, old, new, entry, field, words in the message)
    ("missing field", "    os: Debian 11\n", "", "'DC-SRV-2022-004'", "os", "is missing"),
    (
        "duplicate asset id",
        "asset_id: DC-SRV-2024-006",
        "asset_id: DC-SRV-2024-005",
        "'DC-SRV-2024-005'",
        "asset_id",
        "already used by entry 'DC-SRV-2024-005'",
    ),
    (
        "bad date",
        "last_reviewed: 2026-05-18\n    reviewed_by: sri.wahyuni\n    data:\n      - name: simpus",
        "last_reviewed: 2026-02-30\n    reviewed_by: sri.wahyuni\n    data:\n      - name: simpus",
        "'DC-SRV-2023-002'",
        "last_reviewed",
        "not a real calendar date",
    ),
    (
        "date not in ISO form",
        "registered_on: 2022-03-21",
        "registered_on: 21 Maret 2022",
        "'DC-SRV-2022-004'",
        "registered_on",
        "YYYY-MM-DD",
    ),
    (
        "date in the future",
        "last_reviewed: 2026-03-02\n    reviewed_by: sri.wahyuni\n    notes: backup",
        "last_reviewed: 2027-03-02\n    reviewed_by: sri.wahyuni\n    notes: backup",
        "'DC-SRV-2023-008'",
        "last_reviewed",
        "in the future",
    ),
    (
        "unknown engine",
        "engine: mysql\n        description: land",
        "engine: mongodb\n        description: land",
        "'DC-SRV-2024-005'",
        "data[1].engine",
        "unknown engine 'mongodb'",
    ),
    (
        "broken YAML",
        "    hostname: pajak-stg01",
        "    hostname: [pajak-stg01",
        "'DC-SRV-2024-006'",
        "hostname",
        "not valid YAML",
    ),
    (
        "key written twice",
        "    os: Debian 11\n",
        "    os: Debian 11\n    os: Debian 12\n",
        "'DC-SRV-2022-004'",
        "os",
        "appears twice",
    ),
    (
        "duplicate address",
        "address: 10.20.4.42",
        "address: 10.20.4.41",
        "'DC-SRV-2024-006'",
        "address",
        "already used by entry 'DC-SRV-2024-005'",
    ),
    (
        "duplicate hostname",
        "hostname: pajak-stg01",
        "hostname: pajak-db01",
        "'DC-SRV-2024-006'",
        "hostname",
        "already used",
    ),
    (
        "a password in the register",
        "password_var: vault_pbb_pg_password\n\n  - asset_id: DC-SRV-2019-007",
        "password: hunter2\n\n  - asset_id: DC-SRV-2019-007",
        "'DC-SRV-2024-006'",
        "data[0].password",
        "must not hold secrets",
    ),
    (
        "misspelt field",
        "    address: 10.20.1.11",
        "    adress: 10.20.1.11",
        "'DC-SRV-2023-001'",
        "adress",
        "did you mean 'address'",
    ),
    (
        "unknown status",
        "status: decommissioned",
        "status: retired",
        "'DC-SRV-2019-007'",
        "status",
        "unknown status 'retired'",
    ),
    ("bad port", "ssh_port: 22", "ssh_port: 70000", "'DC-SRV-2023-001'", "ssh_port", "not a port number"),
    (
        "relative file path",
        "path: /srv/arsip/scan",
        "path: srv/arsip/scan",
        "'DC-SRV-2022-004'",
        "data[1].path",
        "absolute path",
    ),
    (
        "an address that is neither IP nor host name (a fifth octet)",
        "address: 10.20.1.11",
        "address: 10.20.1.11.5",
        "'DC-SRV-2023-001'",
        "address",
        "neither an IP address nor a host name",
    ),
    (
        "an address with an octet over 255",
        "address: 10.20.1.11",
        "address: 10.20.1.999",
        "'DC-SRV-2023-001'",
        "address",
        "neither an IP address nor a host name",
    ),
    (
        "an ssh user that ssh would read as an option",
        "    ssh_user: pulih\n",
        '    ssh_user: "-oProxyCommand=touch /tmp/pwned"\n',
        "'DC-SRV-2023-001'",
        "ssh_user",
        "does not start with '-'",
    ),
    (
        "a database host that is an option",
        "        host: 127.0.0.1\n",
        '        host: "-oProxyCommand=x"\n',
        "'DC-SRV-2023-001'",
        "data[0].host",
        "neither an IP address nor a host name",
    ),
    (
        "a database user with a line break",
        "        user: pulih_backup\n",
        '        user: "pulih\\nplugin-dir=/tmp"\n',
        "'DC-SRV-2023-001'",
        "data[0].user",
        "does not start with '-'",
    ),
    (
        "review before registration",
        "registered_on: 2022-03-21",
        "registered_on: 2025-09-01",
        "'DC-SRV-2022-004'",
        "last_reviewed",
        "before the entry was registered",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "entry", "field", "words"), [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS]
)
def test_each_fault_gives_one_error_naming_file_entry_and_field(
    example_text, register_dir, old, new, entry, field, words
):
    assert old in example_text, "the fault must change the example"
    path = register_dir(example_text.replace(old, new, 1))
    with pytest.raises(reg.RegisterError) as caught:
        reg.load_inventory(path.parent, TODAY)
    problems = caught.value.problems
    assert len(problems) == 1, [str(p) for p in problems]
    text = str(problems[0])
    assert "\n" not in text
    assert text.startswith(f"{path}:")
    assert problems[0].line is not None
    assert f"entry {entry}" in text
    assert f"field '{field}'" in text
    assert words in text


def test_every_problem_of_a_file_is_reported_at_once(example_text, register_dir):
    text = example_text.replace("    os: Debian 11\n", "").replace(
        "status: decommissioned", "status: retired"
    )
    with pytest.raises(reg.RegisterError) as caught:
        reg.load_file(register_dir(text), TODAY)
    assert len(caught.value.problems) == 2


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "must be a mapping"),
        ("plugin: pulih.core.asset_register\n", "'assets': is missing"),
        ("plugin: something.else\nassets: []\n", "field 'plugin'"),
        ("plugin: pulih.core.asset_register\nversion: 2\nassets: []\n", "format version 2"),
        ("plugin: pulih.core.asset_register\nassets:\n  - just a string\n", "entry #1: must be a mapping"),
    ],
)
def test_malformed_documents(register_dir, text, words):
    with pytest.raises(reg.RegisterError) as caught:
        reg.load_file(register_dir(text), TODAY)
    assert words in str(caught.value)


def test_duplicates_across_two_files_of_one_inventory(example_text, register_dir):
    register_dir(example_text, "a.asset_register.yml")
    path = register_dir(example_text.replace("plugin:", "# second copy\nplugin:"), "b.asset_register.yml")
    with pytest.raises(reg.RegisterError) as caught:
        reg.load_inventory(path.parent, TODAY)
    assert all("already used" in p.message for p in caught.value.problems)
    assert {p.file for p in caught.value.problems} == {str(path)}


def test_an_inventory_without_register_is_bad_input(tmp_path):
    with pytest.raises(reg.RegisterError, match="holds no"):
        reg.load_inventory(tmp_path, TODAY)


def test_host_vars_carry_the_entry_and_its_data_items():
    asset = reg.load_file(EXAMPLE_REGISTER, TODAY).by_id("DC-SRV-2023-001")
    hv = reg.host_vars(asset, TODAY)
    assert hv["ansible_host"] == "10.20.1.11"
    assert hv["pulih_asset"]["review_overdue"] is False
    assert [i["name"] for i in hv["pulih_data_items"]] == ["simpeg", "simpeg-dokumen"]
    assert hv["pulih_data_items"][1]["exclude"] == ["*.tmp", "cache/*"]
    # The register names where a password is kept, never the password.
    assert all(set(item) <= set(reg._DB_FIELDS) | set(reg._FILES_FIELDS) for item in hv["pulih_data_items"])


def test_slug_makes_group_safe_names():
    assert reg.slug("Dinas Kesehatan") == "dinas_kesehatan"
    assert reg.slug("  BAPENDA / Pajak ") == "bapenda_pajak"

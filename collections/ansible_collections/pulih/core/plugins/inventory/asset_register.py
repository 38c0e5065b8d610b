# Copyright: pulih maintainers
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
name: asset_register
short_description: The data center's server asset register as inventory
description:
  - Reads a server asset register (one YAML file per register, named C(*.asset_register.yml))
    and makes every server whose status is C(in_operation) a host. Servers that are planned,
    in maintenance or decommissioned are never hosts, so no playbook can touch them.
  - Groups come from the register, C(skpd_<code>) per owning agency, C(engine_<engine>) per
    kind of data the server holds, C(env_<environment>), and C(pulih_repository) for backup
    repository hosts.
  - Each host gets C(ansible_host), C(ansible_port), C(ansible_user), C(pulih_asset) (the register
    entry), C(pulih_data_items) (its databases and file trees) and C(pulih_repository_path).
  - Group C(all) gets C(ansible_python_interpreter=/usr/bin/python3), the Python the pulih agent
    runs on by default, at the lowest precedence a variable has; set it in C(group_vars/) or
    C(host_vars/) beside the register for servers whose Python is elsewhere.
  - The file format is documented in the project's README; validation errors name the file,
    line, entry and field.
author: pulih maintainers
notes:
  - The validator is the collection's own (C(module_utils/register.py), PyYAML only, which
    ansible-core brings); the C(pulih) command uses the same one.
  - ansible-core only warns when an inventory source fails to parse, and runs on what is left;
    set C(any_unparsed_is_failed = true) under C([inventory]) in C(ansible.cfg) (or
    C(ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED=true)) to fail instead. pulih's playbooks also
    refuse, in their first play, an inventory without a server of a register.
options:
  plugin:
    description: Marks the file as an asset register for this plugin.
    required: true
    type: str
    choices: [pulih.core.asset_register]
  version:
    description: Register format version.
    type: int
    default: 1
  office:
    description: The office that keeps the register.
    type: str
  assets:
    description: The servers of the register, one entry per server.
    type: list
    elements: dict
  today:
    description:
      - The date review ages are counted from (C(YYYY-MM-DD)); the real date when unset.
        Tests set it to make the yearly-review rule deterministic.
    type: str
    env:
      - name: PULIH_TODAY
  review_max_age_days:
    description: An entry last reviewed longer ago than this is flagged (C(pulih_asset.review_overdue)).
    type: int
    default: 365
    env:
      - name: PULIH_REVIEW_MAX_AGE_DAYS
"""

EXAMPLES = r"""
# inventories/prod/datacenter.asset_register.yml
plugin: pulih.core.asset_register
office: Dinas Komunikasi dan Informatika
assets:
  - asset_id: DC-SRV-001
    hostname: simpeg-db01
    address: 10.20.1.11
    ssh_user: pulih
    skpd: bkpsdm
    environment: production
    status: in_operation
    os: Debian 12
    registered_by: andi.pratama
    registered_on: 2023-02-14
    last_reviewed: 2026-03-02
    data:
      - name: simpeg
        engine: postgresql
        database: simpeg
        port: 5432
        user: pulih_backup
        password_var: vault_simpeg_pg_password

# ansible-inventory -i inventories/prod/ --graph
# ansible-playbook -i inventories/prod/ playbooks/register_audit.yml --limit skpd_bkpsdm
"""

import datetime
import pathlib

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin

from ansible_collections.pulih.core.plugins.module_utils import register as pulih_register

PYTHON = "/usr/bin/python3"


class InventoryModule(BaseInventoryPlugin):
    NAME = "pulih.core.asset_register"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith((".asset_register.yml", ".asset_register.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self.set_options(direct={"plugin": self.NAME})
        today = self._today()
        max_age = int(self.get_option("review_max_age_days"))
        try:
            register = pulih_register.load_file(pathlib.Path(path), today)
        except pulih_register.RegisterError as exc:
            raise AnsibleParserError(str(exc)) from None

        if not register.hosts():
            self.display.warning(
                "%s: the register lists no server in operation, so this inventory has no host" % path
            )
        if register.hosts():
            # The Python that runs the modules on the servers, the agent's too (pulih_common_python):
            # a variable of group all from this source, the lowest precedence a variable has, so
            # it holds without ansible.cfg (interpreter discovery may find a pyenv shim or a
            # newer Python of its own) and any group_vars/ or host_vars/ file overrides it.
            self.inventory.set_variable("all", "ansible_python_interpreter", PYTHON)
        for asset in register.hosts():
            host = self.inventory.add_host(asset.hostname)
            for group in asset.groups():
                self.inventory.add_group(group)
                self.inventory.add_child(group, host)
            for key, value in pulih_register.host_vars(asset, today, max_age).items():
                if value is not None:
                    self.inventory.set_variable(host, key, value)

    def _today(self):
        text = self.get_option("today")
        if not text:
            return datetime.date.today()
        try:
            return datetime.date.fromisoformat(str(text))
        except ValueError:
            raise AnsibleParserError(f"PULIH_TODAY / today '{text}' is not a date (YYYY-MM-DD)") from None

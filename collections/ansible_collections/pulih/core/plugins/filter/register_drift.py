# Copyright: pulih maintainers
# Apache License 2.0
"""Filters that compare what the asset register declares with what a server holds."""

from __future__ import annotations

DOCUMENTATION = r"""
name: database_drift
short_description: Drift between declared database items and what their servers hold
description:
  - Takes the registered results of C(community.postgresql.postgresql_info) or
    C(community.mysql.mysql_info) run in a loop over data items, and returns a list of findings
    C({kind, item, message}); kinds are C(engine_unreachable), C(database_missing) and
    C(database_undeclared) (a database on a declared server that no data item of the register names).
positional: _input, system_databases
options:
  _input:
    description: The C(results) list of the looped info task; each result carries its C(item).
    type: list
    elements: dict
    required: true
  system_databases:
    description: Databases every server has, never reported as undeclared.
    type: list
    elements: str
    default: []
  report_undeclared:
    description: Report databases no item declares.
    type: bool
    default: true
"""

EXAMPLES = r"""
_drift: "{{ _pg_info.results | pulih.core.database_drift(['postgres', 'template0', 'template1']) }}"
"""

RETURN = r"""
_value:
  description: Findings, each C({kind, item, message}).
  type: list
  elements: dict
"""


def _endpoint(item):
    where = item.get("socket") or f"{item.get('host') or 'localhost'}:{item.get('port') or 'default port'}"
    return f"{item['engine']} at {where}"


def database_drift(results, system_databases=(), report_undeclared=True):
    drift = []
    declared = {}
    present = {}
    for result in results:
        item = result["item"]
        endpoint = _endpoint(item)
        declared.setdefault(endpoint, set()).add(item["database"])
        if result.get("failed") or "databases" not in result:
            message = result.get("msg") or "no answer"
            drift.append(
                {
                    "kind": "engine_unreachable",
                    "item": item["name"],
                    "message": f"cannot query {endpoint}: {message}",
                }
            )
            continue
        names = set(result["databases"])
        present[endpoint] = names
        if item["database"] not in names:
            drift.append(
                {
                    "kind": "database_missing",
                    "item": item["name"],
                    "message": f"database '{item['database']}' is not on {endpoint}",
                }
            )
    if report_undeclared:
        for endpoint, names in sorted(present.items()):
            for name in sorted(names - declared[endpoint] - set(system_databases)):
                drift.append(
                    {
                        "kind": "database_undeclared",
                        "item": None,
                        "message": f"database '{name}' on {endpoint} is not in the register",
                    }
                )
    return drift


def path_finding(item, kind):
    """A finding for a declared path that is missing or not a directory."""
    what = {"path_missing": "does not exist", "path_not_directory": "is not a directory"}[kind]
    return {"kind": kind, "item": item["name"], "message": f"{item['name']}: {item['path']} {what}"}


def audit_entry(host_vars):
    """One host's line of the register audit report."""
    asset = host_vars["pulih_asset"]
    return {
        "asset_id": asset["asset_id"],
        "skpd": asset["skpd"],
        "review_overdue": bool(asset.get("review_overdue")),
        "drift": list(host_vars.get("pulih_register_drift", [])),
    }


class FilterModule:
    def filters(self):
        return {"database_drift": database_drift, "path_finding": path_finding, "audit_entry": audit_entry}

# Copyright: pulih maintainers
# Apache License 2.0
"""Checks of a backup against its manifest."""

from __future__ import annotations

DOCUMENTATION = r"""
name: checksum_mismatches
short_description: Artifacts whose SHA-256 on disk differs from the manifest
description:
  - Takes the results of C(ansible.builtin.stat) with C(checksum_algorithm=sha256) looped over a
    manifest's C(artifacts) and returns the names of the artifacts that are missing or whose
    checksum differs.
positional: _input
options:
  _input:
    description: The C(results) of the looped stat task; each carries its artifact as C(item).
    type: list
    elements: dict
    required: true
"""

EXAMPLES = r"""
_bad: "{{ _sums.results | pulih.core.checksum_mismatches }}"
"""

RETURN = r"""
_value:
  description: Names, with C((missing)) for an artifact not on disk.
  type: list
  elements: str
"""


def checksum_mismatches(results):
    bad = []
    for result in results:
        artifact = result["item"]
        found = result.get("stat") or {}
        if not found.get("exists"):
            bad.append("%s (missing)" % artifact["name"])
        elif found.get("checksum") != artifact["sha256"]:
            bad.append(artifact["name"])
    return bad


class FilterModule:
    def filters(self):
        return {"checksum_mismatches": checksum_mismatches}

# Copyright: pulih maintainers
# Apache License 2.0
"""Checks of a backup against its manifest."""

from __future__ import annotations

from ansible_collections.pulih.core.plugins.module_utils.canonical import document_sha256

DOCUMENTATION = r"""
name: checksum_mismatches
short_description: Artifacts whose SHA-256 or size in the repository differs from the manifest
description:
  - Takes a manifest's C(artifacts) and the receiver's answer to C(checksums) (C(artifacts), a
    mapping of name to C(sha256) and C(size)) and returns the names of the artifacts that are
    missing or differ.
positional: _input
options:
  _input:
    description: The manifest's artifacts (C(name), C(sha256), C(size)).
    type: list
    elements: dict
    required: true
  found:
    description: The receiver's C(artifacts), as it read them now.
    type: dict
    required: true
"""

EXAMPLES = r"""
_bad: "{{ _manifest.artifacts | pulih.core.checksum_mismatches(_sums.answer.artifacts) }}"
"""

RETURN = r"""
_value:
  description: Names, with C((missing)) for an artifact not in the repository.
  type: list
  elements: str
"""


def checksum_mismatches(artifacts, found):
    bad = []
    for artifact in artifacts:
        there = found.get(artifact["name"])
        if there is None:
            bad.append("%s (missing)" % artifact["name"])
        elif (there.get("sha256"), there.get("size")) != (artifact.get("sha256"), artifact.get("size")):
            bad.append(artifact["name"])
    return bad


def manifest_sha256(manifest):
    """The digest the service recorded for a manifest when it was published (canonical JSON)."""
    return document_sha256(manifest)


def published_record(results, asset_id):
    """A backup run's own record of what it just published (its backup results), in the shape of
    the service's record (ASSET:ITEM:BACKUP_ID to {manifest_sha256}): what its verification
    holds the repository's manifest to."""
    return {
        "%s:%s:%s" % (asset_id, r["item"], r["backup_id"]): {"manifest_sha256": r["manifest_sha256"]}
        for r in results
        if r.get("ok") and r.get("backup_id") and r.get("manifest_sha256")
    }


class FilterModule:
    def filters(self):
        return {
            "checksum_mismatches": checksum_mismatches,
            "manifest_sha256": manifest_sha256,
            "published_record": published_record,
        }

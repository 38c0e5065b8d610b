# Copyright: pulih maintainers
# Apache License 2.0
"""The one canonical form of a JSON document that pulih hashes (a backup's manifest): sorted
keys, no spaces, UTF-8. The service records a manifest's digest when the backup is published;
a restore refuses a manifest whose digest is not the recorded one."""

from __future__ import annotations

import hashlib
import json


def canonical_bytes(doc):
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def document_sha256(doc):
    return hashlib.sha256(canonical_bytes(doc)).hexdigest()

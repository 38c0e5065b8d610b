"""The server asset register: load, validate and check it.

The validator lives in the collection, ``pulih.core``'s ``plugins/module_utils/register.py``,
so the inventory plugin needs nothing but ansible-core and an installed collection; the
``pulih register`` commands use the same file through this module, so the two can never
disagree about what a valid register is.

It is loaded from the project's ``collections/`` (``PULIH_HOME``, as for the roles'
module_utils) under a name of the wrapper's own, not as ``ansible_collections.pulih.core...``:
a plain import of that package would shadow the one Ansible's collection loader builds (with
the collection's metadata) and break loading the collection's plugins in the same process.
mypy reads the same file (``mypy_path``).
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import TYPE_CHECKING

from pulih.runner import ContentError, project_dir

__all__ = [
    "DATABASE_ENGINES",
    "ENGINES",
    "ENVIRONMENTS",
    "FORMAT_VERSION",
    "MAX_REGISTER_BYTES",
    "MAX_REGISTER_DEPTH",
    "PLUGIN_NAME",
    "REGISTER_SUFFIXES",
    "REVIEW_MAX_AGE_DAYS",
    "STATUSES",
    "Asset",
    "CheckResult",
    "DataItem",
    "Engine",
    "Finding",
    "LineDict",
    "MaintenanceWindow",
    "Problem",
    "Register",
    "RegisterError",
    "check",
    "duplicate_problems",
    "find_register_files",
    "host_vars",
    "load_file",
    "load_inventory",
    "parse_register",
    "run_check",
    "shown",
    "slug",
]
# The field lists too, private (the tests compare with them).
_PRIVATE = ("_ASSET_FIELDS", "_DB_FIELDS", "_FILES_FIELDS")
_MODULE = "pulih._register_validator"
SOURCE = "collections/ansible_collections/pulih/core/plugins/module_utils/register.py"


def _load() -> ModuleType:
    loaded = sys.modules.get(_MODULE)
    if loaded is not None:
        return loaded
    path = project_dir() / SOURCE
    spec = importlib.util.spec_from_file_location(_MODULE, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ContentError(f"{path} is missing: point PULIH_HOME at the pulih project, or unset it")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_MODULE]
        raise
    return module


if TYPE_CHECKING:
    from ansible_collections.pulih.core.plugins.module_utils.register import (
        _ASSET_FIELDS as _ASSET_FIELDS,
    )
    from ansible_collections.pulih.core.plugins.module_utils.register import (
        _DB_FIELDS as _DB_FIELDS,
    )
    from ansible_collections.pulih.core.plugins.module_utils.register import (
        _FILES_FIELDS as _FILES_FIELDS,
    )
    from ansible_collections.pulih.core.plugins.module_utils.register import (
        DATABASE_ENGINES,
        ENGINES,
        ENVIRONMENTS,
        FORMAT_VERSION,
        MAX_REGISTER_BYTES,
        MAX_REGISTER_DEPTH,
        PLUGIN_NAME,
        REGISTER_SUFFIXES,
        REVIEW_MAX_AGE_DAYS,
        STATUSES,
        Asset,
        CheckResult,
        DataItem,
        Engine,
        Finding,
        LineDict,
        MaintenanceWindow,
        Problem,
        Register,
        RegisterError,
        check,
        duplicate_problems,
        find_register_files,
        host_vars,
        load_file,
        load_inventory,
        parse_register,
        run_check,
        shown,
        slug,
    )
else:
    _validator = _load()
    globals().update({name: getattr(_validator, name) for name in (*__all__, *_PRIVATE)})

"""Every role declares every default in meta/argument_specs.yml, with the same value, and
every public variable carries the role's prefix."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import PROJECT

ROLES = sorted(p.parent.parent for p in (PROJECT / "roles").glob("*/defaults/main.yml"))


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_defaults_and_argument_specs_agree(role):
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    optional = {name for name, option in options.items() if not option.get("required")}
    assert set(defaults) == optional, "a default without a spec, or an optional spec without a default"
    for name, value in defaults.items():
        assert name.startswith(f"{role.name}_"), f"{name} lacks the role's prefix"
        assert options[name].get("default") == value, f"{name}: default differs from argument_specs"


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_main_only_includes(role):
    tasks = yaml.safe_load((role / "tasks" / "main.yml").read_text())
    for task in tasks:
        includes = {
            "ansible.builtin.include_tasks",
            "ansible.builtin.import_tasks",
            "ansible.builtin.include_role",
        }
        assert includes & set(task), task["name"]


PLUGINS = sorted(
    (PROJECT / "collections" / "ansible_collections" / "pulih" / "core" / "plugins").glob("*/*.py")
)


@pytest.mark.parametrize("plugin", PLUGINS, ids=[f"{p.parent.name}/{p.stem}" for p in PLUGINS])
def test_plugin_documentation_is_yaml(plugin):
    """ansible-doc and ansible-lint read these blocks as YAML; one that does not parse leaves
    the plugin undocumented (a plain scalar with ': ' in it is the usual cause)."""
    import ast

    tree = ast.parse(plugin.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            names = {t.id for t in node.targets if isinstance(t, ast.Name)}
            if names & {"DOCUMENTATION", "EXAMPLES", "RETURN"}:
                yaml.safe_load(node.value.value)

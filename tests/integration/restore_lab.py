"""The lab, service and helpers the restore tests share (tests/integration/test_restore.py and
test_restore_faults.py, each with a lab of its own so that the two xdist workers share them):
two lab servers and a repository, a pulih serve on their register, every item backed up and
verified once, and lab1's file tree holding every kind of entry."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import httpx
import jsonschema
import yaml

from tests import lab as lab_mod
from tests.conftest import PROJECT
from tests.integration.artifacts import tasks_of
from tests.integration.client import Service, free_port, pulih, report_of, skpd_of
from tests.integration.trees import EXCLUDE, excluded, make_rich_tree, tree_state

SETTINGS = "restore_attempts: 3\nrestore_retry_seconds: 1\n"  # the service's config
PG_PRINT = "SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t"


@contextlib.contextmanager
def restore_lab(tmp_path_factory, name):
    """The module's env: a lab of two servers, a service, and the first backup of every item."""
    base = tmp_path_factory.mktemp(name)
    inventory = base / "inventory"
    lab = lab_mod.Lab(2, inventory_dir=inventory)
    state = lab.up()
    service = Service(inventory, SETTINGS, listen=f"127.0.0.1:{free_port()}")  # and the desk
    try:
        service.init()
        outputs: list[str] = []
        env = {
            "state": state,
            "inventory": inventory,
            "environ": service.environ(),
            "service": service,
            "outputs": outputs,
            "base": base,
        }
        # lab1's tree holds every kind of entry (hard links, sparse, fifo, symlinks, ACL, xattrs, a
        # socket) and files its exclude patterns leave out.
        make_rich_tree(files_root(env, "lab1"))
        set_item(env, "LAB-001", "dokumen", exclude=EXCLUDE)
        backed_up = report_of(pulih(env, "backup", "--json", check=0))
        assert all(i["ok"] and i["verification"]["ok"] for i in backed_up["items"]), backed_up["items"]
        env["backups"] = {f"{i['asset_id']}:{i['item']}": i["backup_id"] for i in backed_up["items"]}
        env["backed_up"] = {"pg": pg_print(env, "lab1", "app_lab1")}  # what those backups hold
        yield env
    finally:  # also when the setup above failed: no lab or service left running
        service.remove()
        lab.down()


def planned_request(env, items, *, backups, target=None, plan=True, unverified=None, query=True):
    """A request taken through the SOP up to its plan: filed by ani, received and approved by
    sri, assessed, backups checked and planned by budi (`plan=False`: all but the plan;
    `unverified`: the reason to plan backups that were not verified; `query=False`: plan
    without asking the repository or the record, which then needs `unverified`)."""
    skpd = skpd_of(env, items[0])
    args = ["request", "new", "--skpd", skpd, "--contact", f"ani@{skpd}.go.id", "--reason", "error"]
    for item in items:
        args += ["--item", item]
    if target:
        args += ["--target", target]
    rid = json.loads(pulih(env, *args, "--json", actor="ani", check=0).stdout)["id"]
    pulih(env, "request", "receive", rid, actor="sri", check=0)
    pulih(env, "request", "approve", rid, actor="sri", check=0)
    pulih(env, "request", "assess", rid, "--damage", "error", check=0)
    pulih(env, "request", "check-backups", rid, check=0)
    if plan:
        named = [f"--backup={key}={backups[key]}" for key in items]
        why = ["--unverified", unverified] if unverified else []
        pulih(env, "request", "plan", rid, *named, *why, *([] if query else ["--no-query"]), check=0)
    return rid


def restore(env, rid, *args, check):
    return report_of(pulih(env, "restore", "--request", rid, "--json", *args, check=check))


def host(env, name):
    return env["state"].host(name)


def pg_print(env, name, database, table="pegawai"):
    return env["state"].psql(host(env, name), PG_PRINT.format(table), database).strip()


def my_print(env, name, database, table="kunjungan"):
    bq = lambda n: "`" + n.replace("`", "``") + "`"  # noqa: E731
    return (
        env["state"]
        .mariadb(host(env, name), f"CHECKSUM TABLE {bq(database)}.{bq(table)} EXTENDED")
        .split()[-1]
    )


def tree_print(root):
    return tree_state(Path(root))


def files_root(env, name):
    return Path(env["state"].root) / "hosts" / name / "srv" / "dokumen"


def leftovers(env, name):
    """Stages and replaced copies a restore left behind, on every engine of a server."""
    state = env["state"]
    found = state.psql(host(env, name), "SELECT datname FROM pg_database WHERE datname LIKE 'pulih%'").split()
    found += state.mariadb(
        host(env, name), "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'pulih%'"
    ).split()
    srv = Path(state.root) / "hosts" / name / "srv"
    found += [p.name for p in srv.rglob(".pulih-*")]
    return found


def repository(env):
    return Path(env["state"].host("labrepo").repository_path)


def manifest(env, asset, item, backup_id):
    return json.loads((repository(env) / asset / item / backup_id / "manifest.json").read_text())


def add_items(env, asset_id, items):
    path = env["inventory"] / lab_mod.REGISTER_FILE
    doc = yaml.safe_load(path.read_text())
    entry = next(a for a in doc["assets"] if a["asset_id"] == asset_id)
    entry["data"] += items
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


def set_item(env, asset_id, name, **fields):
    path = env["inventory"] / lab_mod.REGISTER_FILE
    doc = yaml.safe_load(path.read_text())
    entry = next(a for a in doc["assets"] if a["asset_id"] == asset_id)
    next(i for i in entry["data"] if i["name"] == name).update(fields)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


def excluded_part(state):
    return {path: entry for path, entry in state.items() if excluded(path, EXCLUDE)}


def record(env, rid):
    return json.loads(pulih(env, "request", "show", rid, "--json", check=0).stdout)


def listed_backup(env, asset, backup_id):
    listed = json.loads(pulih(env, "backups", "list", "--asset", asset, "--json", check=0).stdout)["backups"]
    return next(b for b in listed if b["backup_id"] == backup_id)


def audit_actions(env):
    """The actions on the service's audit log, oldest first (read from its store as the auditor would)."""
    with contextlib.closing(sqlite3.connect(env["service"].state / "pulih.db")) as db:
        return [row[0] for row in db.execute("SELECT action FROM pulih_audit ORDER BY seq")]


def decoy_register(env) -> Path:
    """The lab's register with lab2 moved onto lab1's address and ports: a restore that read it
    would put lab2's copy on lab1."""
    decoy = env["base"] / "decoy"  # the register alone: its group_vars hold the lab's password
    decoy.mkdir(exist_ok=True)
    path = decoy / lab_mod.REGISTER_FILE
    doc = yaml.safe_load((env["inventory"] / lab_mod.REGISTER_FILE).read_text())
    lab1, lab2 = (next(a for a in doc["assets"] if a["hostname"] == n) for n in ("lab1", "lab2"))
    lab2.update(address=lab1["address"], ssh_port=lab1["ssh_port"])
    for theirs, mine in zip(lab2["data"], lab1["data"], strict=False):
        if theirs.get("engine") != "files":
            theirs.update(host=mine["host"], port=mine["port"])
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return decoy


def protected(env):
    path = repository(env) / ".pulih-protected.json"
    if not path.exists():
        return []
    doc = json.loads(path.read_text())
    jsonschema.validate(doc, json.loads((PROJECT / "schemas" / "protected.schema.json").read_text()))
    return doc["backups"]


def api(env, actor, method, path, body=None):
    """One call of the service's API as `actor` (for the tests that must act within a job's
    run, faster than a command starts)."""
    service = env["service"]
    transport = httpx.HTTPTransport(uds=str(service.state / "pulih.sock"))
    headers = {"Authorization": f"Bearer {service.tokens[actor]}"}
    with httpx.Client(transport=transport, base_url="http://pulih", headers=headers, timeout=300) as client:
        return client.request(method, f"/v1{path}", json=body)


def follow_job(env, job_id, when=None, then=None):
    """A job's events to its end; the first event for which when(event) holds runs then()."""
    service = env["service"]
    transport = httpx.HTTPTransport(uds=str(service.state / "pulih.sock"))
    headers = {"Authorization": f"Bearer {service.tokens['budi']}"}
    with (
        httpx.Client(transport=transport, base_url="http://pulih", headers=headers, timeout=900) as client,
        client.stream("GET", f"/v1/jobs/{job_id}/events") as events,
    ):
        for line in events.iter_lines():
            event = json.loads(line)
            if when is not None and when(event):
                when = None
                then()
            if event["type"] == "end":
                return event
    raise AssertionError(f"job {job_id}'s events ended without its end")


def no_task_on_the_repository_host(env, verbs):
    """Every restore of the module's runs: no task ran on the repository host, none holds the
    database password or the age identity in clear, those given a secret ran on the data
    servers (the target's agent fetched the backup from the receiver itself), and the
    controller asked the receiver at least `verbs`."""
    tasks = tasks_of(env)
    assert tasks.seen > 100, "no run's artifacts were found: nothing was checked"
    assert tasks.on_repository == [], tasks.on_repository
    assert tasks.leaked == [], tasks.leaked
    assert "pulih.core.agent_pull" in tasks.with_secret, tasks.with_secret
    assert tasks.with_secret <= {"pulih.core.agent_push", "pulih.core.agent_pull"}, tasks.with_secret
    assert verbs <= tasks.receiver_verbs, tasks.receiver_verbs

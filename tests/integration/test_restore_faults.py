"""Restores end to end, the second half (a lab of its own, tests/integration/restore_lab.py):
tricky names, one restore per target, approvals revoked mid-way, retention and plans, interrupted
swaps, secrets, and the faults that need a server down or a service killed. Destructive tests
come last."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests import agentkit
from tests import lab as lab_mod
from tests.conftest import PROJECT
from tests.integration import desk_browser
from tests.integration.client import descendants, pulih, report_of, skpd_of
from tests.integration.desk import add_people
from tests.integration.plain import ansible_playbook
from tests.integration.restore_lab import (
    add_items,
    api,
    follow_job,
    host,
    leftovers,
    my_print,
    no_task_on_the_repository_host,
    pg_print,
    planned_request,
    protected,
    record,
    repository,
    restore,
    restore_lab,
    set_item,
    tree_print,
)
from tests.integration.tricky import (
    PWNED,
    TRICKY_DB,
    TRICKY_TABLE,
    TRICKY_VIEW,
    make_tricky_data,
    my_quote,
    pg_quote,
)

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with restore_lab(tmp_path_factory, "restore-faults") as built:
        yield built


def test_the_sop_in_a_browser_brings_the_data_back(env):
    """Three people click the SOP through the desk in Debian's chromium (Playwright): the
    requester files; the receiver receives; the requester's attempt to approve her own
    request is refused; the receiver, shown the repository's backups, approves; the operator
    assesses, checks the backups, plans the one the desk offers first (the newest verified),
    starts the restore and follows it on the job page to its end; the rows are back on lab1;
    the requester confirms and the request closes. Each page is saved as a screenshot
    (reports/desk/screens)."""
    service, skpd = env["service"], skpd_of(env, "LAB-001:app-pg")
    add_people(
        service,
        {
            "desk-ani": (["requester", "approver"], [skpd]),
            "desk-sri": (["receiver", "approver"], []),
            "desk-budi": (["operator"], []),
        },
    )
    fresh = report_of(pulih(env, "backup", "--limit", "lab1", "--item", "app-pg", "--json", check=0))
    assert fresh["items"][0]["verification"]["ok"], fresh["items"]
    good = pg_print(env, "lab1", "app_lab1")
    env["state"].psql(host(env, "lab1"), "DELETE FROM pegawai WHERE id > 10", "app_lab1")
    assert pg_print(env, "lab1", "app_lab1") != good

    with desk_browser.chromium() as browser:
        ani, sri, budi = (
            desk_browser.person(browser, service, n) for n in ("desk-ani", "desk-sri", "desk-budi")
        )
        shots = desk_browser.Screenshots(PROJECT / "reports" / "desk" / "screens")
        ani.click("#new-request")
        ani.select_option("#skpd", skpd)
        ani.check('input[name="items"][value="LAB-001:app-pg"]')
        ani.select_option("#reason", "accidental_deletion")
        ani.fill("#reason_text", "data pegawai terhapus oleh impor")
        ani.fill("#contact", "ani@dinkes.go.id")
        shots.take(ani, "requester-files")
        ani.click("#file")
        ani.wait_for_url("**/desk/requests/*?done=filed")
        request_id = ani.text_content("#request-id")
        assert request_id and ani.get_attribute("#status", "data-status") == "filed"

        sri.goto("/desk/requests")
        assert sri.locator(f'tr.yours a[href="/desk/requests/{request_id}"]').count() == 1
        shots.take(sri, "receiver-inbox")
        sri.click(f'a[href="/desk/requests/{request_id}"]')
        desk_browser.step(sri, "receive", "received")

        ani.goto(f"/desk/requests/{request_id}")
        ani.click("#act-approve button")
        ani.wait_for_load_state()
        assert "Catatan menolak langkah ini." in ani.content(), "her own request: refused"
        shots.take(ani, "self-approval-refused")

        sri.click("#show-backups")  # the approver weighs the backups there are
        sri.wait_for_url("**?backups=1*")
        available = sri.locator("#backups").text_content() or ""
        assert fresh["items"][0]["backup_id"] in available, available
        sri.fill("#act-approve input[name=valid_hours]", "4")
        shots.take(sri, "approver-approves")
        desk_browser.step(sri, "approve", "approved")

        budi.goto(f"/desk/requests/{request_id}")
        budi.select_option("#act-assess select[name=damage]", "accidental_deletion")
        desk_browser.step(budi, "assess", "assessed")
        desk_browser.step(budi, "check-backups", "backups_checked")
        offered = budi.locator('select[name="backup:LAB-001:app-pg"] option').first.get_attribute("value")
        assert offered == fresh["items"][0]["backup_id"], "the newest verified backup comes first"
        shots.take(budi, "operator-plans")
        desk_browser.step(budi, "plan", "planned")
        budi.click("#act-restore button")
        budi.wait_for_url("**/desk/jobs/job-*")
        shots.take(budi, "restore-running")
        seen = desk_browser.follow_job(budi, deadline=900)
        assert seen[0] == "running" or len(seen) == 1, seen
        assert seen[-1] == "succeeded", seen
        assert budi.locator("#progress li").count() >= 5
        shots.take(budi, "restore-done")
        assert pg_print(env, "lab1", "app_lab1") == good, "the rows are back"
        budi.click("#job-report")
        budi.wait_for_load_state()
        shots.take(budi, "run-report")

        ani.goto(f"/desk/requests/{request_id}")
        ani.fill("#act-confirm textarea[name=note]", "data sudah kembali")
        desk_browser.step(ani, "confirm", "confirmed")
        sri.goto(f"/desk/requests/{request_id}")
        desk_browser.step(sri, "close", "closed")
        shots.take(sri, "request-closed")
        ani.goto(f"/desk/requests/{request_id}/form/pd")
        assert request_id in ani.content() and "desk-sri" in ani.content()
        shots.take(ani, "form-pd")
    assert len(shots.taken) == 10


def test_tricky_names_restore_in_place(env):
    state, lab1 = env["state"], host(env, "lab1")
    tree, register_items = make_tricky_data(state, lab1)
    add_items(env, "LAB-001", register_items)
    quoted_table = pg_quote(TRICKY_TABLE)
    bq = my_quote
    items = ["LAB-001:tricky-pg", "LAB-001:tricky-mariadb", "LAB-001:tricky-files"]
    made = report_of(
        pulih(
            env, "backup", "--limit", "lab1", *[f"--item={i.split(':')[1]}" for i in items], "--json", check=0
        )
    )
    backups = {f"LAB-001:{i['item']}": i["backup_id"] for i in made["items"]}
    original = (
        pg_print(env, "lab1", TRICKY_DB, quoted_table),
        my_print(env, "lab1", TRICKY_DB, TRICKY_TABLE),
        tree_print(tree),
    )
    state.psql(lab1, f"DELETE FROM {quoted_table} WHERE id > 10", TRICKY_DB)
    state.mariadb(lab1, f"DELETE FROM {bq(TRICKY_DB)}.{bq(TRICKY_TABLE)} WHERE id > 5")
    (tree / "sub folder ø" / "berkas 'a' \"b\" $x.txt").write_text("rusak\n")

    rid = planned_request(env, items, backups=backups)
    restore(env, rid, check=0)
    restored = (
        pg_print(env, "lab1", TRICKY_DB, quoted_table),
        my_print(env, "lab1", TRICKY_DB, TRICKY_TABLE),
        tree_print(tree),
    )
    assert restored == original
    views = state.mariadb(lab1, f"SELECT COUNT(*) FROM {bq(TRICKY_DB)}.{bq(TRICKY_VIEW)}").split()
    assert views[-1] == "17", "the view was not recreated in the restored schema"
    assert not PWNED.exists(), "a name was run as a command"
    assert leftovers(env, "lab1") == []


# --------------------------------------------------------------------------- retention and plans


def test_one_restore_per_target_at_a_time_and_no_backup_of_it_meanwhile(env):
    first = planned_request(env, ["LAB-001:app-pg"], backups=env["backups"])
    second = planned_request(env, ["LAB-001:app-pg"], backups=env["backups"])
    started = api(env, "budi", "POST", "/restores", {"request": first})
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["targets"] == [
        f"postgresql://{host(env, 'lab1').address}:{host(env, 'lab1').pg_port}/app_lab1"
    ]
    try:
        again = pulih(env, "restore", "--request", second, "--json", check=3)
        said = again.stdout + again.stderr
        assert f"is busy with job {job['id']} (restore by budi, request {first})" in said, said
        backup = pulih(env, "backup", "--limit", "lab1", "--item", "app-pg", "--json", check=3)
        assert f"is busy with job {job['id']}" in json.loads(backup.stdout)["message"]
    finally:
        end = follow_job(env, job["id"])
    assert end["job"]["exit_code"] == 0, end["report"]["errors"]
    refused_runs = [r for r in json.loads(pulih(env, "runs", "list", "--json", check=0).stdout)]
    assert any(r["request_id"] == second and r["status"] == "refused" for r in refused_runs), "on the record"
    # Once it ended, the target is free again.
    assert report_of(pulih(env, "restore", "--request", second, "--json", check=0))["status"] == "succeeded"


def test_an_approval_revoked_during_the_stage_stops_the_restore_before_the_swap(env):
    state, lab1 = env["state"], host(env, "lab1")
    rid = planned_request(env, ["LAB-001:app-pg"], backups=env["backups"])
    state.psql(lab1, "UPDATE pegawai SET nama = 'sesudah cadangan' WHERE id = 2", "app_lab1")
    live = pg_print(env, "lab1", "app_lab1")
    job = api(env, "budi", "POST", "/restores", {"request": rid}).json()

    def revoke():
        done = api(env, "sri", "POST", f"/requests/{rid}/revoke", {"reason": "salah tabel"})
        assert done.status_code == 200, done.text

    end = follow_job(
        env, job["id"], when=lambda e: e["type"] == "task" and "Stage the backup" in e["text"], then=revoke
    )
    report = end["report"]
    assert end["job"]["exit_code"] == 3 and report["status"] == "refused", report["errors"]
    (item,) = report["items"]
    assert "refused right before the swap: the approval of request" in item["error"]
    assert "was revoked by sri" in item["error"] and item["restore"]["phase"] == "gate"
    assert pg_print(env, "lab1", "app_lab1") == live, "the live database changed"
    assert leftovers(env, "lab1") == [], "the stage was left behind"
    assert [s["step"] for s in record(env, rid)["steps"]][-2:] == ["revoked", "executed"]
    assert len(report["attempts"]) == 1, "a refusal by the gate is not retried"
    refused = pulih(env, "restore", "--request", rid, check=3)
    assert "was revoked by sri" in refused.stderr


def test_a_token_that_may_only_back_up_cannot_restore(env):
    rid = planned_request(env, ["LAB-001:app-pg"], backups=env["backups"])
    nightly = env["service"].admin("admin", "token", "create", "budi", "--scope", "backup").stdout.strip()
    result = subprocess.run(
        ["pulih", "restore", "--request", rid],
        env={**env["environ"], "PULIH_TOKEN": nightly},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 3 and "'restore' needs a token with that scope" in result.stderr


def window_around(now, open_now: bool) -> dict:
    """A maintenance window of every day: open from an hour before `now` to an hour after, or
    (closed now) from three hours after it to four."""
    start, end = (
        (now - dt.timedelta(hours=1), now + dt.timedelta(hours=1))
        if open_now
        else (
            now + dt.timedelta(hours=3),
            now + dt.timedelta(hours=4),
        )
    )
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    return {
        "timezone": "Asia/Jakarta",
        "slots": [{"days": days, "start": f"{start:%H:%M}", "end": f"{end:%H:%M}"}],
    }


def test_an_in_place_restore_outside_the_window_is_refused_unless_the_approval_allows_it(env):
    from zoneinfo import ZoneInfo

    now = dt.datetime.now(ZoneInfo("Asia/Jakarta"))
    path = env["inventory"] / lab_mod.REGISTER_FILE
    original = path.read_text()
    doc = yaml.safe_load(original)
    lab1 = next(a for a in doc["assets"] if a["asset_id"] == "LAB-001")
    try:
        lab1["maintenance_window"] = window_around(now, open_now=False)
        path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
        rid = planned_request(env, ["LAB-001:app-pg"], backups=env["backups"])
        refused = restore(env, rid, "--check", check=3)
        assert (
            refused["status"] == "refused" and "outside its maintenance window now" in refused["errors"][-1]
        )
        assert "lab1 (window mon,tue,wed,thu,fri,sat,sun" in refused["errors"][-1]  # as the register says
        # Approved to run outside it: the gate lets it through, and the forms say so.
        skpd = skpd_of(env, "LAB-001:app-pg")
        args = [
            "request",
            "new",
            "--skpd",
            skpd,
            "--contact",
            "x",
            "--reason",
            "error",
            "--item",
            "LAB-001:app-pg",
        ]
        allowed = json.loads(pulih(env, *args, "--json", actor="ani", check=0).stdout)["id"]
        pulih(env, "request", "receive", allowed, actor="sri", check=0)
        pulih(env, "request", "approve", allowed, "--outside-window", actor="sri", check=0)
        pulih(env, "request", "assess", allowed, "--damage", "error", check=0)
        pulih(env, "request", "check-backups", allowed, check=0)
        pulih(
            env,
            "request",
            "plan",
            allowed,
            f"--backup=LAB-001:app-pg={env['backups']['LAB-001:app-pg']}",
            check=0,
        )
        assert restore(env, allowed, "--check", check=0)["gate"]["allowed"]
        form = pulih(env, "request", "form", allowed, "--lang", "en", check=0).stdout
        assert "The restore may run outside the servers' maintenance windows" in form
        # In the window, the first request's restore may run.
        lab1["maintenance_window"] = window_around(now, open_now=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
        assert restore(env, rid, "--check", check=0)["gate"]["allowed"]
    finally:
        path.write_text(original)


def test_a_failing_pre_restore_hook_leaves_the_target_untouched_and_a_failing_post_hook_is_reported(env):
    marker = env["base"] / "aplikasi-kembali"
    back_online = {"argv": ["/usr/bin/touch", str(marker)], "timeout": 30}
    failing = {"argv": ["/bin/sh", "-c", "echo aplikasi tidak mau berhenti >&2; exit 3"], "timeout": 30}
    state, lab1 = env["state"], host(env, "lab1")
    try:
        set_item(env, "LAB-001", "app-pg", restore_hooks={"pre": [failing], "post": [back_online]})
        state.psql(lab1, "UPDATE pegawai SET nama = 'diubah oleh aplikasi' WHERE id = 2", "app_lab1")
        before = pg_print(env, "lab1", "app_lab1")
        rid = planned_request(env, ["LAB-001:app-pg"], backups=env["backups"])
        doc = restore(env, rid, "--attempts", "1", check=1)
        (item,) = doc["items"]
        assert not item["ok"] and item["restore"]["phase"] == "pre_hook"
        assert "pre-restore hook /bin/sh -c" in item["error"] and "exit 3" in item["error"]
        assert "aplikasi tidak mau berhenti" in item["error"] and "was not replaced" in item["error"]
        assert pg_print(env, "lab1", "app_lab1") == before, "a failed pre-restore hook changed the data"
        hooks = item["restore"]["hooks"]
        assert [h["rc"] for h in hooks["pre"]] == [3] and hooks["post"][0]["ok"] and marker.exists()
        assert item["restore"]["pre_restore_backup_id"] is None  # stopped before the live data was saved
        assert leftovers(env, "lab1") == [], "the stage was left behind"

        # The pre-restore hook passes, the post-restore one fails: restored, and the failure said.
        marker.unlink()
        set_item(env, "LAB-001", "app-pg", restore_hooks={"pre": [back_online], "post": [failing]})
        rid = planned_request(env, ["LAB-001:app-pg"], backups=env["backups"])
        doc = restore(env, rid, "--attempts", "1", check=0)
        (item,) = doc["items"]
        assert item["ok"] and item["restore"]["hooks"]["post_failed"] and marker.exists()
        assert pg_print(env, "lab1", "app_lab1") == env["backed_up"]["pg"]
        assert any("post-restore hook /bin/sh -c" in e and "run it by hand" in e for e in doc["errors"]), doc[
            "errors"
        ]
    finally:
        path = env["inventory"] / lab_mod.REGISTER_FILE
        doc = yaml.safe_load(path.read_text())
        entry = next(a for a in doc["assets"] if a["asset_id"] == "LAB-001")
        next(i for i in entry["data"] if i["name"] == "app-pg").pop("restore_hooks", None)
        path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


def test_a_planned_backup_survives_retention_by_plain_ansible_until_its_request_closes(env):
    # An item of its own: retention keeping one backup must not prune the other tests' backups.
    lab2 = host(env, "lab2")
    env["state"].mariadb(
        lab2,
        "CREATE DATABASE retensi; CREATE TABLE retensi.t (id INT PRIMARY KEY); "
        "INSERT INTO retensi.t VALUES (1)",
    )
    add_items(
        env,
        "LAB-002",
        [
            {
                "name": "retensi",
                "engine": "mariadb",
                "database": "retensi",
                "host": lab2.address,
                "port": lab2.mariadb_port,
                "user": lab_mod.DB_USER,
                "password_var": lab_mod.PASSWORD_VAR,
            }
        ],
    )
    item = "LAB-002:retensi"
    made = [
        report_of(pulih(env, "backup", "--limit", "lab2", "--item", "retensi", "--json", check=0))["items"][0]
        for _ in range(2)
    ]
    older = made[0]["backup_id"]
    unverified = report_of(
        pulih(env, "backup", "--limit", "lab2", "--item", "retensi", "--no-verify", "--json", check=0)
    )["items"][0]["backup_id"]

    # Planning a backup that never verified is refused, unless the operator says why.
    rid = planned_request(env, [item], backups={item: older}, plan=False)
    refused = pulih(env, "request", "plan", rid, f"--backup={item}={unverified}", "--json", check=4)
    assert json.loads(refused.stdout)["status"] == "error" and "not verified" in refused.stdout
    assert record(env, rid)["status"] != "planned"
    # (--unverified REASON: see the corrupt backup's test.) The older, verified one is planned.
    pulih(env, "request", "plan", rid, f"--backup={item}={older}", check=0)
    assert [e["backup_id"] for e in protected(env) if e["request_id"] == rid] == [older]

    # Retention keeping one backup, run with plain ansible-playbook: the planned one stays.
    settings = env["inventory"] / "group_vars" / "all" / "retention.yml"
    settings.write_text(
        "pulih_backup_retention_keep_last: 1\npulih_backup_retention_keep_daily: 0\n"
        "pulih_backup_retention_keep_weekly: 0\npulih_backup_retention_keep_monthly: 0\n"
    )
    try:
        playbook = ansible_playbook(
            env["inventory"], "backup.yml", "--limit", "lab2", "-e", '{"pulih_backup_items": ["retensi"]}'
        )
        assert playbook.returncode == 0, playbook.stdout[-3000:]
        kept = [
            b.name for b in (repository(env) / "LAB-002" / "retensi").iterdir() if not b.name.startswith(".")
        ]
        assert older in kept, "retention pruned the backup an open request's plan names"
        # Retention did run: the unverified one went (made[1] stays as the newest verified one).
        assert unverified not in kept and made[1]["backup_id"] in kept
    finally:
        settings.unlink()

    # Lifted when the protection's request closes (through the playbook, as `request close` does).
    lifted = ansible_playbook(
        env["inventory"],
        "protect.yml",
        "-e",
        f"pulih_protect_request_id={rid}",
        "-e",
        "pulih_protect_state=absent",
    )
    assert lifted.returncode == 0, lifted.stdout[-3000:]
    assert [e for e in protected(env) if e["request_id"] == rid] == []


# --------------------------------------------------------------------------- interrupted swaps

AGENT = agentkit.ensure_built()
SWAP_SCHEMA = """
    CREATE DATABASE swap_probe; USE swap_probe;
    CREATE TABLE akun (id INT PRIMARY KEY, saldo INT NOT NULL) ENGINE=InnoDB;
    CREATE TABLE jejak (id INT AUTO_INCREMENT PRIMARY KEY, akun INT) ENGINE=InnoDB;
    INSERT INTO akun SELECT seq, seq * 10 FROM seq_1_to_50;
    CREATE TRIGGER catat AFTER UPDATE ON akun FOR EACH ROW INSERT INTO jejak (akun) VALUES (NEW.id);
    CREATE VIEW kaya AS SELECT id FROM akun WHERE saldo > 250;
    CREATE FUNCTION dua_kali(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;
    CREATE EVENT bersih ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM jejak;
"""


def schema_print(env, name="swap_probe"):
    """Tables with their checksums, and every trigger, view, routine and event of a schema."""
    query = f"""
        SELECT CONCAT('table ', TABLE_NAME) FROM information_schema.TABLES
          WHERE TABLE_SCHEMA = '{name}' AND TABLE_TYPE = 'BASE TABLE'
        UNION ALL SELECT CONCAT('trigger ', TRIGGER_NAME, ' ', ACTION_STATEMENT)
          FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = '{name}'
        UNION ALL SELECT CONCAT('view ', TABLE_NAME, ' ', VIEW_DEFINITION) FROM information_schema.VIEWS
          WHERE TABLE_SCHEMA = '{name}'
        UNION ALL SELECT CONCAT('routine ', ROUTINE_NAME) FROM information_schema.ROUTINES
          WHERE ROUTINE_SCHEMA = '{name}'
        UNION ALL SELECT CONCAT('event ', EVENT_NAME) FROM information_schema.EVENTS
          WHERE EVENT_SCHEMA = '{name}';
        CHECKSUM TABLE {name}.akun, {name}.jejak EXTENDED;
    """
    return sorted(env["state"].mariadb(host(env, "lab1"), query).splitlines())


def run_agent(env, request, data=b""):
    lab1 = host(env, "lab1")
    conn = {"socket": env["state"].mariadb_socket(lab1), "user": "root"}
    line = agentkit.request_line(
        {"engine": "mariadb", "conn": conn, "live": "swap_probe", "token": "swaptest", **request}
    )
    return subprocess.run(
        ["/usr/bin/python3", str(AGENT)], input=line + data, capture_output=True, timeout=120
    )


@pytest.mark.parametrize("point", ["mariadb_swap_before_rename", "mariadb_swap_after_rename"])
def test_a_mariadb_swap_killed_mid_way_is_undone(env, point):
    """The agent dies (SIGKILL) exactly between dropping the live triggers and the rename, or
    between the rename and recreating the objects; the next request for the target (the
    rescue's discard, or the next attempt's stage) puts the live schema back as it was."""
    state, lab1 = env["state"], host(env, "lab1")
    state.mariadb(lab1, "DROP DATABASE IF EXISTS swap_probe;" + SWAP_SCHEMA)
    dump = subprocess.run(
        'set -o pipefail; mariadb-dump --no-defaults -u root --socket="$SOCK" --routines --triggers --events '
        "swap_probe | zstd -q -c",
        shell=True,
        executable="/bin/bash",
        env={**os.environ, "SOCK": state.mariadb_socket(lab1)},
        capture_output=True,
        check=True,
    ).stdout
    state.mariadb(lab1, "DELETE FROM swap_probe.akun WHERE id > 20; UPDATE swap_probe.akun SET saldo = 0")
    live = schema_print(env)

    staged = run_agent(env, {"mode": "stage", "nonce": "a1"}, dump)
    assert staged.returncode == 0, staged.stderr.decode()
    killed = run_agent(env, {"mode": "swap", "nonce": "a1", "fault": point})
    assert killed.returncode == -signal.SIGKILL
    assert schema_print(env) != live, "the kill must land where the live schema is mid-change"
    journal = state.mariadb(lab1, "SELECT COUNT(*) FROM pulih_old_swaptest.pulih_swap_journal")
    assert journal.strip() == "1"

    undone = run_agent(env, {"mode": "discard", "nonce": "a1"})
    assert undone.returncode == 0, undone.stderr.decode()
    assert schema_print(env) == live
    assert leftovers(env, "lab1") == []

    # And the next attempt goes through.
    assert run_agent(env, {"mode": "stage", "nonce": "a2"}, dump).returncode == 0
    swapped = run_agent(env, {"mode": "swap", "nonce": "a2"})
    assert swapped.returncode == 0, swapped.stderr.decode()
    restored = schema_print(env)
    assert restored != live and any(line.startswith("trigger catat") for line in restored)
    assert state.mariadb(lab1, "SELECT COUNT(*) FROM swap_probe.akun").strip() == "50"
    state.mariadb(lab1, "DROP DATABASE swap_probe")


# --------------------------------------------------------------------------- secrets


def files_holding(env, root, needle):
    """Files under root that hold needle, other than the lab's own state and vault stand-in."""
    known = [Path(env["inventory"]), Path(env["state"].root) / lab_mod.STATE_FILE]
    hits = []
    # os.walk, not rglob: on a shared machine folders come and go under /tmp while we look.
    for folder, _dirs, names in os.walk(root, onerror=lambda _exc: None):
        for name in names:
            path = Path(folder) / name
            if any(path == k or k in path.parents for k in known):
                continue
            with contextlib.suppress(OSError):
                if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                    hits.append(path)
    return hits


def test_secrets_live_only_in_the_agents_memory_and_die_with_it(env, tmp_path):
    """An encrypted PostgreSQL stage, held open mid-stream: the age identity and the database
    password are in no file on disk and in no environment, and after a SIGKILL of the agent
    nothing of either is left anywhere in /tmp."""
    lab1 = host(env, "lab1")
    key = tmp_path / "age.key"
    subprocess.run(["age-keygen", "-o", str(key)], capture_output=True, check=True)
    identity = key.read_text()
    secret_key = next(line for line in identity.splitlines() if line.startswith("AGE-SECRET-KEY-"))
    key.unlink()
    password = env["state"].db_password
    conn = {"host": lab1.address, "port": lab1.pg_port, "user": lab_mod.DB_USER, "password": password}
    request = {
        "mode": "stage",
        "engine": "postgresql",
        "conn": {**conn, "database": "app_lab1"},
        "live": "app_lab1",
        "token": "secrettest",
        "nonce": "s1",
        "jobs": 1,
        "encrypted": True,
        "identity": identity,
    }
    agent = subprocess.Popen(
        ["/usr/bin/python3", str(AGENT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        agent.stdin.write(agentkit.request_line(request))
        agent.stdin.flush()  # and no artifact yet: age, zstd and pg_restore wait for it
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            children = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in descendants(agent.pid)}
            # The whole pipeline (age | zstd | pg_restore) is up, not only its last process.
            started = [cmd.split(b"\0")[0].rsplit(b"/", 1)[-1] for cmd in children.values()]
            if b"pg_restore" in started and b"age" in started:
                break
            time.sleep(0.2)
        else:
            pytest.fail("age | zstd | pg_restore never started: " + agent.stderr.read1().decode())
        for pid, cmdline in children.items():
            assert secret_key.encode() not in cmdline and password.encode() not in cmdline
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert password.encode() not in environ and b"PGPASSWORD=" not in environ
        age_argv = next(
            cmd for cmd in children.values() if cmd.split(b"\0")[0].rsplit(b"/", 1)[-1] == b"age"
        ).split(b"\0")
        assert age_argv[age_argv.index(b"-i") + 1].startswith(b"/dev/fd/"), "the identity is in no file"
        assert files_holding(env, "/tmp", secret_key.encode()) == []
        assert files_holding(env, "/tmp", password.encode()) == []
    finally:
        for pid in [agent.pid, *descendants(agent.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        agent.wait()
        # The stage goes whatever happened above: no later test may find it.
        discarded = subprocess.run(
            ["/usr/bin/python3", str(AGENT)],
            input=agentkit.request_line({**request, "mode": "discard"}),
            capture_output=True,
            timeout=60,
        )
    assert files_holding(env, "/tmp", secret_key.encode()) == []
    assert files_holding(env, "/tmp", password.encode()) == []
    assert discarded.returncode == 0, discarded.stderr.decode()


# --------------------------------------------------------------------------- destructive


def test_a_service_killed_mid_restore_leaves_the_live_database_and_the_next_attempt_succeeds(env):
    """The service (and every process under it) SIGKILLed while the stage fills, as in a power
    cut: the live database is as it was, the run is 'interrupted' at the service's restart,
    and the next restore succeeds."""
    state, lab1 = env["state"], host(env, "lab1")
    state.psql(
        lab1,
        "CREATE TABLE besar AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS isi "
        "FROM generate_series(1, 1500000) g; ALTER TABLE besar ADD PRIMARY KEY (id)",
        "app_lab1",
    )
    made = report_of(
        pulih(env, "backup", "--limit", "lab1", "--item", "app-pg", "--no-verify", "--json", check=0)
    )
    backup_id = made["items"][0]["backup_id"]
    count_sql = "SELECT count(*) || ':' || sum(id) FROM besar"
    original = state.psql(lab1, count_sql, "app_lab1").strip()
    state.psql(lab1, "DELETE FROM besar WHERE id % 2 = 0", "app_lab1")
    damaged = state.psql(lab1, count_sql, "app_lab1").strip()
    rid = planned_request(
        env,
        ["LAB-001:app-pg"],
        backups={"LAB-001:app-pg": backup_id},
        unverified="taken for this test just now",
    )

    client = subprocess.Popen(
        ["pulih", "restore", "--request", rid],
        env={**env["environ"], "PULIH_TOKEN": env["service"].tokens["budi"]},
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stage_sql = (
        "SELECT coalesce(max(pg_database_size(datname)), 0) FROM pg_database "
        "WHERE datname LIKE 'pulih_restore_%'"
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and int(state.psql(lab1, stage_sql).strip() or 0) < 20 << 20:
        assert client.poll() is None, "the restore ended before it could be killed"
        time.sleep(0.1)
    assert time.monotonic() < deadline, "the stage never filled"
    service = env["service"]
    victims = [service.proc.pid, *descendants(service.proc.pid)]
    for pid in victims:  # the service dies at once, with its playbook and SSH
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    service.proc.wait()
    client.wait(timeout=60)  # the client learns it lost the service
    time.sleep(3)  # the repository host's side may still be feeding the agent
    assert state.psql(lab1, count_sql, "app_lab1").strip() == damaged, "the live database changed"
    service.start()
    assert record(env, rid)["status"] == "planned", "a killed attempt recorded no outcome"
    killed = [
        json.loads(p.read_text())
        for p in (Path(env["environ"]["PULIH_STATE_DIR"]) / "runs").glob("*-restore-*/report.json")
    ]
    interrupted = [r for r in killed if r["request_id"] == rid and r["status"] == "interrupted"]
    assert len(interrupted) == 1, "the killed run is marked interrupted at the restart"
    assert "the service stopped while this run was running" in interrupted[0]["errors"]

    doc = restore(env, rid, check=0)
    assert doc["items"][0]["ok"]
    assert state.psql(lab1, count_sql, "app_lab1").strip() == original
    deadline = time.monotonic() + 60
    while leftovers(env, "lab1") and time.monotonic() < deadline:
        time.sleep(0.5)  # the killed attempt's agent removes its own stage when it notices
    assert leftovers(env, "lab1") == []
    with sqlite3.connect(Path(env["environ"]["PULIH_STATE_DIR"]) / "pulih.db") as db:
        attempts = db.execute(
            "SELECT count(*) FROM pulih_audit WHERE action = 'restore.attempt' AND request_id = ?", (rid,)
        ).fetchone()[0]
    assert attempts == 2, "the killed attempt is on the record as started"


def test_a_server_down_fails_the_attempt_and_every_retry_is_recorded(env):
    state = env["state"]
    mariadbd = next(p for p in state.procs if p.name == "lab2/mariadb")
    rid = planned_request(env, ["LAB-002:app-mariadb"], backups=env["backups"])
    assert lab_mod.stop_pid(mariadbd.pid, "mariadbd")
    doc = restore(env, rid, "--attempts", "2", check=1)
    assert doc["status"] == "failed"
    assert [a["status"] for a in doc["attempts"]] == ["failed", "failed"]
    assert "cannot connect to MariaDB" in doc["items"][0]["error"]
    assert doc["items"][0]["restore"]["tries"] == 2
    executed = [s for s in record(env, rid)["steps"] if s["step"] == "executed"]
    assert [s["note"].split(":")[0] for s in executed] == ["failed", "failed"]
    assert "attempt 2 of 2" in executed[-1]["note"]
    html = (Path(env["environ"]["PULIH_STATE_DIR"]) / "runs" / doc["run_id"] / "report.html").read_text()
    assert "cannot connect to MariaDB" in html


def test_a_partial_alternate_target_run_names_the_real_cause(env):
    """Two items to another host whose MariaDB is down (the test above stopped it): the
    PostgreSQL item is restored there, the MariaDB item fails, and the report and the
    terminal say where and why, not only that not everything was restored."""
    mariadbd = next(p for p in env["state"].procs if p.name == "lab2/mariadb")
    lab_mod.stop_pid(mariadbd.pid, "mariadbd")  # down already when the test above ran
    items = ["LAB-001:app-pg", "LAB-001:app-mariadb"]
    rid = planned_request(env, items, backups=env["backups"], target="alternate:lab2")
    run = pulih(env, "restore", "--request", rid, "--attempts", "1", "--json", check=1)
    doc = report_of(run)
    results = {i["item"]: i for i in doc["items"]}
    assert results["app-pg"]["ok"] and results["app-pg"]["restore"]["target_host"] == "lab2"
    assert pg_print(env, "lab2", "app_lab1") == env["backed_up"]["pg"]
    cause = results["app-mariadb"]["error"]
    assert cause.startswith("on the alternate target lab2: ") and "cannot connect to MariaDB" in cause
    assert "1 of 2 item(s) restored after 1 attempt(s)" in run.stderr
    assert any(
        line.startswith("failed: LAB-001:app-mariadb: on the alternate target lab2: ")
        for line in run.stderr.splitlines()
    )


def test_an_approval_revoked_between_attempts_stops_the_next_attempt(env):
    """lab2's MariaDB is down (the tests above stopped it): the first attempt fails, the
    approval is revoked while the restore waits to try again, and no further attempt runs."""
    rid = planned_request(env, ["LAB-002:app-mariadb"], backups=env["backups"])
    job = api(env, "budi", "POST", "/restores", {"request": rid, "attempts": 3}).json()

    def revoke():
        api(env, "sri", "POST", f"/requests/{rid}/revoke", {"reason": "server diganti"}).raise_for_status()

    end = follow_job(env, job["id"], when=lambda e: "attempt 1 of 3 failed" in e.get("text", ""), then=revoke)
    report = end["report"]
    assert end["job"]["exit_code"] == 3 and report["status"] == "refused"
    assert [a["status"] for a in report["attempts"]] == ["failed"]
    assert any("refused before attempt 2 of 3" in e and "revoked by sri" in e for e in report["errors"])
    steps = [s["step"] for s in record(env, rid)["steps"]]
    assert steps[-2:] == ["executed", "revoked"]


def test_a_register_edited_between_attempts_stops_the_next_attempt(env):
    """The same failing first attempt; then the service's register moves the item to another
    port: the next attempt would go where the job holds no lock and the approval never
    looked, so it does not run."""
    rid = planned_request(env, ["LAB-002:app-mariadb"], backups=env["backups"])
    path = env["inventory"] / lab_mod.REGISTER_FILE
    before = path.read_text()
    job = api(env, "budi", "POST", "/restores", {"request": rid, "attempts": 3}).json()
    moved = host(env, "lab2").mariadb_port + 1

    try:
        end = follow_job(
            env,
            job["id"],
            when=lambda e: "attempt 1 of 3 failed" in e.get("text", ""),
            then=lambda: set_item(env, "LAB-002", "app-mariadb", port=moved),
        )
    finally:
        path.write_text(before)
    report = end["report"]
    assert end["job"]["exit_code"] == 3 and report["status"] == "refused"
    assert [a["status"] for a in report["attempts"]] == ["failed"]
    assert any(
        "refused before attempt 2" in e and "register changed while the job ran" in e and f":{moved}/" in e
        for e in report["errors"]
    ), report["errors"]


def test_the_database_password_never_leaks(env):
    password = env["state"].db_password
    state_dir = Path(env["environ"]["PULIH_STATE_DIR"])
    leaks = [
        str(p) for p in state_dir.rglob("*") if p.is_file() and password in p.read_text(errors="replace")
    ]
    assert leaks == []
    assert not any(password in output for output in env["outputs"])
    assert len(list(state_dir.glob("runs/*/attempt-*/**/job_events/*.json"))) > 100


def test_no_task_of_a_restore_runs_on_the_repository_host_and_secrets_go_only_to_the_servers(env):
    """This module's restores (alternate hosts, retries, a service killed, a server down)."""
    no_task_on_the_repository_host(env, {"list", "checksums", "grant", "revoke-grant", "protect"})


# --------------------------------------------------------------------------- pulih's own recovery


def age_key(path: Path) -> str:
    subprocess.run(["age-keygen", "-o", str(path)], capture_output=True, check=True)
    return subprocess.run(
        ["age-keygen", "-y", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_the_service_comes_back_from_its_export_on_a_fresh_state_folder(env):
    """Last: it moves the module's service. README "Disaster recovery of pulih", step by step:
    two officers' keys and an anchor outside the state folder in the config; the state exported
    while the service runs; the service stopped and its folder destroyed; the export opened with
    both identities onto a fresh folder, which checks clean; the service started there; the audit
    chain verifies against the anchor; and a gated restore runs, filed to restored."""
    service, base, lab1 = env["service"], env["base"], host(env, "lab1")
    anchor = base / "anchor-host" / "audit.jsonl"  # another disk or host in an office
    anchor.parent.mkdir()
    officers = [{"name": name, "recipient": age_key(base / f"{name}.key")} for name in ("sri", "budi")]
    service.stop()
    with (service.state / "config.yml").open("a") as config:
        config.write(yaml.safe_dump({"anchors": [{"file": str(anchor)}], "recovery_officers": officers}))
    service.start()
    pending = planned_request(env, ["LAB-001:app-pg"], backups=env["backups"])  # its steps anchored
    export = base / "offsite" / "pulih-state.age"
    export.parent.mkdir()
    pulih(env, "serve", "--state", str(service.state), "--export-state", str(export), actor="root", check=0)
    ssh_key = (service.state / "ssh" / "id_ed25519").read_bytes()

    service.stop()
    shutil.rmtree(service.state)  # the control node is gone
    fresh = base / "new-control-node" / "state"
    identities = [f"--identity={base / name}.key" for name in ("budi", "sri")]
    imported = pulih(env, "serve", "--state", str(fresh), "--import-state", str(export), "--user", "root",
                     *identities, "--json", actor="root", check=0)  # fmt: skip
    assert json.loads(imported.stdout)["problems"] == []
    pulih(env, "serve", "--state", str(fresh), "--check", actor="root", check=0)
    assert (fresh / "ssh" / "id_ed25519").read_bytes() == ssh_key, "the key the servers accept came back"
    service.state = fresh
    env["environ"].update(service.environ())  # the clients reach the new socket
    service.start()

    verified = json.loads(pulih(env, "audit", "verify", "--json", actor="root", check=0).stdout)
    assert verified["status"] == "intact" and any(str(anchor) in a for a in verified["anchors"]), verified
    assert record(env, pending)["status"] == "planned", "the record came back with its requests"
    # Damage to undo (and the large table a test above left, which would only slow the pre-restore backup).
    env["state"].psql(lab1, "DROP TABLE IF EXISTS besar; DELETE FROM pegawai WHERE id > 50", "app_lab1")
    rid = planned_request(env, ["LAB-001:app-pg"], backups=env["backups"])
    assert restore(env, rid, check=0)["status"] == "succeeded"
    assert pg_print(env, "lab1", "app_lab1") == env["backed_up"]["pg"]
    assert (
        json.loads(pulih(env, "audit", "verify", "--json", actor="root", check=0).stdout)["status"]
        == "intact"
    )

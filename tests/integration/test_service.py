"""pulih serve, tried as its users would: real OS users on its Unix socket (the kernel says
who they are), real tokens over HTTP. Every attempt to be someone else, or to do more than
one's roles and token allow, is refused with a clear message and exit 3, and changes
nothing. Needs root (it creates OS users and the service's account)."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import yaml

from pulih.store import Store, tokens_table
from tests.conftest import PROJECT
from tests.integration import test_record as record_tests
from tests.integration.client import connects, free_port, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates OS users and runs the service's account")

PULIH = str(Path(sys.executable).parent / "pulih")
USERS = {"pt-ani": True, "pt-sri": True, "pt-noacct": True, "pt-stranger": False}  # in group pulih?


def _listens(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


@pytest.fixture(scope="module")
def service():
    created = []
    subprocess.run([PULIH, "--help"], capture_output=True, check=True)
    state = Path(tempfile.mkdtemp(prefix="pulih-svc-", dir="/tmp"))
    state.rmdir()  # --init makes it
    procs: list[subprocess.Popen] = []
    anchors: Path | None = None
    try:
        run = subprocess.run(
            [
                PULIH,
                "serve",
                "--init",
                "--state",
                str(state),
                "--admin",
                "root",
                "--register",
                str(PROJECT / "inventories" / "example"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        for user, in_group in USERS.items():
            try:
                pwd.getpwnam(user)
            except KeyError:
                groups = ["--groups", "pulih"] if in_group else []
                subprocess.run(
                    ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", *groups, user], check=True
                )
                created.append(user)
        # The audit chain's anchor: a file outside the state folder that only the service appends to.
        anchors = Path(tempfile.mkdtemp(prefix="pulih-anchor-", dir="/tmp"))
        os.chown(anchors, state.stat().st_uid, state.stat().st_gid)
        with (state / "config.yml").open("a") as config:
            config.write(f"anchors:\n  - file: {anchors / 'audit.jsonl'}\n")
        port = free_port()
        # One service: its Unix socket (always open) and an HTTP port beside it.
        procs.append(
            subprocess.Popen(
                [PULIH, "serve", "--state", str(state), "--listen", f"127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                cwd="/",
            )
        )
        wait_until("the service's socket", lambda: connects(state / "pulih.sock"))
        wait_until("the service's HTTP port", lambda: _listens(port))
        env = {"state": state, "socket": f"unix:{state / 'pulih.sock'}", "http": f"http://127.0.0.1:{port}"}
        env["anchor"] = anchors / "audit.jsonl"
        admin(
            env,
            "admin",
            "user",
            "add",
            "ani",
            "--role",
            "requester",
            "--skpd",
            "bkpsdm",
            "--unix-user",
            "pt-ani",
            check=0,
        )
        admin(
            env,
            "admin",
            "user",
            "add",
            "sri",
            "--role",
            "receiver",
            "--role",
            "approver",
            "--unix-user",
            "pt-sri",
            check=0,
        )
        admin(env, "admin", "user", "add", "budi", "--role", "operator", check=0)
        admin(env, "admin", "user", "add", "dina", "--role", "requester", "--skpd", "dinkes", check=0)
        grants = [("ani", "request"), ("ani", "approve"), ("sri", "approve"), ("sri", "read")]
        grants += [("dina", "request"), ("dina", "read")]
        grants += [("budi", "restore"), ("budi", "backup")]
        env["tokens"] = {
            (name, scope): admin(
                env, "admin", "token", "create", name, "--scope", scope, check=0
            ).stdout.strip()
            for name, scope in grants
        }
        yield env
    finally:
        for proc in procs:  # by PID, never by name
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for user in created:
            subprocess.run(["userdel", user], check=False)
        shutil.rmtree(state, ignore_errors=True)
        if anchors is not None:
            shutil.rmtree(anchors, ignore_errors=True)


def pulih_as(
    env,
    user: str | None,
    *args: str,
    server: str = "socket",
    token: str | None = None,
    extra_env: dict[str, str] | None = None,
    check: int | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as OS user `user` (None: root), through runuser, with a clean
    environment plus `extra_env` (what a user could set to pass for someone else)."""
    environ = {"PATH": "/usr/bin:/bin", "PULIH_SERVER": env[server], "LANG": "C.UTF-8", **(extra_env or {})}
    if token:
        environ["PULIH_TOKEN"] = token
    prefix = ["runuser", "-u", user, "--"] if user else []
    run = subprocess.run(
        [*prefix, "env", "-i", *(f"{k}={v}" for k, v in environ.items()), PULIH, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        check=False,
        input=stdin,
    )
    assert "Traceback" not in run.stderr, run.stderr
    if check is not None:
        assert run.returncode == check, run.stdout + run.stderr
    return run


def admin(env, *args: str, check: int | None = None, **kwargs) -> subprocess.CompletedProcess[str]:
    return pulih_as(env, None, *args, check=check, **kwargs)


def whoami(env, user: str | None, **kwargs) -> dict:
    return json.loads(pulih_as(env, user, "whoami", "--json", check=0, **kwargs).stdout)


def audit_actions(env) -> list[str]:
    store = Store(f"sqlite:///{env['state'] / 'pulih.db'}", upgrade=False)
    try:
        return [entry["action"] for entry in store.audit_entries()]
    finally:
        store.engine.dispose()


SPOOFS = [
    {"USER": "sri", "LOGNAME": "sri"},
    {"PULIH_ACTOR": "sri"},
    {"USER": "root", "LOGNAME": "root", "PULIH_ACTOR": "root", "SUDO_USER": "root"},
]


@pytest.mark.parametrize("claims", SPOOFS, ids=["USER", "PULIH_ACTOR", "root"])
def test_the_kernel_says_who_calls_not_the_environment(service, claims):
    me = whoami(service, "pt-ani", extra_env=claims)
    assert (me["name"], me["via"], me["roles"]) == ("ani", "socket", ["requester"])


def test_a_client_side_config_naming_roles_changes_nothing(service, tmp_path):
    config = Path(tempfile.mkdtemp(prefix="pulih-cfg-", dir="/tmp")) / "config.yml"
    config.write_text("allow_actor_override: true\nactors:\n  ani: [admin, approver]\n")
    config.parent.chmod(0o755)
    config.chmod(0o644)
    try:
        claims = {"PULIH_CONFIG": str(config), "XDG_CONFIG_HOME": str(config.parent), "PULIH_ACTOR": "ani"}
        assert whoami(service, "pt-ani", extra_env=claims)["roles"] == ["requester"]
        run = pulih_as(service, "pt-ani", "admin", "user", "list", extra_env=claims, check=3)
        assert "ani is not admin (roles: requester)" in run.stderr
    finally:
        shutil.rmtree(config.parent)


def test_an_os_user_without_an_account_is_refused_and_audited(service):
    run = pulih_as(service, "pt-noacct", "whoami", "--json", check=3)
    assert "OS user pt-noacct has no pulih account: ask an admin" in json.loads(run.stdout)["message"]
    assert audit_actions(service)[-1] == "auth_failed"


def test_an_os_user_outside_the_services_group_cannot_reach_it(service):
    run = pulih_as(service, "pt-stranger", "whoami", check=5)
    assert "cannot reach pulih serve" in run.stderr and "Permission denied" in run.stderr


def test_roles_are_the_services_and_only_an_admin_changes_them(service):
    run = pulih_as(
        service,
        "pt-ani",
        "admin",
        "user",
        "add",
        "eve",
        "--role",
        "admin",
        "--unix-user",
        "pt-noacct",
        check=3,
    )
    assert "ani is not admin" in run.stderr
    users = json.loads(admin(service, "admin", "user", "list", "--json", check=0).stdout)["users"]
    assert "eve" not in {u["name"] for u in users}, "nothing changed"
    assert {u["name"]: u["roles"] for u in users}["ani"] == ["requester"]


def test_the_last_admin_cannot_be_disabled(service):
    run = admin(service, "admin", "user", "disable", "root", check=3)
    assert "root is the last admin: add another admin first" in run.stderr
    assert whoami(service, None)["disabled"] is False


def test_tokens_act_as_their_account_within_their_scopes(service):
    token = admin(
        service, "admin", "token", "create", "ani", "--scope", "read", "--expires-in", "1h", check=0
    ).stdout.strip()
    assert token.startswith("pulih_")
    # Over HTTP a token is the only way in, and it acts as ani, whoever holds it.
    me = whoami(service, None, server="http", token=token, extra_env={"USER": "root", "PULIH_ACTOR": "root"})
    assert (me["name"], me["via"], me["scopes"]) == ("ani", "token", ["read"])
    # On the socket, root presenting ani's token is ani with the token's scopes.
    assert whoami(service, None, token=token)["name"] == "ani"
    run = pulih_as(service, None, "admin", "user", "list", server="http", token=token, check=3)
    assert "this token may read; 'admin' needs a token with that scope" in run.stderr


def test_no_token_over_http_is_refused(service):
    run = pulih_as(service, None, "whoami", "--json", server="http", check=3)
    assert "log in with a token (PULIH_TOKEN)" in json.loads(run.stdout)["message"]


def test_a_revoked_an_expired_and_a_forged_token_are_refused(service):
    created = json.loads(
        admin(service, "admin", "token", "create", "sri", "--scope", "approve", "--json", check=0).stdout
    )
    admin(service, "admin", "token", "revoke", created["id"], check=0)
    run = pulih_as(service, None, "whoami", server="http", token=created["token"], check=3)
    assert f"token {created['id']} was revoked at " in run.stderr
    expiring = json.loads(
        admin(
            service,
            "admin",
            "token",
            "create",
            "sri",
            "--scope",
            "read",
            "--expires-in",
            "1m",
            "--json",
            check=0,
        ).stdout
    )
    # A minute is long for a test: the token's expiry is moved into the past in the store.
    store = Store(f"sqlite:///{service['state'] / 'pulih.db'}", upgrade=False)
    with store.transaction() as conn:
        conn.execute(
            sa.update(tokens_table)
            .where(tokens_table.c.id == expiring["id"])
            .values(expires_at="2026-01-01T00:00:00Z")
        )
    store.engine.dispose()
    run = pulih_as(service, None, "whoami", server="http", token=expiring["token"], check=3)
    assert f"token {expiring['id']} expired at 2026-01-01T00:00:00Z" in run.stderr
    forged = expiring["token"][:-4] + "AAAA"
    run = pulih_as(service, None, "whoami", server="http", token=forged, check=3)
    assert "the token is not one this service issued" in run.stderr
    assert audit_actions(service)[-5:] == [
        "token_revoked",
        "auth_failed",
        "token_created",
        "auth_failed",
        "auth_failed",
    ]


def test_a_service_that_cannot_be_reached_is_one_line_and_exit_5(service):
    run = pulih_as({**service, "socket": "unix:/nonexistent/pulih.sock"}, None, "whoami", "--json", check=5)
    doc = json.loads(run.stdout)
    assert (
        doc["exit_code"] == 5 and "cannot reach pulih serve at unix:/nonexistent/pulih.sock" in doc["message"]
    )
    assert len(run.stderr.strip().splitlines()) == 1


def test_the_store_and_the_key_are_the_services_alone(service):
    pulih_user = pwd.getpwnam("pulih")
    private = ("pulih.db", "config.yml", "ssh/id_ed25519")  # config: a store URL may hold a password
    for path, mode in ((service["state"] / name, 0o600) for name in private):
        info = path.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (pulih_user.pw_uid, mode), path
    sock = (service["state"] / "pulih.sock").stat()
    assert stat.S_IMODE(sock.st_mode) == 0o660 and sock.st_gid == grp.getgrnam("pulih").gr_gid
    admin(service, "serve", "--state", str(service["state"]), "--check", check=0)
    (service["state"] / "pulih.db").chmod(0o644)
    try:
        run = admin(service, "serve", "--state", str(service["state"]), "--check", check=1)
        assert "pulih.db has mode 0644; it must be at most 0600" in run.stderr
    finally:
        (service["state"] / "pulih.db").chmod(0o600)


# --------------------------------------------------------------------------- the record, through the service

SIMPEG = {"asset_id": "DC-SRV-2023-001", "item": "simpeg"}  # a bkpsdm server's item in the example register


def api(
    env, method: str, path: str, token: tuple[str, str] | None, body: dict | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {env['tokens'][token]}"} if token else {}
    return httpx.request(method, env["http"] + "/v1" + path, json=body, headers=headers, timeout=30)


def new_request(**changes) -> dict:
    return {"skpd": "bkpsdm", "contact": "ani@bkpsdm.go.id", "scope": [SIMPEG], "reason": "error", **changes}


def refused(response: httpx.Response, status: int, code: int, says: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and says in error["message"], error


def count_requests(env) -> int:
    return len(api(env, "GET", "/requests", ("sri", "read")).json()["requests"])


def test_the_record_is_written_as_the_kernel_says_not_as_the_body_or_environment_says(service):
    """pt-ani, on the socket with USER=sri and a body naming sri as requester, files as ani."""
    body = json.dumps({**new_request(), "requester": "sri"})
    run = subprocess.run(
        [
            "runuser",
            "-u",
            "pt-ani",
            "--",
            "env",
            "USER=sri",
            "LOGNAME=sri",
            "PULIH_ACTOR=sri",
            "curl",
            "-s",
            "--unix-socket",
            str(service["state"] / "pulih.sock"),
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            "http://pulih/v1/requests",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd="/",
    )
    filed = json.loads(run.stdout)
    assert filed["requester"] == "ani" and filed["steps"][0]["actor"] == "ani", filed


def test_separation_of_duties_is_the_services(service):
    before = count_requests(service)
    # A requester files only for their SKPD and its registered items.
    refused(
        api(service, "POST", "/requests", ("ani", "request"), new_request(skpd="dinkes")),
        403,
        3,
        "files for SKPD bkpsdm, not 'dinkes'",
    )
    other = new_request(scope=[{"asset_id": "DC-SRV-2023-002", "item": "simpus"}])
    refused(
        api(service, "POST", "/requests", ("ani", "request"), other),
        403,
        3,
        "belongs to SKPD dinkes, not bkpsdm",
    )
    unknown = new_request(scope=[{"asset_id": "DC-SRV-2023-001", "item": "nothing"}])
    refused(
        api(service, "POST", "/requests", ("ani", "request"), unknown),
        400,
        2,
        "is not a registered data item",
    )
    assert count_requests(service) == before, "no refusal left a request behind"
    rid = api(service, "POST", "/requests", ("ani", "request"), new_request()).json()["id"]
    # The requester's own token cannot approve: not with its scope, nor with a token that has it.
    refused(
        api(service, "POST", f"/requests/{rid}/receive", ("ani", "request"), {}),
        403,
        3,
        "this step needs 'approve'",
    )
    refused(
        api(service, "POST", f"/requests/{rid}/receive", ("ani", "approve"), {}),
        403,
        3,
        "needs the role 'receiver'",
    )
    assert api(service, "POST", f"/requests/{rid}/receive", ("sri", "approve"), {}).status_code == 200
    refused(
        api(service, "POST", f"/requests/{rid}/approve", ("ani", "approve"), {}),
        403,
        3,
        "needs the role 'approver'",
    )
    # A nightly-backup token cannot do an operator's step.
    approved = api(service, "POST", f"/requests/{rid}/approve", ("sri", "approve"), {"valid_hours": 24})
    assert approved.json()["status"] == "approved"
    refused(
        api(
            service,
            "POST",
            f"/requests/{rid}/assess",
            ("budi", "backup"),
            {"data_exists": True, "damage": "error"},
        ),
        403,
        3,
        "this step needs 'restore'",
    )
    assessed = api(
        service,
        "POST",
        f"/requests/{rid}/assess",
        ("budi", "restore"),
        {"data_exists": True, "damage": "error"},
    )
    assert assessed.json()["status"] == "assessed"
    assert [(s["step"], s["actor"]) for s in assessed.json()["steps"]] == [
        ("filed", "ani"),
        ("received", "sri"),
        ("approved", "sri"),
        ("assessed", "budi"),
    ]


def test_an_approve_and_a_reject_racing_through_the_service_exactly_one_wins(service):
    outcomes = []
    for _ in range(50):
        rid = api(service, "POST", "/requests", ("ani", "request"), new_request()).json()["id"]
        api(service, "POST", f"/requests/{rid}/receive", ("sri", "approve"), {})
        barrier = threading.Barrier(2)
        answers: dict[str, int] = {}

        def step(name, body, rid=rid, barrier=barrier, answers=answers):
            barrier.wait()
            answers[name] = api(
                service, "POST", f"/requests/{rid}/{name}", ("sri", "approve"), body
            ).status_code

        threads = [
            threading.Thread(target=step, args=("approve", {})),
            threading.Thread(target=step, args=("reject", {"reason": "not needed"})),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(answers.values()) == [200, 403], answers
        final = api(service, "GET", f"/requests/{rid}", ("sri", "read")).json()
        assert final["status"] == ("approved" if answers["approve"] == 200 else "rejected")
        outcomes.append(final["status"])
    assert len(outcomes) == 50


def test_naming_the_actor_exists_only_in_demo_mode_on_a_demo_store(service):
    # The real service ignores a demo header: pt-ani stays ani.
    me = whoami(service, "pt-ani", extra_env={"PULIH_DEMO_ACTOR": "sri"})
    assert (me["name"], me["demo"]) == ("ani", False)
    # A real store is never served in demo mode, and a demo store never by a normal service.
    run = admin(service, "serve", "--state", str(service["state"]), "--demo-actors", check=2)
    assert "--demo-actors opens only a demo store" in run.stderr
    demo = Path(tempfile.mkdtemp(prefix="pulih-demo-svc-", dir="/tmp"))
    demo.rmdir()
    proc = None
    try:
        admin(
            service,
            "serve",
            "--init",
            "--state",
            str(demo),
            "--admin",
            "root",
            "--demo-actors",
            "--register",
            str(PROJECT / "inventories" / "example"),
            check=0,
        )
        run = admin(service, "serve", "--state", str(demo), check=2)
        assert "holds a demo store" in run.stderr and "a normal service never opens it" in run.stderr
        run = admin(
            service, "serve", "--state", str(demo), "--demo-actors", "--listen", "127.0.0.1:1", check=2
        )
        assert "--demo-actors listens only on a Unix socket" in run.stderr
        proc = subprocess.Popen(
            [PULIH, "serve", "--state", str(demo), "--demo-actors"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd="/",
        )
        wait_until("the demo service", lambda: connects(demo / "pulih.sock"))
        demo_env = {**service, "socket": f"unix:{demo / 'pulih.sock'}"}
        admin(demo_env, "admin", "user", "add", "sri", "--role", "approver", check=0)
        me = whoami(demo_env, None, extra_env={"PULIH_DEMO_ACTOR": "sri"})
        assert (me["name"], me["via"], me["demo"]) == ("sri", "demo", True)
        # Every form and report of a demo store says demo, in both languages.
        admin(demo_env, "admin", "user", "add", "ani", "--role", "requester", "--skpd", "bkpsdm", check=0)
        filed = pulih_as(
            demo_env,
            None,
            *("request", "new", "--skpd", "bkpsdm", "--contact", "a", "--reason", "error"),
            *("--item", "DC-SRV-2023-001:simpeg", "--json"),
            extra_env={"PULIH_DEMO_ACTOR": "ani"},
            check=0,
        )
        rid = json.loads(filed.stdout)["id"]
        for form, lang, says in (("ppd", "en", "DEMO: a demonstration"), ("pd", "id", "DEMO: formulir")):
            html = admin(demo_env, "request", "form", rid, "--form", form, "--lang", lang, check=0).stdout
            assert says in html.split("<h1>")[0], html[:600]
        audit = json.loads(admin(demo_env, "audit", "verify", "--json", check=0).stdout)
        shown = json.loads(admin(demo_env, "report", "show", audit["run_id"], "--json", check=0).stdout)
        assert shown["demo"] is True
        assert shown["audit_head"]["seq"] >= 1 and len(shown["audit_head"]["hash"]) == 64
        html = admin(demo_env, "report", "show", audit["run_id"], "--format", "html", check=0).stdout
        assert "DEMO: a demonstration" in html
        # And a real store's do not.
        real = json.loads(admin(service, "audit", "verify", "--json", check=0).stdout)["run_id"]
        assert json.loads(admin(service, "report", "show", real, "--json", check=0).stdout)["demo"] is False
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=20)
        shutil.rmtree(demo, ignore_errors=True)


def test_only_an_admin_sets_the_policy_and_only_to_pairs_of_roles(service):
    run = pulih_as(service, "pt-ani", "admin", "policy", "set", "--distinct", "receiver,approver", check=3)
    assert "ani is not admin" in run.stderr
    run = admin(service, "admin", "policy", "set", "--distinct", "receiver,boss", check=2)
    assert "a pair of two different roles" in run.stderr
    admin(service, "admin", "policy", "set", "--distinct", "approver,receiver", check=0)
    shown = json.loads(admin(service, "admin", "policy", "show", "--json", check=0).stdout)
    assert shown == {"distinct": [["receiver", "approver"]], "signed_approvals": "none"}
    admin(service, "admin", "policy", "set", check=0)  # back to the SOP's minimum
    assert audit_actions(service)[-2:] == ["policy_set", "policy_set"]


def test_another_skpds_request_is_answered_as_one_that_does_not_exist(service):
    rid = api(service, "POST", "/requests", ("ani", "request"), new_request()).json()["id"]
    nowhere = "PPD-2099-9999"
    for path, method, token, body in (
        ("", "GET", ("dina", "read"), None),
        ("/confirm", "POST", ("dina", "request"), {}),
        ("/not-restored", "POST", ("dina", "request"), {"note": "x"}),
    ):
        theirs = api(service, method, f"/requests/{rid}{path}", token, body)
        missing = api(service, method, f"/requests/{nowhere}{path}", token, body)
        assert (theirs.status_code, missing.status_code) == (403, 403)
        assert theirs.json()["error"]["message"].replace(rid, nowhere) == missing.json()["error"]["message"]
    listed = api(service, "GET", "/requests", ("dina", "read")).json()["requests"]
    assert rid not in {r["id"] for r in listed}


def test_each_step_says_on_the_audit_log_how_its_actor_was_proved(service):
    rid = api(service, "POST", "/requests", ("ani", "request"), new_request()).json()["id"]
    api(service, "POST", f"/requests/{rid}/receive", ("sri", "approve"), {})
    store = Store(f"sqlite:///{service['state'] / 'pulih.db'}", upgrade=False)
    try:
        entries = [e for e in store.audit_entries() if e["request_id"] == rid]
    finally:
        store.engine.dispose()
    payloads = [(e["action"], e["actor"], json.loads(e["payload"])) for e in entries]
    assert [(a, who, p["via"]) for a, who, p in payloads] == [
        ("request.filed", "ani", "token"),
        ("request.received", "sri", "token"),
    ]
    token_ids = {p["token"] for _, _, p in payloads}
    assert len(token_ids) == 2 and all(t for t in token_ids), "each names the token it was done with"


def test_a_password_login_gives_a_token_of_the_accounts_own_scopes(service):
    password = "kata-sandi-yang-panjang-1"
    admin(
        service,
        "admin",
        "user",
        "add",
        "lina",
        "--role",
        "approver",
        "--password-stdin",
        stdin=password + "\n",
        check=0,
    )
    login = pulih_as(
        service,
        None,
        "login",
        "lina",
        "--password-stdin",
        "--json",
        server="http",
        stdin=password + "\n",
        check=0,
    )
    doc = json.loads(login.stdout)
    assert doc["token"].startswith("pulih_") and doc["scopes"] == ["read", "approve"]
    me = whoami(service, None, server="http", token=doc["token"])
    assert (me["name"], me["via"], me["token"]) == ("lina", "token", doc["id"])
    for name, wrong in (("lina", "salah-sandi-salah-sandi"), ("nobody", password)):
        refused = pulih_as(
            service, None, "login", name, "--password-stdin", server="http", stdin=wrong + "\n", check=3
        )
        assert "wrong account name, password or code" in refused.stderr
    assert audit_actions(service)[-4:] == ["token_created", "login", "login_failed", "login_failed"]


def test_an_anchor_beside_the_service_shows_a_chain_rewritten_in_its_store(service):
    """Last: it leaves the service's chain rewritten. The chain alone would say intact."""
    assert json.loads(admin(service, "audit", "verify", "--json", check=0).stdout)["status"] == "intact"
    store = Store(f"sqlite:///{service['state'] / 'pulih.db'}", upgrade=False)
    try:
        heads = [json.loads(line) for line in service["anchor"].read_text().splitlines()]
        entries = store.audit_entries()
        assert heads[-1]["seq"] == entries[-1]["seq"] and heads[-1]["hash"] == entries[-1]["hash"]
        pinned = yaml.safe_load((service["state"] / "config.yml").read_text())["audit_key"]
        assert {h["key"] for h in heads} == {pinned} and all("SSH SIGNATURE" in h["signature"] for h in heads)
        record_tests.rechain(store, 3, record_tests.edit_payload(3))
        chain_alone = Store(store.url, upgrade=False)
        assert chain_alone.verify_audit() == []
        chain_alone.engine.dispose()
    finally:
        store.engine.dispose()
    doc = json.loads(admin(service, "audit", "verify", "--json", check=1).stdout)
    assert doc["status"] == "tampered" and doc["problems"][0]["seq"] == 3, doc["problems"]
    assert (
        "rewritten" in doc["problems"][0]["message"]
        and str(service["anchor"]) in doc["problems"][0]["message"]
    )


def test_an_approval_signed_through_the_approvers_ssh_agent_verifies_offline(service, tmp_path):
    """The admin registers sri's key and asks for signed approvals in place; sri's unsigned
    approval is refused; `pulih request approve --sign` signs through her ssh-agent (the
    private key is no longer on disk), and the exported statement, signature and allowed
    signers verify with ssh-keygen alone. Form PPD names the key."""
    key = tmp_path / "sri"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sri", "-f", str(key)], check=True)
    fingerprint = admin(
        service, "admin", "user", "key", "add", "sri", "--key-file", f"{key}.pub", "--json", check=0
    )
    fingerprint = json.loads(fingerprint.stdout)["fingerprint"]
    admin(service, "admin", "policy", "set", "--signed-approvals", "in_place", check=0)
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(tmp_path / "agent.sock")], stdout=subprocess.DEVNULL
    )
    try:
        wait_until("the ssh-agent's socket", lambda: connects(tmp_path / "agent.sock"))
        agent_env = {"SSH_AUTH_SOCK": str(tmp_path / "agent.sock")}
        subprocess.run(["ssh-add", "-q", str(key)], env={**os.environ, **agent_env}, check=True)
        key.unlink()  # from now on only the agent holds it
        rid = api(service, "POST", "/requests", ("ani", "request"), new_request()).json()["id"]
        api(service, "POST", f"/requests/{rid}/receive", ("sri", "approve"), {})
        sri = {"server": "http", "token": service["tokens"][("sri", "approve")]}
        unsigned = pulih_as(service, None, "request", "approve", rid, "--json", **sri, check=3)
        assert "policy wants a signed approval for restores in place" in unsigned.stdout
        signed = pulih_as(
            service, None, "request", "approve", rid, "--sign", "--key", f"{key}.pub", "--json",
            extra_env=agent_env, **sri, check=0,
        )  # fmt: skip
        assert json.loads(signed.stdout)["approvals"][-1]["key_fingerprint"] == fingerprint
        exported = tmp_path / "approval"
        admin(service, "request", "export-approval", rid, "--dir", str(exported), check=0)
        admin(service, "audit", "export-signers", "--output", str(tmp_path / "allowed_signers"), check=0)
        offline = subprocess.run(
            ["ssh-keygen", "-Y", "verify", "-f", str(tmp_path / "allowed_signers"), "-I", "sri",
             "-n", "pulih-approval", "-s", str(exported / "approval-1.json.sig")],
            input=(exported / "approval-1.json").read_bytes(), capture_output=True, check=False,
        )  # fmt: skip
        assert offline.returncode == 0 and fingerprint in offline.stdout.decode(), offline.stderr
        form = admin(service, "request", "form", rid, "--form", "ppd", check=0).stdout
        assert fingerprint in form
        signers = (tmp_path / "allowed_signers").read_text()
        assert 'sri namespaces="pulih-approval",valid-after=' in signers and "pulih-audit" in signers
    finally:
        agent.terminate()  # by PID
        agent.wait(timeout=20)
        admin(service, "admin", "policy", "set", "--signed-approvals", "none", check=0)


def test_the_audit_key_is_rotated_with_the_service_stopped_and_the_chain_still_verifies(tmp_path):
    """`pulih serve --rotate-audit-key` refuses while the service runs; stopped, it puts the
    rotation on the chain signed by the old key, pins the new key in the config, and the state
    checks clean with every old anchor line still verifying."""
    state = tmp_path / "state"
    made = subprocess.run(
        [PULIH, "serve", "--init", "--state", str(state), "--admin", "root", "--user", "root",
         "--register", str(PROJECT / "inventories" / "example")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    with (state / "config.yml").open("a") as config:
        config.write(f"anchors:\n  - file: {tmp_path / 'anchor.jsonl'}\n")
    proc = subprocess.Popen(
        [PULIH, "serve", "--state", str(state)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_until("the service's socket", lambda: connects(state / "pulih.sock"))
        env = {"socket": f"unix:{state / 'pulih.sock'}"}
        admin(env, "admin", "user", "add", "sri", "--role", "approver", check=0)
        running = admin(env, "serve", "--state", str(state), "--rotate-audit-key", check=2)
        assert "the service is running" in running.stderr
    finally:
        proc.terminate()  # by PID
        proc.wait(timeout=20)
    before = yaml.safe_load((state / "config.yml").read_text())["audit_key"]
    rotated = json.loads(
        admin({"socket": ""}, "serve", "--state", str(state), "--rotate-audit-key", "--json", check=0).stdout
    )
    assert rotated["old"] == before and rotated["new"] != before
    assert yaml.safe_load((state / "config.yml").read_text())["audit_key"] == rotated["new"]
    admin({"socket": ""}, "serve", "--state", str(state), "--check", check=0)
    from pulih.service import state as states

    store = states.load(state).open_store()
    try:
        assert store.verify_audit() == []
        assert [e["action"] for e in store.audit_entries()][-1] == "audit_key.rotated"
    finally:
        store.engine.dispose()

"""`pulih serve`, `pulih whoami` and `pulih admin ...`: parse, call the service, print."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from pulih.cli.common import JsonOpt, call_service, err, fail, out, shown
from pulih.cli.jobs import jobs_app
from pulih.cli.outbox import outbox
from pulih.exitcodes import Exit

admin_app = typer.Typer(
    help="Accounts, roles and tokens (admins only, through the service).", no_args_is_help=True
)
user_app = typer.Typer(help="Accounts: who may act, in which roles and SKPDs.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens for scripts and other machines.", no_args_is_help=True)
admin_app.add_typer(user_app, name="user")
admin_app.add_typer(token_app, name="token")
policy_app = typer.Typer(help="The office's separation of duties.", no_args_is_help=True)
admin_app.add_typer(policy_app, name="policy")
admin_app.command("outbox")(outbox)

StateOpt = Annotated[Path, typer.Option("--state", help="The service's state folder.")]


def _call(method: str, path: str, body: dict[str, Any] | None, as_json: bool) -> Any:
    return call_service(method, path, body, as_json=as_json)


def _print(doc: Any, as_json: bool, line: str) -> None:
    if as_json:
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        err.print(escape(shown(line)), soft_wrap=True)


def serve(
    state: StateOpt,
    init: Annotated[bool, typer.Option("--init", help="Make the state folder (once, as root).")] = False,
    admin: Annotated[
        str | None, typer.Option(help="With --init: the OS user who becomes the first admin.")
    ] = None,
    register: Annotated[
        Path | None, typer.Option(help="With --init: the asset register the service uses.")
    ] = None,
    content: Annotated[
        Path | None,
        typer.Option(
            help="With --init or --import-state: the project folder (playbooks/, roles/); "
            "default $PULIH_HOME."
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            help="With --init: a PostgreSQL URL instead of DIR/pulih.db; with --import-state: the empty "
            "PostgreSQL database a PostgreSQL store is restored into."
        ),
    ] = None,
    user: Annotated[
        str,
        typer.Option(
            help="With --init or --import-state: the OS account the service runs as (a test lab's is root)."
        ),
    ] = "pulih",
    demo_actors: Annotated[
        bool,
        typer.Option(
            "--demo-actors",
            help="A demo store (with --init), or serve one: scripts may name the actor (PULIH_DEMO_ACTOR).",
        ),
    ] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Check the state folder, store, keys and modes.")
    ] = False,
    rotate_audit_key: Annotated[
        bool,
        typer.Option(
            "--rotate-audit-key",
            help="Replace the audit key (the service stopped): the rotation goes on the chain, signed by "
            "the old key.",
        ),
    ] = False,
    export_state: Annotated[
        Path | None,
        typer.Option(
            "--export-state",
            metavar="FILE",
            help="Write the store, keys and config to FILE, sealed so that only the two officers together "
            "open it (age, nested: the first officer's layer inside the second's).",
        ),
    ] = None,
    officer: Annotated[
        list[str] | None,
        typer.Option(
            "--officer",
            metavar="NAME=AGE_RECIPIENT",
            help="With --export-state, twice: an officer and their age public key, the inner layer's "
            "first (default: the config's recovery_officers).",
        ),
    ] = None,
    import_state: Annotated[
        Path | None,
        typer.Option(
            "--import-state",
            metavar="FILE",
            help="Restore an export onto a fresh state folder --state DIR (as root), with both officers' "
            "--identity.",
        ),
    ] = None,
    identity: Annotated[
        list[Path] | None,
        typer.Option(
            "--identity", metavar="FILE", help="With --import-state, twice: each officer's age identity file."
        ),
    ] = None,
    listen: Annotated[
        str | None, typer.Option(help="unix:PATH (default DIR/pulih.sock) or HOST:PORT (tokens only).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The service that alone owns the record and runs the playbooks."""
    from pulih.runner import project_dir
    from pulih.service import state as states
    from pulih.service import state_export as exports

    chosen = [init, check, rotate_audit_key, export_state is not None, import_state is not None]
    if sum(chosen) > 1:
        fail(
            "choose one of --init, --check, --rotate-audit-key, --export-state, --import-state",
            Exit.BAD_INPUT,
            as_json=as_json,
        )
    try:
        if import_state is not None:
            doc = exports.import_state(
                import_state,
                state,
                identity or [],
                user=user,
                content=content,
                fallback_content=project_dir(),
                store_url=store,
            )
            _imported(doc, as_json)
            return
        if init:
            if not admin:
                fail("--init needs --admin OSUSER (the first admin)", Exit.BAD_INPUT)
            made = states.init(
                state,
                admin=admin,
                register=register,
                content=content or project_dir(),
                store_url=store,
                user=user,
                demo=demo_actors,
            )
            _print(
                {"state": str(made.root), "admin": admin},
                as_json,
                f"state folder {made.root} made; admin: {admin}",
            )
            return
        loaded = states.load(state)
        if export_state is not None:
            doc = exports.export_state(loaded, export_state, exports.officers(officer or [], loaded.config))
            _exported(doc, as_json)
            return
        if rotate_audit_key:
            was, now = states.rotate_audit_key(loaded)
            _print(
                {"status": "ok", "old": was, "new": now},
                as_json,
                f"audit key {was} replaced by {now}: the rotation is on the chain, signed by the old key; "
                "the config pins the new one",
            )
            return
        if check:
            from pulih.service.server import drop_to_owner

            drop_to_owner(loaded.root)  # as the service sees its files; root leaves none of its own
            problems = states.check(loaded)
            if as_json:
                doc = {"status": "error" if problems else "ok", "state": str(state), "problems": problems}
                print(json.dumps({**doc, "message": "; ".join(problems)}, indent=2))
            for problem in problems:
                err.print(f"[red]problem:[/] {escape(shown(problem))}", markup=True, soft_wrap=True)
            if problems:
                raise typer.Exit(int(Exit.FAILED))
            if not as_json:
                err.print(f"{state}: config, store, key and file modes are in order", soft_wrap=True)
            return
        from pulih.service.server import serve as run_server

        run_server(loaded, listen, demo_actors=demo_actors)
    except states.StateError as exc:
        fail(str(exc), Exit.BAD_INPUT, as_json=as_json)
    except exports.ExportError as exc:
        fail(str(exc), exc.code, as_json=as_json)


def _notes(lines: list[str]) -> None:
    for line in lines:
        err.print(f"[yellow]note:[/] {escape(shown(line))}", markup=True, soft_wrap=True)


def _exported(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"status": "ok", **doc}, indent=2, ensure_ascii=False))
        return
    _notes(doc["warnings"])
    inner, outer = doc["officers"]
    seq = (doc["audit_head"] or {"seq": 0})["seq"]
    line = (
        f"{doc['source']} sealed into {doc['file']} ({doc['files']} files, {doc['bytes']} bytes, the "
        f"audit chain up to entry {seq}): it opens only with {inner['name']}'s and {outer['name']}'s "
        "identities together; keep it away from this machine"
    )
    err.print(escape(shown(line)), soft_wrap=True)


def _checked(state: str) -> list[str]:
    """`pulih serve --check` of a folder, as the service's account sees it: the command a
    person runs next, run for them."""
    done = subprocess.run(
        [sys.executable, "-m", "pulih", "serve", "--state", state, "--check", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return list(json.loads(done.stdout).get("problems") or [])
    except ValueError:
        return [" ".join(done.stderr.split()) or "pulih serve --check did not answer"]


def _imported(doc: dict[str, Any], as_json: bool) -> None:
    problems = _checked(doc["state"])
    if as_json:
        print(json.dumps({"status": "error" if problems else "ok", **doc, "problems": problems}, indent=2))
    else:
        _notes(
            doc["warnings"] + [f"config.yml: {c['field']}: {c['from']} -> {c['to']}" for c in doc["changed"]]
        )
        for problem in problems:
            err.print(f"[red]problem:[/] {escape(shown(problem))}", markup=True, soft_wrap=True)
        seq = (doc["audit_head"] or {"seq": 0})["seq"]
        then = (
            "pulih serve --check finds the problems above"
            if problems
            else "pulih serve --check passes: start the service, then run pulih audit verify"
        )
        line = (
            f"{doc['state']} restored from {doc['from']} (made on {doc['host']} at {doc['created_at']} from "
            f"{doc['source']}, the audit chain up to entry {seq}); {then}"
        )
        err.print(escape(shown(line)), soft_wrap=True)
    if problems:
        raise typer.Exit(int(Exit.FAILED))


def login(
    name: Annotated[str, typer.Argument(help="The account's name.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    hours: Annotated[int, typer.Option(min=1, max=24, help="How long the token holds.")] = 12,
    code: Annotated[
        str | None, typer.Option(help="The second factor's code, for an account that has one (TOTP).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Log in with the account's password: prints a token of its roles' scopes (PULIH_TOKEN)."""
    import getpass

    password = sys.stdin.readline().rstrip("\n") if password_stdin else getpass.getpass("password: ")
    body = {"name": name, "password": password, "hours": hours, "totp": code}
    doc = _call("POST", "/login", body, as_json)
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    print(doc["token"])
    err.print(
        f"token {doc['id']} for {name} ({', '.join(doc['scopes'])}), until {doc['expires_at']}",
        soft_wrap=True,
    )


def whoami(as_json: JsonOpt = False) -> None:
    """Who the service sees: the account, its roles, SKPDs and scopes, and how it knows."""
    doc = _call("GET", "/whoami", None, as_json)
    via = {"socket": "the kernel (socket)", "demo": "a demo script's word (DEMO store)"}.get(
        doc["via"], f"token {doc['token']}"
    )
    _print(
        doc,
        as_json,
        f"{doc['name']} ({', '.join(doc['roles'])}; SKPD {', '.join(doc['skpds']) or '-'}), known by {via}"
        + ("; DEMO store" if doc.get("demo") else ""),
    )


@user_app.command("add")
def user_add(
    name: str,
    role: Annotated[
        list[str], typer.Option("--role", help="requester, receiver, approver, operator, auditor, admin")
    ],
    unix_user: Annotated[
        str | None, typer.Option(help="The OS user who is this account on the socket.")
    ] = None,
    email: Annotated[str | None, typer.Option(help="Where the service mails this account.")] = None,
    skpd: Annotated[list[str] | None, typer.Option("--skpd", help="SKPD code (repeatable).")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read a password (web login).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Add an account."""
    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    body = {"name": name, "roles": role, "skpds": skpd or [], "email": email, "unix_user": unix_user}
    doc = _call("POST", "/admin/users", {**body, "password": password}, as_json)
    _print(doc, as_json, f"account {doc['name']} added: {', '.join(doc['roles'])}")


@user_app.command("list")
def user_list(as_json: JsonOpt = False) -> None:
    """Every account."""
    doc = _call("GET", "/admin/users", None, as_json)
    if as_json:
        print(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    table = Table("name", "roles", "SKPD", "OS user", "e-mail", "state")
    for user in doc["users"]:
        table.add_row(
            user["name"],
            ", ".join(user["roles"]),
            ", ".join(user["skpds"]),
            user["unix_user"] or "",
            user.get("email") or "",  # none: the outbox skips the account
            "disabled" if user["disabled"] else "enabled",
        )
    out.print(table)


@user_app.command("show")
def user_show(name: str, as_json: JsonOpt = False) -> None:
    """One account."""
    doc = _call("GET", f"/admin/users/{name}", None, as_json)
    _print(doc, as_json, json.dumps(doc, ensure_ascii=False))


@user_app.command("disable")
def user_disable(name: str, as_json: JsonOpt = False) -> None:
    """Disable an account (never the last admin)."""
    doc = _call("POST", f"/admin/users/{name}/disable", None, as_json)
    _print(doc, as_json, f"account {name} disabled")


@user_app.command("enable")
def user_enable(name: str, as_json: JsonOpt = False) -> None:
    """Enable an account again."""
    doc = _call("POST", f"/admin/users/{name}/enable", None, as_json)
    _print(doc, as_json, f"account {name} enabled")


@user_app.command("set-roles")
def user_set_roles(
    name: str,
    role: Annotated[
        list[str], typer.Option("--role", help="requester, receiver, approver, operator, auditor, admin")
    ],
    skpd: Annotated[list[str] | None, typer.Option("--skpd", help="SKPD code (repeatable).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Replace an account's roles and SKPDs (its next login's token has the new scopes)."""
    doc = _call("PUT", f"/admin/users/{name}/roles", {"roles": role, "skpds": skpd or []}, as_json)
    _print(doc, as_json, f"account {name}: {', '.join(doc['roles'])}; SKPD {', '.join(doc['skpds']) or '-'}")


@user_app.command("reset-totp")
def user_reset_totp(name: str, as_json: JsonOpt = False) -> None:
    """Turn NAME's second factor off (a lost phone); they set up a new one on the desk."""
    doc = _call("POST", f"/admin/users/{name}/totp/reset", None, as_json)
    _print(doc, as_json, f"account {name}: second factor off")


@user_app.command("reset-password")
def user_reset_password(name: str, as_json: JsonOpt = False) -> None:
    """A new random password for NAME, printed once on standard output (hand it over in
    person); every session of the account ends."""
    doc = _call("POST", f"/admin/users/{name}/password", None, as_json)
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    print(doc["password"])
    err.print(f"account {name}: new password; its sessions have ended", soft_wrap=True)


def password(
    stdin: Annotated[
        bool, typer.Option("--stdin", help="Read the current and the new password, one per line.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Change your own password (for the desk's login); your other sessions end. Over the
    socket, an account without a password sets its first one (leave the current one empty)."""
    import getpass

    if stdin:
        current, new = sys.stdin.readline().rstrip("\n"), sys.stdin.readline().rstrip("\n")
    else:
        current = getpass.getpass("current password (empty if none): ")
        new = getpass.getpass("new password: ")
        if getpass.getpass("new password again: ") != new:
            fail("the two new passwords differ; nothing changed", Exit.BAD_INPUT, as_json=as_json)
    doc = _call("POST", "/password", {"current": current or None, "new": new}, as_json)
    _print(doc, as_json, f"password of {doc['name']} changed; your other sessions have ended")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="The account the token acts as.")],
    scope: Annotated[
        list[str], typer.Option("--scope", help="read, backup, request, approve, restore, admin")
    ],
    expires_in: Annotated[str, typer.Option(help="30m, 12h, 90d (at most 366d).")] = "90d",
    as_json: JsonOpt = False,
) -> None:
    """Create a token; it is printed once, on standard output."""
    doc = _call(
        "POST", "/admin/tokens", {"account": name, "scopes": scope, "expires_in": expires_in}, as_json
    )
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    print(doc["token"])
    err.print(
        f"token {doc['id']} for {name} ({', '.join(doc['scopes'])}), expires {doc['expires_at']}",
        soft_wrap=True,
    )


@token_app.command("list")
def token_list(as_json: JsonOpt = False) -> None:
    """Every token (never its secret)."""
    doc = _call("GET", "/admin/tokens", None, as_json)
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    table = Table("id", "account", "scopes", "expires", "revoked", "last used")
    for token in doc["tokens"]:
        table.add_row(
            token["id"],
            token["account"],
            ", ".join(token["scopes"]),
            token["expires_at"],
            token["revoked_at"] or "",
            token["last_used_at"] or "",
        )
    out.print(table)


@token_app.command("revoke")
def token_revoke(token_id: str, as_json: JsonOpt = False) -> None:
    """Revoke a token: it is refused from now on."""
    doc = _call("POST", f"/admin/tokens/{token_id}/revoke", None, as_json)
    _print(doc, as_json, f"token {token_id} revoked")


key_app = typer.Typer(help="SSH keys an account signs approvals with.", no_args_is_help=True)
user_app.add_typer(key_app, name="key")


@key_app.command("add")
def key_add(
    name: Annotated[str, typer.Argument(help="The account (an approver).")],
    key_file: Annotated[Path, typer.Option("--key-file", help="Its SSH public key file (one key).")],
    as_json: JsonOpt = False,
) -> None:
    """Register an SSH public key the account signs approvals with (on the audit chain)."""
    try:
        public_key = key_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"--key-file: cannot read {key_file}: {exc}", Exit.BAD_INPUT, as_json=as_json)
    doc = _call("POST", f"/admin/users/{name}/keys", {"public_key": public_key}, as_json)
    _print(doc, as_json, f"key {doc['fingerprint']} registered for {name}")


@key_app.command("revoke")
def key_revoke(name: str, fingerprint: str, as_json: JsonOpt = False) -> None:
    """Revoke a key: an approval it signs from now on is refused; earlier ones stand."""
    doc = _call("POST", f"/admin/users/{name}/keys/revoke", {"fingerprint": fingerprint}, as_json)
    _print(doc, as_json, f"key {fingerprint} of {name} revoked at {doc['revoked_at']}")


@key_app.command("list")
def key_list(name: str, as_json: JsonOpt = False) -> None:
    """The account's keys, revoked ones too."""
    doc = _call("GET", f"/admin/users/{name}/keys", None, as_json)
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    table = Table("fingerprint", "added", "revoked")
    for key in doc["keys"]:
        table.add_row(key["fingerprint"], key["added_at"], key["revoked_at"] or "")
    out.print(table)


@policy_app.command("show")
def policy_show(as_json: JsonOpt = False) -> None:
    """Which roles must be different people on one request (besides requester and approver)."""
    doc = _call("GET", "/admin/policy", None, as_json)
    pairs = "; ".join(" and ".join(pair) for pair in doc["distinct"]) or "none besides requester and approver"
    _print(doc, as_json, f"different people: {pairs}; signed approvals: {doc['signed_approvals']}")


@policy_app.command("set")
def policy_set(
    distinct: Annotated[
        list[str] | None,
        typer.Option("--distinct", help="ROLE,ROLE that must be different people (repeatable)."),
    ] = None,
    signed_approvals: Annotated[
        str | None,
        typer.Option(
            "--signed-approvals",
            help="Which approvals must be signed (--sign): none, in_place (restores in place) or all.",
        ),
    ] = None,
    approvers_delegate: Annotated[
        bool | None,
        typer.Option(
            "--approvers-delegate/--only-admins-delegate",
            help="Whether an approver may name their own acting approver (Plh.), or only an admin.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Set the office's policy: --distinct replaces the pairs set before; --signed-approvals
    says which approvals must carry the approver's SSH signature; --approvers-delegate who
    names a Plh. What is not named stays."""
    if signed_approvals is not None and signed_approvals not in ("none", "in_place", "all"):
        fail("--signed-approvals is none, in_place or all", Exit.BAD_INPUT, as_json=as_json)
    body: dict[str, Any] = {"signed_approvals": signed_approvals, "approvers_delegate": approvers_delegate}
    if distinct is not None or (signed_approvals is None and approvers_delegate is None):
        body["distinct"] = [[part.strip() for part in text.split(",")] for text in distinct or []]
    doc = _call("PUT", "/admin/policy", body, as_json)
    pairs_text = (
        "; ".join(" and ".join(pair) for pair in doc["distinct"]) or "none besides requester and approver"
    )
    _print(
        doc,
        as_json,
        f"policy set: different people: {pairs_text}; signed approvals: {doc['signed_approvals']}",
    )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("login")(login)
    app.command("whoami")(whoami)
    app.command("password")(password)
    app.add_typer(admin_app, name="admin")
    app.add_typer(jobs_app, name="jobs")

"""A browser's side of the desk, as plain HTTP: log in through the login form, read a page's
CSRF token, post a step's form (tests/integration/test_desk.py, and the restore through the
desk in test_restore_faults.py)."""

from __future__ import annotations

import re
import subprocess

import httpx

from tests.integration.client import PULIH, Service


def password(name: str) -> str:
    return f"kata-sandi-{name}-2026"


def add_people(service: Service, people: dict[str, tuple[list[str], list[str]]]) -> None:
    """Accounts with passwords (name: (roles, SKPDs)), added by the admin on the socket."""
    for name, (roles, skpds) in people.items():
        args = [f"--role={r}" for r in roles] + [f"--skpd={s}" for s in skpds]
        done = subprocess.run(
            [PULIH, "admin", "user", "add", name, *args, "--password-stdin"],
            input=password(name) + "\n",
            text=True,
            capture_output=True,
            env=service.environ(),
            check=False,
        )
        assert done.returncode == 0, done.stderr


def browser(service: Service) -> httpx.Client:
    assert service.listen, "the service listens on HOST:PORT for the desk"
    return httpx.Client(base_url=f"http://{service.listen}", follow_redirects=False, timeout=120)


def login(
    service: Service, name: str, secret: str | None = None, fields: dict[str, str] | None = None
) -> httpx.Client:
    """A session through the login form; `fields`: more of it (the second factor's code)."""
    page = browser(service)
    form = page.get("/desk/login")
    assert form.status_code == 200, form.text
    pre = re.search(r'name="pre" value="([^"]+)"', form.text)
    assert pre, form.text
    done = page.post(
        "/desk/login",
        data={"name": name, "password": secret or password(name), "pre": pre.group(1), **(fields or {})},
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/desk/requests"
    return page


def csrf(page: httpx.Client, path: str) -> str:
    shown = page.get(path)
    assert shown.status_code == 200, shown.text
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', shown.text)
    assert found, shown.text
    return found.group(1)


def file_request(page: httpx.Client, skpd: str, items: list[str], reason_text: str) -> str:
    """A request filed on the desk's form (in place); its id."""
    token = csrf(page, "/desk/requests/new")
    done = page.post(
        "/desk/requests",
        data={
            "csrf": token,
            "procedure": "recovery",
            "skpd": skpd,
            "items": items,
            "reason": "accidental_deletion",
            "reason_text": reason_text,
            "contact": "0812-0000-1111",
            "target": "in_place",
        },
    )
    assert done.status_code == 303, done.text
    found = re.match(r"^/desk/requests/([A-Za-z0-9-]+)\?done=filed$", done.headers["location"])
    assert found, done.headers["location"]
    return found.group(1)


def act(page: httpx.Client, request_id: str, action: str, **fields: str) -> httpx.Response:
    """A step's form on the request's page, posted with the page's CSRF token."""
    token = csrf(page, f"/desk/requests/{request_id}")
    return page.post(f"/desk/requests/{request_id}/{action}", data={"csrf": token, **fields})

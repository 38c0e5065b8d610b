"""The CLI's side of pulih serve: one HTTP call at a time, over the local socket (the kernel
tells the service who is calling) or over HTTP(S) with a token.

    PULIH_SERVER   unix:/path/to/pulih.sock (default unix:/var/lib/pulih/pulih.sock) or http(s)://HOST:PORT
    PULIH_TOKEN    an API token; sent as 'Authorization: Bearer ...' (it acts as its own account)
    PULIH_DEMO_ACTOR  names the actor to a demo service (pulih serve --demo-actors) only

Nothing here names the caller: the service decides who that is."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from pulih.exitcodes import Exit

DEFAULT_SERVER = "unix:/var/lib/pulih/pulih.sock"


@dataclass
class ServiceError(Exception):
    """A refusal of the service (its envelope) or a service that cannot be reached."""

    code: Exit
    message_id: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    status: int = 0  # the service's HTTP status (0: it was not reached)

    def __str__(self) -> str:
        return self.message


def server() -> str:
    return os.environ.get("PULIH_SERVER") or DEFAULT_SERVER


@dataclass(frozen=True)
class Via:
    """Where the service is and the token to show it. The CLI's comes from its environment;
    the desk makes one per browser session (its user's token, never a demo actor)."""

    where: str
    token: str | None = None
    demo_actor: str | None = None

    @classmethod
    def from_environ(cls) -> Via:
        return cls(server(), os.environ.get("PULIH_TOKEN"), os.environ.get("PULIH_DEMO_ACTOR"))


def _client(timeout: float, via: Via) -> httpx.Client:
    where = via.where
    headers = {"Accept": "application/json"}
    if via.token:
        headers["Authorization"] = f"Bearer {via.token.strip()}"
    if via.demo_actor:  # only a service started with --demo-actors (on a demo store) listens to it
        headers["X-Pulih-Demo-Actor"] = via.demo_actor
    if where.startswith("unix:"):
        transport = httpx.HTTPTransport(uds=where[len("unix:") :])
        return httpx.Client(transport=transport, base_url="http://pulih", headers=headers, timeout=timeout)
    if where.startswith(("http://", "https://")):
        return httpx.Client(base_url=where.rstrip("/"), headers=headers, timeout=timeout)
    raise ServiceError(
        Exit.BAD_INPUT, "client.server", f"PULIH_SERVER {where!r}: write unix:PATH or http(s)://HOST:PORT"
    )


def call(
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    timeout: float = 60,
    raw: bool = False,
    via: Via | None = None,
    binary: bool = False,
    content: bytes | None = None,
) -> Any:
    """The service's JSON answer (its text with `raw`, its bytes with `raw` and `binary`: a
    PDF), or ServiceError with its code, id and message. `via`: whom to ask and as whom
    (default: this process's environment); `content`: bytes to send as the body (a letter)
    instead of `body`'s JSON."""
    via = via or Via.from_environ()
    try:
        with _client(timeout, via) as client:
            if content is not None:
                headers = {"Content-Type": "application/octet-stream"}
                response = client.request(method, f"/v1{path}", content=content, headers=headers)
            else:
                response = client.request(method, f"/v1{path}", json=body)
    except (httpx.TransportError, OSError) as exc:
        raise ServiceError(
            Exit.UNAVAILABLE,
            "client.unavailable",
            f"cannot reach pulih serve at {via.where}: {' '.join(str(exc).split()) or type(exc).__name__} "
            "(is the service running, and may you use its socket? PULIH_SERVER names another)",
        ) from None
    if raw and response.is_success:
        return response.content if binary else response.text
    try:
        doc = response.json()
    except ValueError:
        raise ServiceError(
            Exit.FAILED, "client.not_json", f"{via.where} answered {response.status_code} without JSON"
        ) from None
    if response.is_success:
        return doc
    raise _error_of(response, via.where)


def follow(path: str, via: Via | None = None) -> Iterator[dict[str, Any]]:
    """The events of a stream (NDJSON), as they come, until the service ends it."""
    via = via or Via.from_environ()
    try:
        with _client(60, via) as client, client.stream("GET", f"/v1{path}") as response:
            if not response.is_success:
                response.read()
                raise _error_of(response, via.where)
            for line in response.iter_lines():
                if line.strip():
                    yield json.loads(line)
    except (httpx.TransportError, OSError) as exc:
        raise ServiceError(
            Exit.UNAVAILABLE,
            "client.unavailable",
            f"lost pulih serve at {via.where}: {' '.join(str(exc).split()) or type(exc).__name__}",
        ) from None


def _error_of(response: httpx.Response, where: str) -> ServiceError:
    """The service's envelope as an exception with its exit code."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if not isinstance(error, dict):
        return ServiceError(
            Exit.FAILED,
            "client.unexpected",
            f"{where} answered {response.status_code}",
            status=response.status_code,
        )
    code = error.get("code")
    details = error.get("details")
    return ServiceError(
        Exit(code) if code in {int(e) for e in Exit} else Exit.FAILED,
        str(error.get("id")),
        str(error.get("message")),
        details if isinstance(details, dict) else {},
        response.status_code,
    )

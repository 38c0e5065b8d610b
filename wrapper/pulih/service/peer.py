"""Who is on the other end of the Unix socket, as the kernel says (SO_PEERCRED).

uvicorn does not put the connection's socket in the ASGI scope, so a protocol class of its
own reads the peer's credentials once per connection, when the connection is made, and
hands them to the application in ``scope["extensions"]["pulih.peer"]``. Nothing a client
sends can put them there: the scope is the server's."""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

EXTENSION = "pulih.peer"


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_of(transport: asyncio.BaseTransport) -> Peer | None:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None  # TCP: whoever it is proves it with a token
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid=pid, uid=uid, gid=gid)


class PeerCredentialsProtocol(H11Protocol):
    """uvicorn's h11 protocol, with the peer's kernel credentials in every request's scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = peer_of(transport)
        app = self.app

        async def with_peer(scope: Any, receive: Any, send: Any) -> None:
            scope["extensions"] = {**(scope.get("extensions") or {}), EXTENSION: peer}
            await app(scope, receive, send)

        self.app = with_peer

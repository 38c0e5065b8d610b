"""Acting approvers (Plt./Plh.): while the head of division is away, another account acts in
their approver role for a bounded time, on the record.

A delegation is granted by an admin, or by the approver themselves where the office's policy
allows it (`approvers_delegate`); it names a start and an end (at most MAX_DAYS apart) and
ends by itself then, or earlier when an admin or the delegator ends it. Each grant and each
early end is an audit entry. A step done under one names the delegator beside the actor (on
the step, the approval and the audit entry), and a delegation never lets anyone decide on a
request they or the delegator filed (pulih.requests)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa

from pulih.store import Store, delegations_table, iso, parse_iso

MAX_DAYS: Final = 90  # a Plh. covers an absence; a longer one is a new appointment
ROLES: Final = ("approver",)  # the role a head of division delegates


class DelegationError(Exception):
    """A delegation the rules do not allow; `refused` (exit 3) or bad input (exit 2)."""

    def __init__(self, message: str, *, refused: bool = True) -> None:
        super().__init__(message)
        self.refused = refused


@dataclass(frozen=True)
class Delegation:
    id: int
    delegator: str
    delegate: str
    role: str
    starts_at: str
    ends_at: str
    reason: str
    granted_by: str
    granted_at: str
    ended_at: str | None
    ended_by: str | None

    def active_at(self, moment: dt.datetime) -> bool:
        end = parse_iso(self.ended_at) if self.ended_at else parse_iso(self.ends_at)
        return parse_iso(self.starts_at) <= moment < min(end, parse_iso(self.ends_at))

    def as_dict(self, moment: dt.datetime | None = None) -> dict[str, Any]:
        shown: dict[str, Any] = dict(self.__dict__)
        if moment is not None:
            shown["active"] = self.active_at(moment)
        return shown


def _of(row: Any) -> Delegation:
    return Delegation(**{c.name: row[c.name] for c in delegations_table.columns})


def listed(store: Store) -> list[Delegation]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(delegations_table).order_by(delegations_table.c.id)).mappings()
        return [_of(r) for r in rows]


def active_for(conn: sa.Connection, delegate: str, role: str, moment: dt.datetime) -> Delegation | None:
    """The delegation under which `delegate` holds `role` at `moment`, or None (the newest, when
    two overlap: one approver is away at a time, and its Plh. acts for them)."""
    rows = conn.execute(
        sa.select(delegations_table)
        .where(delegations_table.c.delegate == delegate, delegations_table.c.role == role)
        .order_by(delegations_table.c.id.desc())
    ).mappings()
    return next((d for d in map(_of, rows) if d.active_at(moment)), None)


def delegates(conn: sa.Connection, role: str, moment: dt.datetime) -> set[str]:
    """The accounts acting in `role` at `moment` by a delegation (whom a step's mail reaches too)."""
    rows = conn.execute(sa.select(delegations_table).where(delegations_table.c.role == role)).mappings()
    return {d.delegate for d in map(_of, rows) if d.active_at(moment)}


def grant(
    store: Store,
    *,
    by: str,
    by_is_admin: bool,
    delegator: str,
    delegate: str,
    starts: dt.datetime,
    ends: dt.datetime,
    reason: str,
    roles_of: Callable[[str], set[str]],
    at: dt.datetime,
    audit_context: dict[str, Any] | None = None,
) -> Delegation:
    """Record that `delegate` acts as `delegator`'s approver from `starts` to `ends`."""
    if not reason.strip():
        raise DelegationError("a delegation names its reason (the letter or the absence)", refused=False)
    if len(reason) > 2000:
        raise DelegationError("the reason is at most 2000 characters", refused=False)
    if starts.tzinfo is None or ends.tzinfo is None:
        raise DelegationError("a delegation's start and end carry a time zone", refused=False)
    if ends <= starts or ends <= at:
        raise DelegationError("a delegation ends after it starts, and in the future", refused=False)
    if ends - starts > dt.timedelta(days=MAX_DAYS):
        raise DelegationError(f"a delegation lasts at most {MAX_DAYS} days", refused=False)
    if delegate == delegator:
        raise DelegationError(f"{delegator} cannot stand in for themselves")
    if "approver" not in roles_of(delegator):
        raise DelegationError(f"{delegator} is not an approver: there is no approver role to delegate")
    if not roles_of(delegate):
        raise DelegationError(f"{delegate} is not an enabled account of the service")
    if not by_is_admin:
        if by != delegator:
            raise DelegationError(f"{by} may delegate only their own approver role, not {delegator}'s")
        if not store.policy().get("approvers_delegate"):
            raise DelegationError(
                "the office's policy lets only an admin delegate the approver role "
                "(pulih admin policy set --approvers-delegate)"
            )
    row: dict[str, Any] = {
        "delegator": delegator,
        "delegate": delegate,
        "role": "approver",
        "starts_at": iso(starts),
        "ends_at": iso(ends),
        "reason": reason,
        "granted_by": by,
        "granted_at": iso(at),
        "ended_at": None,
        "ended_by": None,
    }
    with store.transaction() as conn:
        inserted = conn.execute(sa.insert(delegations_table).values(**row)).inserted_primary_key
        assert inserted is not None
        new_id = int(inserted[0])
        store.append_audit(
            conn,
            actor=by,
            action="delegation.granted",
            request_id=None,
            payload={"id": new_id, **row, **(audit_context or {})},
            at=at,
        )
    return _of({"id": new_id, **row})


def end(
    store: Store,
    delegation_id: int,
    *,
    by: str,
    by_is_admin: bool,
    at: dt.datetime,
    audit_context: dict[str, Any] | None = None,
) -> Delegation:
    """End a delegation now, before its end (the approver is back)."""
    with store.transaction() as conn:
        row = (
            conn.execute(sa.select(delegations_table).where(delegations_table.c.id == delegation_id))
            .mappings()
            .first()
        )
        if row is None:
            raise DelegationError(f"there is no delegation {delegation_id}", refused=False)
        found = _of(row)
        if not by_is_admin and by != found.delegator:
            raise DelegationError(f"only an admin or {found.delegator} ends delegation {delegation_id}")
        if found.ended_at or parse_iso(found.ends_at) <= at:
            raise DelegationError(f"delegation {delegation_id} has ended already")
        conn.execute(
            sa.update(delegations_table)
            .where(delegations_table.c.id == delegation_id)
            .values(ended_at=iso(at), ended_by=by)
        )
        store.append_audit(
            conn,
            actor=by,
            action="delegation.ended",
            request_id=None,
            payload={"id": delegation_id, "delegator": found.delegator, "delegate": found.delegate}
            | (audit_context or {}),
            at=at,
        )
    return Delegation(**{**found.__dict__, "ended_at": iso(at), "ended_by": by})

"""What the service asks the backup repository for a request: which backups exist (verified or
not), and the protection of planned backups from retention until the request closes. Each is
one playbook run on the service's register, under the service's keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pulih import report as reports
from pulih.exitcodes import Exit
from pulih.runner import RunOutcome, run_playbook


class RepositoryError(Exception):
    def __init__(self, code: Exit, message_id: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message_id = code, message_id


def why(outcome: RunOutcome) -> str:
    """What went wrong in a run, from its hosts' last errors, else its status."""
    return (
        "; ".join(e for h in outcome.hosts.values() for e in h.errors[-2:])
        or outcome.message
        or outcome.status
    )


# The service's record of some backups (Store.recorded_backups): ASSET:ITEM:BACKUP_ID to
# {manifest_sha256, verified, last_verification, adopted}.
Recorded = dict[str, dict[str, Any]]


def key_of(backup: dict[str, Any]) -> str:
    return f"{backup['asset_id']}:{backup['item']}:{backup['backup_id']}"


def with_record(backups: list[dict[str, Any]], recorded: Recorded) -> list[dict[str, Any]]:
    """The repository's list as the service reads it: `verified` is the record's word (a line
    in the repository's verifications.jsonl is anyone's who can write there); the repository's
    own claim stays beside it as `repository_verified`, and `recorded` says whether the service
    saw the backup published (or an admin adopted it)."""
    out = []
    for backup in backups:
        state = recorded.get(key_of(backup))
        out.append(
            {
                **backup,
                "repository_verified": backup["verified"],
                "recorded": state is not None,
                "verified": bool(state and state["verified"]),
                "last_verification": state["last_verification"] if state else None,
            }
        )
    return out


def listing(
    register: Path, *, asset: str | None = None, item: str | None = None, recorded: Recorded | None = None
) -> list[dict[str, Any]]:
    """The published backups, with their manifests and last verification (the record's, when
    `recorded` is given)."""
    extravars = {k: v for k, v in {"pulih_list_asset": asset, "pulih_list_item": item}.items() if v}
    run_dir = reports.state_dir() / "runs" / reports.new_run_id("list") / "runner"
    outcome = run_playbook("backups_list.yml", inventory=register, run_dir=run_dir, extravars=extravars)
    if outcome.status != "succeeded":
        raise RepositoryError(
            Exit.FAILED, "repository.unreachable", f"cannot read the repository: {why(outcome)}"
        )
    backups: list[dict[str, Any]] = outcome.registered.get("backups", [])
    # The receiver lists an item within its asset; an item alone is picked out of them all.
    backups = [b for b in backups if item is None or b["item"] == item]
    return backups if recorded is None else with_record(backups, recorded)


def found_for(register: Path, scope: list[dict[str, str]], recorded: Recorded) -> list[dict[str, Any]]:
    """The backups of a request's items, as the check-backups step records them: verified as
    the record says."""
    wanted = {(s["asset_id"], s["item"]) for s in scope}
    return [
        {
            "asset_id": b["asset_id"],
            "item": b["item"],
            "backup_id": b["backup_id"],
            "verified": b["verified"],
            "recorded": b["recorded"],
            "kind": (b.get("manifest") or {}).get("kind"),
            "finished_at": (b.get("manifest") or {}).get("finished_at"),  # its age, for the desk
        }
        for b in listing(register, recorded=recorded)
        if (b["asset_id"], b["item"]) in wanted
    ]


def check_planned(plan: dict[str, str], recorded: Recorded, *, allow_unverified: bool) -> None:
    """Every planned backup is on the record and, unless allowed, verified there; else
    RepositoryError exit 4."""
    for key, backup_id in sorted(plan.items()):
        state = recorded.get(f"{key}:{backup_id}")
        if state is None:
            raise RepositoryError(
                Exit.UNUSABLE,
                "repository.backup_unrecorded",
                f"refused: backup {backup_id} of {key} is not on the service's record (made by plain "
                "Ansible or before backups were recorded); an admin can adopt it: "
                f"pulih backups adopt {backup_id}",
            )
        if not state["verified"] and not allow_unverified:
            raise RepositoryError(
                Exit.UNUSABLE,
                "repository.backup_unverified",
                f"refused: backup {backup_id} of {key} is not verified on the service's record (the "
                "repository's own word is not taken): verify it (pulih verify), or plan it with "
                "--unverified REASON",
            )


def protect(
    register: Path,
    request_id: str,
    plan: dict[str, str],
    *,
    allow_unverified: bool = False,
    lift: bool = False,
    recorded: Recorded | None = None,
) -> None:
    """Check the planned backups in the repository and protect them from retention (or lift
    the request's protection). RepositoryError exit 4 when one is missing, not on the record
    `recorded` or not verified there, exit 1 when the repository cannot be reached."""
    if recorded is not None and not lift:
        check_planned(plan, recorded, allow_unverified=allow_unverified)
        allow_unverified = True  # the record vouched: the repository's file has no say
    named = []
    for key, backup_id in plan.items():
        asset_id, _, item = key.partition(":")
        named.append({"asset_id": asset_id, "item": item, "backup_id": backup_id})
    run_dir = reports.state_dir() / "runs" / reports.new_run_id("protect") / "runner"
    outcome = run_playbook(
        "protect.yml",
        inventory=register,
        run_dir=run_dir,
        extravars={
            "pulih_protect_request_id": request_id,
            "pulih_protect_backups": named,
            "pulih_protect_allow_unverified": allow_unverified,
            "pulih_protect_state": "absent" if lift else "present",
        },
    )
    results = outcome.registered.get("protect", [])
    # The receiver's refusal (exit 3): a planned backup is not there, or not verified.
    refused = [r for r in results if r.get("failed") and r.get("rc") == 3]
    if refused:
        raise RepositoryError(Exit.UNUSABLE, "repository.backup_refused", f"refused: {refused[0].get('msg')}")
    if outcome.status != "succeeded" or not results:
        raise RepositoryError(
            Exit.FAILED,
            "repository.unreachable",
            f"cannot reach the repository to change the protection of the planned backups: {why(outcome)}",
        )

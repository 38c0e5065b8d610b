"""Form PPD (the data recovery request) and Form PD (the recovery work form), printed from a
request's record on A4, in Indonesian or English, under the office's letterhead (pulih.office):
as HTML, and as PDF (WeasyPrint)."""

from __future__ import annotations

import threading
from typing import Any, Final

from weasyprint import HTML, URLFetcher  # type: ignore[import-untyped]

from pulih import i18n, printing
from pulih.office import Office
from pulih.printing import N_
from pulih.report import LANGS
from pulih.requests import STEP
from pulih.requests import STEPS as SOP_STEPS

__all__ = ["DEFAULT_LANG", "FORMS", "LANGS", "pdf", "render"]

FORMS: Final = ("ppd", "pd")
DEFAULT_LANG: Final = i18n.DEFAULT  # an office's forms are Indonesian unless asked otherwise
# The steps' names come from the SOP's one table of steps.
STEPS: Final[dict[str, dict[str, str]]] = {
    lang: {spec.name: spec.label[lang] for spec in SOP_STEPS} for lang in LANGS
}
# Who signs each form: the roles of its steps, in the order the SOP's table has them.
SIGNERS: Final[dict[str, tuple[str, ...]]] = {
    form: tuple(dict.fromkeys(spec.role for spec in SOP_STEPS if spec.form == form)) for form in FORMS
}
# By what the request asks for: SOP B's backup request is printed on the same two forms.
TITLES: Final = {
    "restore": {
        "ppd": N_("Data Recovery Request Form (Form PPD)"),
        "pd": N_("Data Recovery Work Form (Form PD)"),
    },
    "backup": {
        "ppd": N_("Backup Request Form (Form PPD, procedure B)"),
        "pd": N_("Backup Work Form (Form PD, procedure B)"),
    },
}
KINDS: Final = {"restore": N_("restore"), "backup": N_("backup")}
PROCEDURES: Final = {
    "recovery": N_("A — data recovery"),
    "backup_restore": N_("B — backup / restore on request"),
}
ROLES: Final = {
    "requester": N_("Requester"),
    "receiver": N_("Receiver"),
    "approver": N_("Approver"),
    "operator": N_("Operator"),
}
REASONS: Final = {
    "disaster": N_("disaster"),
    "error": N_("system error"),
    "accidental_deletion": N_("accidental deletion"),
    "other": N_("other"),
    "none": N_("none"),
    "migration": N_("migration"),
    "maintenance": N_("maintenance"),
}
TARGETS: Final = {"in_place": N_("in place"), "alternate": N_("elsewhere")}

# WeasyPrint renders through Pango and fontconfig, which are not safe to share between threads:
# the service's threads print one PDF at a time.
_PRINTING = threading.Lock()


def signers(request: dict[str, Any], form: str) -> list[dict[str, Any]]:
    """The signature blocks of a form: one per person who did a step of it in a role the form
    is signed in (their last step of it), and an empty one for each such role nobody has
    acted in yet. An approver's block names the SSH key that signed their approval, if any."""
    roles = SIGNERS[form]
    blocks: dict[tuple[str, str], dict[str, Any]] = {}
    for step in request.get("steps") or []:
        spec = STEP.get(step["step"])
        if spec is None or spec.form != form or step["role"] not in roles:
            continue
        blocks[(step["role"], step["actor"])] = {
            "role": step["role"],
            "actor": step["actor"],
            "step": step["step"],
            "at": step["at"],
            "key_fingerprint": None,
            "acting_for": step.get("acting_for"),  # a Plh.'s block names whom they stood in for
        }
    for approval in request.get("approvals") or []:
        block = blocks.get(("approver", approval.get("approver") or ""))
        if block is not None and block["step"] == "approved":
            block["key_fingerprint"] = approval.get("key_fingerprint")  # the newest approval's
    done = {role for role, _ in blocks}
    empty = [{"role": role, "actor": None} for role in roles if role not in done]
    return sorted([*blocks.values(), *empty], key=lambda b: roles.index(b["role"]))


def render(
    request: dict[str, Any], form: str, lang: str, *, office: Office | None = None, demo: bool = False
) -> str:
    """Form 'ppd' or 'pd' of a request (as Requests.get returns it), in 'en' or 'id', headed by
    `office`; a demo store's form says so above everything else."""
    if form not in FORMS or lang not in LANGS:
        raise ValueError("form is ppd or pd, lang is en or id")
    return (
        printing.environment(lang)
        .get_template("form.html.j2")
        .render(
            r=request,
            form=form,
            lang=lang,
            office=office,
            demo=demo,
            title=TITLES[request.get("kind") or "restore"][form],
            kinds=KINDS,
            steps=STEPS[lang],
            signers=signers(request, form),
            procedures=PROCEDURES,
            roles=ROLES,
            reasons=REASONS,
            targets=TARGETS,
        )
    )


def pdf(
    request: dict[str, Any], form: str, lang: str, *, office: Office | None = None, demo: bool = False
) -> bytes:
    """The form as a PDF on A4: the same page, printed by WeasyPrint."""
    html = render(request, form, lang, office=office, demo=demo)
    # The page is whole: its logo is a data: URI, and nothing else is fetched, a file least of all.
    fetcher = URLFetcher(allowed_protocols=("data",))
    with _PRINTING:
        printed: bytes = HTML(string=html, url_fetcher=fetcher).write_pdf()
    return printed

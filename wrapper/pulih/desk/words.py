"""Names the desk shows for the record's codes (roles, reasons, damage) and for the service's
refusals by message id. Marked with N_ so `pybabel extract` finds them; translated when shown."""

from __future__ import annotations

from typing import Final


def N_(message: str) -> str:  # gettext's name for "mark now, translate when shown"
    return message


ROLES: Final = {
    "requester": N_("Requester (SKPD)"),
    "receiver": N_("Receiver"),
    "approver": N_("Approver (head of division)"),
    "operator": N_("Operator"),
    "auditor": N_("Auditor"),
    "admin": N_("Administrator"),
}
REASONS: Final = {
    "disaster": N_("Disaster"),
    "error": N_("System error"),
    "accidental_deletion": N_("Accidental deletion"),
    "other": N_("Other"),
}
DAMAGE: Final = {"none": N_("No damage"), **REASONS}
JOB_STATUS: Final = {
    "running": N_("running"),
    "succeeded": N_("succeeded"),
    "failed": N_("failed"),
    "interrupted": N_("interrupted"),
    "refused": N_("refused"),
    "error": N_("error"),
}

# The service's refusals, by message id: what the person reads first; the service's own
# message follows it with the particulars.
REFUSALS: Final = {
    "auth.login": N_("Wrong account name or password, or the account is disabled."),
    "auth.login_throttled": N_("Too many wrong passwords for this account: wait, then try again."),
    "auth.role": N_("Your role does not allow this step."),
    "auth.scope": N_("Your role does not allow this step."),
    "record.refused": N_("The record refuses this step."),
    "record.input": N_("Part of the form is not valid."),
    "request.skpd": N_("You may only file requests for your own SKPD's data."),
    "request.item": N_("That data item is not in the register."),
    "request.target": N_("The target server is not a registered server in operation."),
    "request.invalid": N_("Part of the form is not valid."),
    "request.register": N_("The register no longer holds an item or target of this request."),
    "repository.backup_unrecorded": N_("A chosen backup is not on the service's record."),
    "client.unavailable": N_("The service cannot be reached; try again in a moment."),
    "desk.csrf": N_("The form has expired or did not come from this desk; open the page again."),
    "desk.input": N_("Part of the form is not valid."),
    "desk.login": N_("Log in first."),
}
REFUSED: Final = N_("The service refused this.")
NO_ITEMS: Final = N_("Choose at least one data item.")

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
BACKUP_REASONS: Final = {  # a backup request's (procedure B)
    "migration": N_("Migration"),
    "maintenance": N_("Maintenance"),
    "other": N_("Other"),
}
KINDS: Final = {"restore": N_("Restore"), "backup": N_("Backup")}
JOB_STATUS: Final = {
    "running": N_("running"),
    "succeeded": N_("succeeded"),
    "failed": N_("failed"),
    "interrupted": N_("interrupted"),
    "refused": N_("refused"),
    "error": N_("error"),
}
MAIL_STATUS: Final = {
    "pending": N_("waiting to be sent"),
    "sent": N_("sent"),
    "failed": N_("failed, retried"),
    "skipped": N_("not sent"),
}

# The service's refusals, by message id: what the person reads first; the service's own
# message follows it with the particulars.
REFUSALS: Final = {
    "auth.login": N_("Wrong account name, password or code, or the account is disabled."),
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
    "account.password": N_("A password has at least 12 characters."),
    "account.password_current": N_("The current password is wrong."),
    "account.password_same": N_("The new password is the current one."),
    "account.password_own": N_("Change your own password on your account's page."),
    "account.exists": N_("That account exists already."),
    "account.name": N_("An account name is lower-case letters, digits, dots, dashes or underscores."),
    "account.roles": N_("Choose one or more roles for the account."),
    "account.skpd": N_("An SKPD is written in lower-case letters, digits and dashes."),
    "account.email": N_("That e-mail address is not valid."),
    "account.last_admin": N_("This is the last administrator: add another one first."),
    "account.unknown": N_("There is no such account."),
    "token.unknown": N_("There is no such token."),
    "policy.pair": N_("Each pair names two different roles."),
    "account.totp_code": N_("The code is wrong: type the one your app shows now."),
    "account.totp_secret": N_("Set up the second factor again: the key is not the one offered."),
    "account.totp_on": N_("Your account has a second factor already."),
    "account.totp_off": N_("The account has no second factor."),
    "account.totp_own": N_("Turn your own second factor off on your account's page, with a code."),
    "repository.unreachable": N_("The backup repository cannot be read right now."),
    "request.valid_hours": N_("An approval is valid for 1 to 720 hours."),
    "request.signed": N_("Send both files: the statement and its signature (.sig)."),
    # A signed approval's refusals, each under its own id (pulih.requests.Refused.message_id).
    "approval.unsigned": N_(
        "The office's policy wants this approval signed with your SSH key: download its statement, "
        "sign it on your own computer and send both files with the approval."
    ),
    "approval.no_key": N_(
        "You have no registered signing key: ask an administrator to register your SSH public key."
    ),
    "approval.statement": N_(
        "The signed statement is not this approval's (another request, validity or note): "
        "download the statement again, sign it and send that one."
    ),
    "approval.signature": N_(
        "The signature does not verify: sign the statement you send, unchanged, with a key registered to you."
    ),
    "desk.signed_pair": N_("Send both files: the statement and its signature (.sig)."),
    "desk.statement_file": N_(
        "The statement file is not the one the desk gave, unchanged: download it again."
    ),
    "desk.signature_file": N_(
        "The signature file is not an SSH signature (the .sig file ssh-keygen writes)."
    ),
    "desk.too_large": N_("The form is too large: a letter is at most 10 MiB, a signature a few kilobytes."),
    "desk.letter": N_("Choose the letter's file (PDF, PNG or JPEG)."),
    "letter.size": N_("The letter is larger than 10 MiB: scan it at a lower resolution."),
    "letter.none": N_("This request has no letter attached."),
    "letter.tampered": N_("The letter in the store is not the one on the audit log: an auditor must look."),
    "request.backups_made": N_("Every item of this request has its backup: the requester confirms it."),
    "delegation.refused": N_("That delegation is not allowed."),
    "restore.window": N_("The server is outside its maintenance window, which this approval does not allow."),
    "delegation.input": N_("Part of the form is not valid."),
}
REFUSED: Final = N_("The service refused this.")
NO_ITEMS: Final = N_("Choose at least one data item.")
PASSWORDS_DIFFER: Final = N_("The new password and its repetition differ.")

"""What the three requests of a restore share (stage, swap, discard: DESIGN.md, restores are
gated and reversible): the stage's names, the timing of its phases, the result of a swap."""

from __future__ import annotations

import os
import signal
import time

from .protocol import AgentError, emit

#
# A restore is three requests, so that nothing live is touched before the restored copy
# verified and the current state was saved (DESIGN.md, restores are gated and reversible):
#   "stage":   the artifact on standard input is restored into a stage beside the live
#              target (database pulih_restore_<token>, folder .pulih-restore-<token>) and
#              measured; the live target is only read (its owner and character set);
#   "swap":    the stage takes the live target's place in one atomic step (rename in one
#              transaction, one RENAME TABLE statement, renameat2 RENAME_EXCHANGE), the
#              replaced copy is dropped unless kept, and the new live target is measured;
#   "discard": the stage is removed (after a failure; also what a new attempt does first).


def stage_names(request):
    """Stage, leftover prefix and replaced-copy names of a restore. The stage is unique to the
    attempt (token: request, item and target; nonce: this attempt), so that an agent of a
    killed attempt, still cleaning up, can never remove the stage of the next one."""
    token, nonce = request["token"], request["nonce"]
    if request["engine"] == "files":
        prefix = ".pulih-restore-%s-" % token
        return {"stage": prefix + nonce, "prefix": prefix, "old": ".pulih-old-%s" % token}
    prefix = "pulih_restore_%s_" % token
    return {"stage": prefix + nonce, "prefix": prefix, "old": "pulih_old_%s" % token}


def emit_swapped(engine, request, counts, existed, clock):
    kept = request.get("keep_old") and existed
    emit(
        "result",
        engine=engine,
        row_counts=counts,
        live=request["live"],
        replaced=existed,
        kept_old=stage_names(request)["old"] if kept else None,
        timings=clock.marks,
    )


class Stopwatch:
    """Seconds per phase, for the report: where a restore's time goes."""

    def __init__(self):
        self.marks, self.last = {}, time.monotonic()

    def mark(self, phase):
        now = time.monotonic()
        self.marks[phase] = round(now - self.last, 3)
        self.last = now


def refuse_existing(request, exists):
    if request.get("must_not_exist") and exists:
        raise AgentError(
            "%s already exists on the target: pulih restores elsewhere only into a new %s, "
            "so that nothing there is overwritten"
            % (request["live"], "folder" if request["engine"] == "files" else "database")
        )


def fault_point(request, name):
    """Tests only: the agent dies here (SIGKILL) when the request names this point, to prove
    that an interruption at exactly this place leaves the target as it was."""
    if request.get("fault") == name:
        os.kill(os.getpid(), signal.SIGKILL)

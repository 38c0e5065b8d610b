"""The SOP's one table of steps holds together: every step is done in a role of the record,
leads only to steps of the table, is reachable from filing, and is named in both languages."""

from __future__ import annotations

from pulih import forms
from pulih.requests import NEXT, PROCEDURES, ROLES, STANDARD_MINUTES, STEP, STEPS


def test_every_step_is_a_role_of_the_record_and_leads_only_to_steps_of_the_table():
    assert len(STEP) == len(STEPS)
    for spec in STEPS:
        assert spec.role in ROLES, spec
        assert set(spec.next) <= set(STEP), spec
        assert spec.form in ("ppd", "pd"), spec
        assert set(spec.minutes) == set(PROCEDURES), spec
        assert set(spec.label) == set(forms.LANGS) and all(spec.label.values()), spec


def test_every_step_is_reachable_from_filing_and_only_rejected_and_closed_end_a_request():
    seen, todo = {"filed"}, ["filed"]
    while todo:
        for following in NEXT[todo.pop()]:
            if following not in seen:
                seen.add(following)
                todo.append(following)
    assert seen == set(STEP)
    assert {spec.name for spec in STEPS if not spec.next} == {"rejected", "closed"}


def test_the_standard_times_are_the_sops():
    """Procedure A: 2 + 1 + 2 + 10 + 5 = 20 fixed minutes; B: 15 min, 1 hour, 1 day, 15 min."""
    recovery = STANDARD_MINUTES["recovery"]
    assert sum(recovery[s] or 0 for s in ("filed", "received", "approved", "planned", "confirmed")) == 20
    assert [
        STANDARD_MINUTES["backup_restore"][s] for s in ("approved", "planned", "executed", "confirmed")
    ] == [
        15,
        60,
        1440,
        15,
    ]
    assert forms.STEPS["id"]["closed"] == "selesai" and forms.STEPS["en"]["revoked"] == "approval revoked"

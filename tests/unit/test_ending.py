"""How a VM ended (``engine.ending``): the cause → exit code table, the exit record and its
reader, and the record a sandbox supervisor writes from what it saw and what the jail said."""

from __future__ import annotations

import json

import pytest

from engine import ending
from engine.ending import EXIT_CODES, Cause, Ending, cause_of_code, parse_record, record
from engine.errors import EXIT_INTERNAL, EXIT_INVALID, EXIT_USAGE
from engine.ozone.exits import Exit, exit_record

#: the table docs/lifecycle.md promises (a change here is a change of a published contract)
PUBLISHED = {
    "guest-shutdown": 0,
    "host-qmp-quit": 0,
    "host-signal": 0,
    "host-error": 1,
    "guest-reset": 4,
    "host-qmp-system-reset": 5,
    "guest-triple-fault": 6,
    "guest-panic": 7,
}


def test_every_cause_has_its_published_exit_code() -> None:
    assert {c.value: n for c, n in EXIT_CODES.items()} == PUBLISHED
    assert set(EXIT_CODES) == set(Cause)


def test_zero_only_for_a_guest_poweroff_or_a_stop_the_host_asked_for() -> None:
    clean = {c for c, n in EXIT_CODES.items() if n == 0}
    assert clean == {Cause.GUEST_SHUTDOWN, Cause.HOST_QMP_QUIT, Cause.HOST_SIGNAL}


def test_failure_codes_name_one_cause_each_and_keep_usage_and_internal_free() -> None:
    failing = [n for n in EXIT_CODES.values() if n]
    assert len(failing) == len(set(failing))
    assert EXIT_USAGE not in failing and EXIT_INTERNAL not in failing
    for cause, code in EXIT_CODES.items():
        assert cause_of_code(code) == (cause if code else None)
    assert cause_of_code(EXIT_INTERNAL) is None and cause_of_code(99) is None


def test_guest_member_follows_qemu() -> None:
    assert Cause.GUEST_PANIC.guest and Cause.GUEST_TRIPLE_FAULT.guest
    assert not Cause.HOST_QMP_QUIT.guest and not Cause.HOST_ERROR.guest


def test_a_record_of_a_panic_reads_back() -> None:
    end = Ending(Cause.GUEST_PANIC, "the guest panicked", panicked=True, started=100.0)
    rec = record(end.code, end, late_imports=[])
    back = parse_record(ending.encode(rec))
    assert back is not None
    assert back["code"] == 7 and back["cause"] == "guest-panic" and back["guest"] is True
    assert back["panicked"] is True and back["crash_loaded"] is False
    assert back["started"] == 100.0 and back["ended"] >= 100.0
    assert back["signal"] is None and back["reason"] == "the guest panicked"
    assert "late_imports" not in back  # a reader keeps the published keys only


def test_a_start_up_failure_is_a_host_error_and_a_killed_engine_has_no_cause() -> None:
    assert record(EXIT_INVALID, None, reason="bad plan")["cause"] == "host-error"
    killed = record(137, None, signal=9)
    assert killed["cause"] is None and killed["guest"] is None
    assert killed["reason"] == "killed by signal 9"
    assert record(EXIT_INTERNAL, None)["cause"] is None


GOOD = record(0, Ending(Cause.GUEST_SHUTDOWN, "guest poweroff (ACPI S5)"))


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"not json",
        b"[]",
        json.dumps({**GOOD, "version": 2}).encode(),
        json.dumps({**GOOD, "cause": "guest-exploded"}).encode(),
        json.dumps({**GOOD, "code": True}).encode(),
        json.dumps({**GOOD, "code": "0"}).encode(),
        json.dumps({**GOOD, "panicked": 1}).encode(),
        json.dumps({k: v for k, v in GOOD.items() if k != "ended"}).encode(),
        json.dumps({**GOOD, "reason": "x" * 20000}).encode(),
    ],
    ids=lambda b: b[:30].decode(errors="replace"),
)
def test_a_bad_record_is_refused_whole(bad: bytes) -> None:
    assert parse_record(bad) is None


def test_a_long_reason_within_the_size_limit_is_cut() -> None:
    rec = parse_record(json.dumps({**GOOD, "reason": "y" * 4000}))
    assert rec is not None and len(rec["reason"]) == 500


def test_a_supervisor_takes_the_jailed_engines_cause_when_the_status_agrees() -> None:
    report = parse_record(ending.encode(record(0, Ending(Cause.HOST_SIGNAL, "SIGTERM received"))))
    rec = exit_record(Exit(12, 0, None, "exited normally"), report)
    assert rec["cause"] == "host-signal" and rec["reason"] == "SIGTERM received"


def test_a_supervisor_trusts_its_own_status_over_the_jail() -> None:
    lying = parse_record(ending.encode(record(0, Ending(Cause.GUEST_SHUTDOWN, "all fine"))))
    rec = exit_record(Exit(12, 7, None, "exited with status 7"), lying)
    assert (rec["code"], rec["cause"], rec["panicked"]) == (7, "guest-panic", True)
    killed = exit_record(Exit(12, None, 31, "killed by seccomp (SIGSYS)"), lying)
    assert (killed["code"], killed["signal"], killed["cause"]) == (128 + 31, 31, None)
    assert killed["reason"] == "killed by seccomp (SIGSYS)"
    silent = exit_record(Exit(12, 0, None, "exited normally"), None)
    assert silent["code"] == 0 and silent["cause"] is None  # 0 has three causes: not guessed

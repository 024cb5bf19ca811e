"""Seccomp allow-lists: a forked child under each filter keeps working, a forbidden call kills it."""

from __future__ import annotations

import os
import signal

import pytest

from engine import seccomp
from engine.ozone import exits
from engine.seccomp_lists import FORBIDDEN_FOR_TESTS, ROLES, allowed

LAST_PID = [0]


def _in_child(fn, env: dict[str, str] | None = None) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            os.environ.update(env or {})
            fn()
            os._exit(0)
        except BaseException:
            os._exit(7)
    LAST_PID[0] = pid
    return os.waitpid(pid, 0)[1]


@pytest.mark.parametrize("role", list(ROLES))
def test_role_filter_allows_python_work(role):
    import json
    import threading

    def work():
        r, w = os.pipe()  # set-up, before install (as the engine opens its fds)
        seccomp.install(role)
        data = json.dumps([{"k": i} for i in range(2000)])
        os.write(w, data.encode()[:100])
        assert os.read(r, 100)
        t = threading.Thread(target=lambda: None)
        if role == "main":  # only main may start threads
            t.start()
            t.join()

    status = _in_child(work)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, exits.describe(
        LAST_PID[0], status
    ).reason


@pytest.mark.parametrize("role", list(ROLES))
def test_forbidden_syscall_kills_the_process(role):
    status = _in_child(lambda: seccomp.install(role), {"SVLAUNCH_TEST_FORBIDDEN_SYSCALL": role})
    end = exits.describe(0, status, kmsg="/nonexistent")
    assert end.seccomp and end.reason == "killed by seccomp (SIGSYS)"


def test_trigger_1_means_main_only():
    status = _in_child(lambda: seccomp.install("vcpu"), {"SVLAUNCH_TEST_FORBIDDEN_SYSCALL": "1"})
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_disabled_is_a_no_op():
    def work():
        seccomp.install("vcpu", enabled=False)
        os.getppid()  # not in any list

    assert os.WEXITSTATUS(_in_child(work)) == 0
    assert (
        os.WEXITSTATUS(
            _in_child(lambda: (seccomp.install("vcpu"), os.getppid()), {"SVLAUNCH_SECCOMP": "off"})
        )
        == 0
    )


def test_a_syscall_outside_the_list_kills_with_sigsys():
    status = _in_child(lambda: (seccomp.install("vcpu"), os.getppid()))
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


def test_precompiled_filters_are_used(tmp_path):
    paths = seccomp.export_all(str(tmp_path))
    assert sorted(os.path.basename(p) for p in paths) == ["io.bpf", "main.bpf", "vcpu.bpf"]
    (tmp_path / "vcpu.bpf").write_bytes(b"")  # an empty program: the kernel refuses it

    def work():
        seccomp.install("vcpu")

    assert os.WEXITSTATUS(_in_child(work, {"SVLAUNCH_SECCOMP_DIR": str(tmp_path)})) == 7


def test_export_cache_gives_the_same_programs_and_follows_the_lists(tmp_path, monkeypatch):
    cache, a, b = tmp_path / "cache", tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    seccomp.export_all(str(a), "kill", cache_dir=str(cache))
    assert len(os.listdir(cache)) == 3
    monkeypatch.setattr(seccomp, "compile_bpf", lambda *_: pytest.fail("compiled despite cache"))
    seccomp.export_all(str(b), "kill", cache_dir=str(cache))
    for role in ROLES:
        assert (a / f"{role}.bpf").read_bytes() == (b / f"{role}.bpf").read_bytes()
    # another list (or mode) is another key: never a stale program
    monkeypatch.undo()
    monkeypatch.setitem(ROLES["io"], "getcwd", "test")
    seccomp.export_all(str(b), "kill", cache_dir=str(cache))
    assert len(os.listdir(cache)) == 6
    assert (a / "io.bpf").read_bytes() != (b / "io.bpf").read_bytes()


def test_lists_have_reasons_and_exclude_the_test_syscall():
    for role in ROLES:
        names = allowed(role)
        assert all(reason.strip() for reason in names.values())
        assert FORBIDDEN_FOR_TESTS not in names
    with pytest.raises(ValueError, match="unknown seccomp role"):
        seccomp.install("gpu")

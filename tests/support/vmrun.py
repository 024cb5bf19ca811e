"""Running a VM in the test's own process (``engine.vm.Vm``) and catching its QMP events."""

from __future__ import annotations

from typing import Any

from engine.vm import Vm


class Events:
    """An event sink that keeps every ``(name, data)`` the VM emits."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict | None]] = []

    def emit(self, name: str, data: dict | None = None) -> None:
        self.events.append((name, data))

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.events]


def run_vm(plan: Any, *, timeout: float = 20.0, paused: bool = False) -> tuple[Vm, Any, Events]:
    """Build and run ``plan`` until it stops or ``timeout``: (the VM, its exit code, events)."""
    ev = Events()
    vm = Vm(plan, sink=ev)
    vm.start(paused=paused)
    try:
        code = vm.wait(timeout)
        return vm, code, ev
    finally:
        vm.close()

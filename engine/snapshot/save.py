"""QMP ``migrate`` to ``file:DIR``: capture a paused VM and write it (docs/snapshot.md).

Two phases. ``capture`` runs on the main loop (the QMP thread) and is short: every device is
frozen on its own loop thread (no device touches guest memory or its rings until it thaws)
and its state read there; each vCPU, on its own thread, completes any I/O exit KVM still holds
and reads its state; then the irqchip, PIT and kvmclock. ``Migration`` then writes guest RAM
and the state file on a worker thread, so a large guest does not stall QMP; ``query-migrate``
reports its progress in QEMU's shape. The VM stays paused and its devices frozen until the
files are complete (``cont`` is refused meanwhile), so what is written is one instant.

Files appear under their final names only when complete (``memory`` first, ``state`` last, each
fsync'd): a folder with a ``state`` always holds a whole snapshot. A failed or cancelled
snapshot leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from engine.logsetup import get_logger
from engine.machine import kvm_sys as k
from engine.machine.devices import run_on_loop
from engine.machine.kvm_state import msr_index_list
from engine.snapshot import format as fmt
from engine.snapshot.codec import to_json
from engine.snapshot.rules import snapshot_refusals
from engine.snapshot.state import (
    DeviceState,
    KvmState,
    MemoryState,
    RegionState,
    Snapshot,
    VcpuState,
)
from engine.virtio.mmio_state import transport_state

if TYPE_CHECKING:
    from collections.abc import Callable

    from engine.machine.builder import Machine
    from engine.machine.vcpu import VcpuThread

log = get_logger(__name__)

CHUNK = 2 << 20
_ZERO = bytes(CHUNK)
#: x2APIC registers: part of the LAPIC state (KVM_GET_LAPIC), not saved as MSRs
_X2APIC = range(0x800, 0x900)


class SnapshotRefused(Exception):
    """``migrate`` cannot snapshot this VM now (the message says why; a QMP error)."""


def _on_loop(loop: Any, fn: Callable[[], Any]) -> Any:
    box: list[Any] = []
    run_on_loop(loop, lambda: box.append(fn()))
    return box[0]


def readable_msrs(vcpu_fd: Any, indices: list[int]) -> list[tuple[int, int]]:
    """The MSRs of ``indices`` this vCPU lets the host read, in order: KVM_GET_MSRS stops at the
    first one it refuses (one the guest's CPUID does not have), which is left out."""
    out: list[tuple[int, int]] = []
    rest = [i for i in indices if i not in _X2APIC]
    while rest:
        got = vcpu_fd.get_msrs(rest)
        out.extend((i, got[i]) for i in rest[: len(got)])
        rest = rest[len(got) + 1 :]
    return out


def capture_vcpu(
    t: VcpuThread, apic_id: int, cpuid: tuple[Any, ...], msrs: list[int], xsave_size: int
) -> VcpuState:
    """Settle the vCPU, then read its state (Firecracker's order: MP state first, since
    KVM_GET_MP_STATE may change the LAPIC; events last). ``cpuid`` is the table the builder
    set (KVM_GET_CPUID2 would add the bits KVM mirrors from CR4 and XCR0 at run time)."""
    fd = t.fd

    def read() -> VcpuState:
        t.settle()
        mp_state = fd.get_mp_state()
        regs, sregs, fpu = fd.raw_regs(), fd.raw_sregs(), fd.raw_fpu()
        xsave = fd.get_xsave(xsave_size)
        xcrs, debugregs = fd.get_xcrs(), fd.get_debugregs()
        lapic = bytes(fd.get_lapic())
        tsc_khz = fd.get_tsc_khz()
        saved = tuple(readable_msrs(fd, msrs))
        events = fd.get_vcpu_events()
        return VcpuState(
            t.index, apic_id, cpuid, tsc_khz, mp_state, regs, sregs, fpu, xsave, xcrs,
            debugregs, lapic, saved, events,
        )  # fmt: skip

    return t.call_parked(read)


def vcpu_tables(m: Machine) -> list[tuple[tuple[int, ...], ...]]:
    """The CPUID table the builder gives each vCPU of this plan on this host (deterministic)."""
    from engine.machine.cpuid_setup import vcpu_cpuid

    supported = m.kvm.supported_cpuid()
    return [
        tuple(
            (e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
            for e in vcpu_cpuid(supported, vp, m.plan.topology, pvm=m.pvm)
        )
        for vp in m.plan.vcpus
    ]


def _freeze_and_capture(att: Any) -> DeviceState:
    dev = att.transport.device
    dev.freeze()
    state = dev.snapshot_state()
    return DeviceState(
        att.spec.id,
        att.spec.kind,
        att.spec.mmio_base,
        transport_state(att.transport),
        to_json(state) if state is not None else None,
    )


def thaw_devices(m: Machine) -> None:
    """Let every device serve its queues again (each on its own loop, not waited for)."""
    for att in m.devices.virtio:
        att.loop.call_soon_threadsafe(att.transport.device.thaw)


def capture(m: Machine) -> Snapshot:
    """The paused VM's state, devices left frozen (``thaw_devices`` after writing)."""
    devices: list[DeviceState] = []
    try:
        for att in m.devices.virtio:
            devices.append(_on_loop(att.loop, partial(_freeze_and_capture, att)))
        msrs = msr_index_list(m.kvm.fd)
        xsave_size = max(m.kvm.check_extension(k.KVM_CAP_XSAVE2), 4096)
        tables = vcpu_tables(m)
        vcpus = tuple(
            capture_vcpu(t, vp.apic_id, cpuid, msrs, xsave_size)
            for t, vp, cpuid in zip(m.vcpus, m.plan.vcpus, tables, strict=True)
        )
        vm = m.vm
        kvm = KvmState(
            vm.get_irqchip(k.KVM_IRQCHIP_PIC_MASTER),
            vm.get_irqchip(k.KVM_IRQCHIP_PIC_SLAVE),
            vm.get_irqchip(k.KVM_IRQCHIP_IOAPIC),
            vm.get_pit2(),
            vm.get_clock()[0],
        )
        dm = m.devices
        serial = None
        if dm.serial is not None:
            with dm.serial_lock:
                serial = dm.serial.snapshot_state()
        ged = dm.ged.snapshot_state() if dm.ged is not None else 0
    except BaseException:
        thaw_devices(m)
        raise
    regions, off = [], 0
    for r in m.mem.regions:
        regions.append(RegionState(r.guest_addr, r.size, off))
        off += r.size
    memory = MemoryState(os.urandom(16), off, tuple(regions))
    # the devices as they are now: a hot-replaced one, not the plan's empty slot
    live = dataclasses.replace(m.plan, devices=tuple(att.spec for att in m.devices.virtio))
    return Snapshot(time.time(), live.to_json(), memory, kvm, vcpus, tuple(devices), serial, ged)


class Migration:
    """One snapshot being written; ``query()`` answers ``query-migrate`` (QEMU's shape)."""

    def __init__(self) -> None:
        self.status = "none"
        self.error = ""
        self.total = 0
        self.transferred = 0
        self.zero_pages = 0
        self.started = 0.0
        self.setup_ms = 0
        self.total_ms = 0
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self.status in ("setup", "active", "cancelling")

    def query(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.status == "none":
            return out
        if self.status == "failed":
            out["error-desc"] = self.error
        elapsed_ms = self.total_ms or int((time.monotonic() - self.started) * 1000)
        out["total-time" if self.status == "completed" else "expected-downtime"] = elapsed_ms
        out["setup-time"] = self.setup_ms
        normal = (self.transferred >> 12) - self.zero_pages
        out["ram"] = {
            "transferred": self.transferred,
            "remaining": self.total - self.transferred,
            "total": self.total,
            "duplicate": self.zero_pages,
            "normal": max(normal, 0),
            "normal-bytes": max(normal, 0) << 12,
            "page-size": 4096,
            "mbps": round(self.transferred * 8 / 1e3 / max(elapsed_ms, 1), 3),
        }
        return out

    def start(self, m: Machine, folder: str) -> None:
        """Capture now (raises ``SnapshotRefused`` or ``SnapshotError``), write in the
        background; ``on_done`` work (thawing the devices) is posted to their loops."""
        reasons = snapshot_refusals(m.plan, [att.spec for att in m.devices.virtio])
        if reasons:
            raise SnapshotRefused("; ".join(reasons))
        t0 = time.monotonic()
        dir_fd = fmt.open_new_folder(folder)
        try:
            snap = capture(m)
        except BaseException:
            os.close(dir_fd)
            raise
        self.status, self.error = "active", ""
        self.total, self.transferred, self.zero_pages = snap.memory.size, 0, 0
        self.started = t0
        self.setup_ms = int((time.monotonic() - t0) * 1000)
        self.total_ms = 0
        self._cancel.clear()
        self._thread = threading.Thread(
            target=self._write, args=(m, snap, dir_fd, folder), name="snapshot", daemon=True
        )
        self._thread.start()

    def cancel(self, wait: float = 10.0) -> None:
        if self.active:
            self.status = "cancelling"
            self._cancel.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(wait)

    def _write(self, m: Machine, snap: Snapshot, dir_fd: int, folder: str) -> None:
        made: list[str] = []
        try:
            digest = self._write_memory(m, snap, dir_fd, made)
            payload = {"format": fmt.FORMAT, "version": fmt.VERSION, **to_json(snap)}
            fd, tmp = fmt.create_temp(dir_fd, fmt.STATE_FILE)
            made.append(tmp)
            try:
                os.write(fd, fmt.state_bytes(payload))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(made[0], fmt.MEMORY_FILE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            made[0] = fmt.MEMORY_FILE
            os.rename(tmp, fmt.STATE_FILE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            made.clear()
            os.fsync(dir_fd)
            self.total_ms = int((time.monotonic() - self.started) * 1000)
            self.status = "completed"
            log.info("snapshot written to %s (sha256 of RAM %s)", folder, digest.hex()[:16])
        except _Cancelled:
            self.status = "cancelled"
        except Exception as e:
            self.error = f"cannot write the snapshot to {folder}: {e}"
            self.status = "failed"
            log.error("%s", self.error)
        finally:
            for name in made:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=dir_fd)
            os.close(dir_fd)
            thaw_devices(m)

    def _write_memory(self, m: Machine, snap: Snapshot, dir_fd: int, made: list[str]) -> bytes:
        """Guest RAM, sparse (all-zero chunks stay holes), then the header with its SHA-256."""
        fd, tmp = fmt.create_temp(dir_fd, fmt.MEMORY_FILE)
        made.append(tmp)
        try:
            os.ftruncate(fd, fmt.MEMORY_DATA_OFFSET + snap.memory.size)
            h = hashlib.sha256()
            for r, rs in zip(m.mem.regions, snap.memory.regions, strict=True):
                off = 0
                while off < r.size:
                    if self._cancel.is_set():
                        raise _Cancelled
                    n = min(CHUNK, r.size - off)
                    data = r.mapping[off : off + n]
                    h.update(data)
                    if data == _ZERO[:n]:
                        self.zero_pages += n >> 12
                    else:
                        pos = fmt.MEMORY_DATA_OFFSET + rs.offset + off
                        if os.pwrite(fd, data, pos) != n:  # a regular file: only when full
                            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    off += n
                    self.transferred += n
            digest = h.digest()
            os.pwrite(fd, fmt.memory_header(snap.memory.size, snap.memory.id, digest), 0)
            os.fsync(fd)
            return digest
        finally:
            os.close(fd)


class _Cancelled(Exception):
    pass

"""``incoming = "file:DIR"``: load a snapshot, check all of it, then put it into a new VM.

``load(plan)`` does every check before the engine touches KVM: the files (``format``), the
state's shape (``codec``: each value against its declaration, each KVM struct's size), the
plan against the one the snapshot recorded (``rules``), each disk's size, and the memory
file's header and length. Only then does ``engine.machine.builder`` build the VM, mapping the
memory file copy-on-write (``MAP_PRIVATE``: pages are read when the guest touches them, so
restore time does not grow with guest RAM, and a template's file is never written) and
calling ``apply_vcpu`` and ``apply_machine`` where it would load a kernel and set boot
registers. A failure after that point is a host failure (a tap that cannot open): the build
tears everything down, as a failed boot does; no half-restored guest ever runs.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.logsetup import get_logger
from engine.machine import kvm_sys as k
from engine.snapshot import format as fmt
from engine.snapshot.codec import StateError, from_json
from engine.snapshot.rules import plan_differences, snapshot_refusals
from engine.snapshot.state import Snapshot, VcpuState
from engine.virtio.mmio_state import restore_transport

if TYPE_CHECKING:
    from engine.machine.builder import Machine
    from engine.machine.kvm import VcpuFd
    from engine.plan import Plan

log = get_logger(__name__)
ffi = k.ffi

#: each VcpuState blob and the struct it must be (xsave: at least this; KVM_CAP_XSAVE2 more)
_VCPU_BLOBS = {
    "regs": "struct kvm_regs",
    "sregs": "struct kvm_sregs",
    "fpu": "struct kvm_fpu",
    "xcrs": "struct kvm_xcrs",
    "debugregs": "struct kvm_debugregs",
    "lapic": "struct kvm_lapic_state",
    "events": "struct kvm_vcpu_events",
    "xsave": "struct kvm_xsave",
}
_KVM_BLOBS = {
    "pic_master": "struct kvm_irqchip",
    "pic_slave": "struct kvm_irqchip",
    "ioapic": "struct kvm_irqchip",
    "pit": "struct kvm_pit_state2",
}


def _state_types() -> dict[str, type | None]:
    from engine.virtio.blk import Blk
    from engine.virtio.console import Console
    from engine.virtio.net import Net
    from engine.virtio.vsock import Vsock

    return {
        "blk": Blk.state_type,
        "net": Net.state_type,
        "console": Console.state_type,
        "vsock": Vsock.state_type,
        "rng": None,
        "slot": None,
    }


@dataclass(slots=True)
class LoadedSnapshot:
    """A checked snapshot and its open memory file (the builder maps it, then closes it)."""

    folder: str
    snap: Snapshot
    memory: fmt.MemoryFile
    #: each device's own state, decoded with its class's ``state_type`` (None: none)
    device_states: list[Any] = field(default_factory=list)

    def close(self) -> None:
        self.memory.close()


def _err(folder: str, what: str, hint: str = "") -> fmt.SnapshotError:
    return fmt.SnapshotError(
        f"cannot restore {folder}: {what}",
        hint=hint
        or "restore with the manifest the snapshot was taken with (names, sockets, "
        "MACs, taps, drive files and the vsock CID may differ)",
    )


def decode(folder: str, payload: dict[str, Any]) -> Snapshot:
    body = {k: v for k, v in payload.items() if k not in ("format", "version")}
    try:
        snap = from_json(Snapshot, body, "state")
    except StateError as e:
        raise _err(folder, f"the state file does not hold what this engine writes ({e})") from None
    for v in snap.vcpus:
        _check_blobs(folder, f"vcpu {v.index}", v, _VCPU_BLOBS)
    _check_blobs(folder, "irqchip/PIT", snap.kvm, _KVM_BLOBS)
    return snap


def _check_blobs(folder: str, where: str, obj: Any, blobs: dict[str, str]) -> None:
    for name, ctype in blobs.items():
        data, want = getattr(obj, name), ffi.sizeof(ctype)
        ok = len(data) >= want and len(data) % 4 == 0 if name == "xsave" else len(data) == want
        if not ok:
            raise _err(folder, f"{where}: {name} is {len(data)} bytes, {ctype} is {want}")


def check_plan(folder: str, snap: Snapshot, plan: Plan) -> None:
    """The restoring plan against the snapshot: refusals, then every difference at once."""
    reasons = snapshot_refusals(plan)
    if reasons:
        raise _err(folder, "; ".join(reasons), "remove it from the manifest (docs/snapshot.md)")
    diffs = plan_differences(snap.plan, plan.to_json())
    if diffs:
        raise _err(folder, "the VM differs from the snapshot's: " + "; ".join(map(str, diffs)))
    if len(snap.vcpus) != len(plan.vcpus) or [v.apic_id for v in snap.vcpus] != [
        v.apic_id for v in plan.vcpus
    ]:
        raise _err(folder, "the state's vCPUs do not match its own plan")
    ranges = sorted((r.guest_addr, r.size) for r in plan.memory.ranges)
    regions = [(r.guest_addr, r.size) for r in snap.memory.regions]
    offsets = [r.offset for r in snap.memory.regions]
    expect = [sum(s for _, s in regions[:i]) for i in range(len(regions))]
    if regions != ranges or offsets != expect or snap.memory.size != plan.memory.size:
        raise _err(folder, "the state's memory regions do not match the plan's RAM ranges")
    if len(snap.devices) != len(plan.devices):
        raise _err(folder, "the state's devices do not match its own plan")
    if (snap.serial is None) != (plan.serial is None):
        raise _err(folder, "the state's serial port does not match the plan")


def _decode_devices(folder: str, snap: Snapshot, plan: Plan) -> list[Any]:
    types = _state_types()
    out: list[Any] = []
    for ds, spec in zip(snap.devices, plan.devices, strict=True):
        if ds.kind != spec.kind or ds.mmio_base != spec.mmio_base:
            raise _err(folder, f"device {spec.id}: the state holds {ds.kind} {ds.id} here")
        tp = types.get(ds.kind)
        if tp is None or ds.device is None:
            out.append(None)
            continue
        try:
            out.append(from_json(tp, ds.device, f"devices.{ds.id}"))
        except StateError as e:
            raise _err(folder, f"device {ds.id}: {e}") from None
    return out


def _check_disks(folder: str, plan: Plan, states: list[Any]) -> None:
    """Each disk has the size the guest's driver read (StratoVirt: the previous file or a copy)."""
    from engine.plan import BlkPlan

    for spec, st in zip(plan.devices, states, strict=True):
        capacity = getattr(st, "capacity", None)
        if not isinstance(spec, BlkPlan) or capacity is None:
            continue
        try:
            fd = os.open(spec.file, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                size = os.lseek(fd, 0, os.SEEK_END)
            finally:
                os.close(fd)
        except OSError as e:
            raise _err(folder, f"drive {spec.id}: cannot open {spec.file}: {e.strerror}") from None
        if size // 512 != capacity:
            raise _err(
                folder,
                f"drive {spec.id}: {spec.file} has {size // 512} sectors, the snapshot's disk "
                f"had {capacity}",
                "restore with the drive file the snapshot was taken with, or a copy of it",
            )


def load(plan: Plan, *, verify: bool = False) -> LoadedSnapshot:
    """The snapshot ``plan.incoming`` names, checked against ``plan`` (``SnapshotError``)."""
    assert plan.incoming is not None
    try:
        folder = fmt.snapshot_folder(plan.incoming)
    except ValueError as e:
        raise fmt.SnapshotError(
            f"incoming {plan.incoming!r}: the engine restores snapshots only ({e})",
            hint='write incoming = "file:/path/to/snapshot"',
        ) from None
    sf = fmt.read_state(folder)
    snap = decode(folder, sf.payload)
    check_plan(folder, snap, plan)
    states = _decode_devices(folder, snap, plan)
    _check_disks(folder, plan, states)
    mf = fmt.open_memory(folder, snap.memory.id, snap.memory.size)
    try:
        if verify:
            fmt.verify_memory(mf)
    except BaseException:
        mf.close()
        raise
    return LoadedSnapshot(folder, snap, mf, states)


# -- applying (engine.machine.builder calls these) ---------------------------------------------


def file_offsets(snap: Snapshot) -> dict[int, int]:
    """Where each RAM region's pages start in the memory file."""
    return {r.guest_addr: fmt.MEMORY_DATA_OFFSET + r.offset for r in snap.memory.regions}


def check_cpuid(folder: str, snap: Snapshot, expected: list[list[tuple[int, ...]]]) -> None:
    """The CPUID this host gives each vCPU must be the one the guest saw (it read it at boot)."""
    for v, want in zip(snap.vcpus, expected, strict=True):
        have = {(e[0], e[1]): e for e in v.cpuid}
        now = {(e[0], e[1]): e for e in want}
        for key in sorted(have.keys() | now.keys()):
            if have.get(key) != now.get(key):
                raise _err(
                    folder,
                    f"vcpu {v.index}: CPUID leaf {key[0]:#x}.{key[1]} differs on this host "
                    f"(snapshot {_regs(have.get(key))}, here {_regs(now.get(key))})",
                    "restore on the host (and KVM) the snapshot was taken on",
                )


def _regs(e: tuple[int, ...] | None) -> str:
    return "absent" if e is None else " ".join(f"{x:08x}" for x in e[3:])


def apply_vcpu(fd: VcpuFd, st: VcpuState) -> None:
    """A new vCPU gets the saved one's state (Firecracker's order; LAPIC before the MSRs, so
    the TSC deadline lands on a configured timer; events last)."""
    from engine.machine.cpuid import CpuidEntry

    fd.set_cpuid2([CpuidEntry(*e) for e in st.cpuid])
    if st.tsc_khz and fd.get_tsc_khz() != st.tsc_khz:
        fd.set_tsc_khz(st.tsc_khz)  # KvmError (with the numbers) where KVM cannot scale the TSC
    fd.set_mp_state(st.mp_state)
    fd.set_raw("struct kvm_regs", st.regs)
    fd.set_raw("struct kvm_sregs", st.sregs)
    if any(st.xsave):
        fd.set_xsave(st.xsave)
    else:
        fd.set_raw("struct kvm_fpu", st.fpu)
    fd.set_xcrs(st.xcrs)
    fd.set_debugregs(st.debugregs)
    fd.set_lapic(st.lapic)
    fd.set_msrs(list(st.msrs))
    fd.set_vcpu_events(st.events)


def apply_machine(m: Machine, loaded: LoadedSnapshot) -> None:
    """VM-wide state, legacy devices, then every virtio device (restored frozen, then thawed),
    kvmclock last, just before the vCPUs may run."""
    snap = loaded.snap
    vm = m.vm
    vm.set_irqchip(snap.kvm.pic_master)
    vm.set_irqchip(snap.kvm.pic_slave)
    vm.set_irqchip(snap.kvm.ioapic)
    vm.set_pit2(snap.kvm.pit)
    dm = m.devices
    if dm.serial is not None and snap.serial is not None:
        with dm.serial_lock:
            dm.serial.restore_state(snap.serial)
            dm.serial.tx_room()  # a THRE the template's full output queue held back
    if dm.ged is not None:
        dm.ged.restore_state(snap.ged)
    for att, ds, st in zip(dm.virtio, snap.devices, loaded.device_states, strict=True):
        restore_transport(att.transport, ds.transport, st)
    vm.set_clock(snap.kvm.clock_ns)
    for att in dm.virtio:
        att.transport.device.thaw()


def close_quietly(loaded: LoadedSnapshot | None) -> None:
    if loaded is not None:
        with contextlib.suppress(OSError):
            loaded.close()

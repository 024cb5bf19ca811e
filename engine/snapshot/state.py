"""What a snapshot holds, as plain dataclasses (``codec`` writes them as JSON in ``state``).

KVM's own structs are kept as the bytes the kernel gave (named fields, sizes checked on
restore); everything else is values. Devices keep their state in their own modules
(``TransportState`` in ``engine/virtio/mmio_state.py``, each device's ``state_type``,
``SerialState``), so a device's owner changes its state next to its code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.machine.serial import SerialState
from engine.virtio.mmio_state import TransportState


@dataclass(frozen=True, slots=True)
class VcpuState:
    """One vCPU: KVM's structs as saved (api.rst names each), in restore order's fields."""

    index: int
    apic_id: int
    #: the CPUID table the guest saw: (function, index, flags, eax, ebx, ecx, edx)
    cpuid: tuple[tuple[int, int, int, int, int, int, int], ...]
    tsc_khz: int
    mp_state: int
    regs: bytes  # struct kvm_regs
    sregs: bytes  # struct kvm_sregs
    fpu: bytes  # struct kvm_fpu (restored only when XSAVE is empty)
    xsave: bytes  # struct kvm_xsave (or the larger KVM_CAP_XSAVE2 area)
    xcrs: bytes  # struct kvm_xcrs
    debugregs: bytes  # struct kvm_debugregs
    lapic: bytes  # struct kvm_lapic_state
    #: (index, value) of every MSR KVM lists (KVM_GET_MSR_INDEX_LIST) and lets this guest read
    msrs: tuple[tuple[int, int], ...]
    events: bytes  # struct kvm_vcpu_events


@dataclass(frozen=True, slots=True)
class KvmState:
    """The in-kernel irqchip (two PICs and the IOAPIC), the PIT and kvmclock."""

    pic_master: bytes  # struct kvm_irqchip, chip 0
    pic_slave: bytes  # chip 1
    ioapic: bytes  # chip 2
    pit: bytes  # struct kvm_pit_state2
    clock_ns: int  # kvmclock when the snapshot was taken: the guest's clock goes on from here


@dataclass(frozen=True, slots=True)
class RegionState:
    """One guest RAM region and where its bytes start in the memory file's data."""

    guest_addr: int
    size: int
    offset: int


@dataclass(frozen=True, slots=True)
class MemoryState:
    id: bytes  # 16 random bytes, also in the memory file's header: the two belong together
    size: int
    regions: tuple[RegionState, ...]


@dataclass(frozen=True, slots=True)
class DeviceState:
    """One virtio-mmio device: where it sits, its transport, and its own ``state_type`` value
    (as JSON: the restoring device decodes it with its own class)."""

    id: str
    kind: str
    mmio_base: int
    transport: TransportState
    device: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A whole VM. ``plan`` is the plan it ran (its devices as they were when it was taken,
    hot-replaced ones included): a restore compares the new plan with it (``rules``)."""

    created: float
    plan: dict[str, Any]
    memory: MemoryState
    kvm: KvmState
    vcpus: tuple[VcpuState, ...]
    devices: tuple[DeviceState, ...]
    serial: SerialState | None
    ged: int

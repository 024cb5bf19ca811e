"""A virtio-mmio transport's state for snapshots (engine/snapshot/): read, check, put back.

What the driver wrote (status, feature pages, selected queue, InterruptStatus, the config
generation) and each queue's registers and ring positions. A restore puts them back into a new
transport in front of a new device and, when the driver had reached DRIVER_OK, activates the
device as DRIVER_OK would, frozen (``VirtioDevice.thaw`` starts it), so the guest's driver goes
on without negotiating again: every feature it acked must still be offered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.virtio.device import VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC
from engine.virtio.mmio import MmioTransport
from engine.virtio.mmio_events import TransportInterrupt
from engine.virtio.mmio_regs import STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK
from engine.virtio.queue import QueueState


@dataclass(frozen=True, slots=True)
class TransportState:
    device_id: int
    status: int
    device_features_sel: int
    driver_features_sel: int
    driver_features: int
    queue_sel: int
    isr: int
    config_generation: int
    queues: tuple[QueueState, ...]


class TransportStateError(ValueError):
    """A saved transport state this device cannot take (another device, other features)."""


def transport_state(t: MmioTransport) -> TransportState:
    """The transport's state; call with the device frozen (``VirtioDevice.freeze``)."""
    with t.device.lock:
        return TransportState(
            t.device.device_id,
            t.status,
            t.device_features_sel,
            t.driver_features_sel,
            t.driver_features,
            t.queue_sel,
            t._isr,
            t.config_generation,
            tuple(q.snapshot_state() for q in t.queues),
        )


def check_transport_state(t: MmioTransport, st: TransportState) -> None:
    """Why ``st`` cannot go into ``t`` (``TransportStateError``), before anything changes: the
    same device type and queues, and every feature the guest's driver acked still offered."""
    name = t.device.name
    if st.device_id != t.device.device_id:
        raise TransportStateError(
            f"{name}: the snapshot has virtio device type {st.device_id} here, "
            f"this VM has {t.device.device_id}"
        )
    if len(st.queues) != len(t.queues):
        raise TransportStateError(
            f"{name}: the snapshot has {len(st.queues)} queues, this device {len(t.queues)}"
        )
    for i, (qs, q) in enumerate(zip(st.queues, t.queues, strict=True)):
        if qs.size > q.max_size:
            raise TransportStateError(
                f"{name}: queue {i} has {qs.size} entries in the snapshot, this device "
                f"allows {q.max_size}"
            )
    if st.status & STATUS_FEATURES_OK:
        missing = st.driver_features & ~t.offered_features
        if missing:
            bits = ", ".join(str(b) for b in range(64) if missing >> b & 1)
            raise TransportStateError(
                f"{name}: the guest's driver uses feature bits {bits}, which this device "
                "does not offer (a different backend or option than the snapshot's)"
            )


def restore_transport(t: MmioTransport, st: TransportState, device_state: Any = None) -> None:
    """Put ``st`` into ``t`` (checked first) and, for a DRIVER_OK driver, activate the device,
    frozen. A saved ring that is not guest RAM raises ``QueueError`` (the same check as at
    DRIVER_OK)."""
    check_transport_state(t, st)
    dev = t.device
    with dev.lock:
        t.status = st.status
        t.device_features_sel = st.device_features_sel
        t.driver_features_sel = st.driver_features_sel
        t.driver_features = st.driver_features
        t.queue_sel = st.queue_sel
        t.config_generation = st.config_generation
        with t._isr_lock:
            t._isr = st.isr
        live = bool(st.status & STATUS_DRIVER_OK) and not st.status & STATUS_FAILED
        event_idx = bool(st.driver_features >> VIRTIO_F_RING_EVENT_IDX & 1)
        indirect = bool(st.driver_features >> VIRTIO_F_RING_INDIRECT_DESC & 1)
        for qs, q in zip(st.queues, t.queues, strict=True):
            q.restore_state(qs, t.mem if live else None, event_idx=event_idx, indirect=indirect)
        if st.status & STATUS_FEATURES_OK:
            dev.acked_features = st.driver_features
        dev.frozen = True
        if live:
            dev.activate(t.mem, t.queues, TransportInterrupt(t))
            if device_state is not None:
                dev.restore_state(device_state)

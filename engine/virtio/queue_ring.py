"""The device's side of a split virtqueue (virtio 1.2 §2.7): writing the used ring, deciding
interrupts and kicks (EVENT_IDX's arithmetic, NO_INTERRUPT), giving a chain back, and the
queue's snapshot state.

Split from ``queue.py`` so that the one validator of what a hostile driver puts in the rings
reads in one sitting there: nothing here checks a guest value (it writes the device's own
values, or compares 16-bit indices without trusting them). ``Queue`` inherits this class, so
``add_used`` and ``needs_notification`` are called as before the split (no wrapper).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.machine.memory import GuestMemory
from engine.virtio.chain import DescriptorChain

log = logging.getLogger("engine.virtio.queue")

VIRTQ_AVAIL_F_NO_INTERRUPT = 1

U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")  # §2.7.8 struct virtq_used_elem: id, len


@dataclass(frozen=True, slots=True)
class QueueState:
    """A queue's registers and ring positions, as a snapshot keeps them (engine/snapshot/)."""

    size: int
    ready: bool
    desc_addr: int
    avail_addr: int
    used_addr: int
    next_avail: int
    next_used: int
    signalled_used: int


class UsedRing:
    """The used-ring half of ``Queue``; the attributes are ``Queue``'s (set in ``reset``)."""

    size: int
    ready: bool
    desc_addr: int
    avail_addr: int
    used_addr: int
    next_avail: int
    next_used: int
    event_idx: bool
    _signalled_used: int
    _mem: GuestMemory | None

    if TYPE_CHECKING:  # the validator's, in ``Queue``

        def reset(self) -> None: ...
        def pending(self) -> int: ...
        def activate(
            self, mem: GuestMemory, *, event_idx: bool = False, indirect: bool = False
        ) -> None: ...

    # -- used side ---------------------------------------------------------------------------------

    def add_used(self, chain: DescriptorChain, length: int) -> None:
        """Return ``chain`` with ``length`` bytes written (clamped to its writable length).

        §2.7.8.2: the device "MUST write at least len bytes": a used length past the writable
        buffers would tell the driver that memory it never offered was filled.
        """
        if not 0 <= length <= chain.writable_len:
            log.error(
                "virtqueue: used length %d > writable %d (device bug)", length, chain.writable_len
            )
            length = max(0, min(length, chain.writable_len))
        self._put_used(chain.head, length)

    def _put_used(self, head: int, length: int) -> None:
        mem = self._mem
        if mem is None:
            return
        slot = self.used_addr + 4 + 8 * (self.next_used % self.size)
        self.next_used = (self.next_used + 1) & 0xFFFF
        # §2.7.8.2: "The device MUST set len prior to updating the used idx".
        mem.write_struct(slot, _USED_ELEM, head, length)
        mem.write_struct(self.used_addr + 2, U16, self.next_used)

    def needs_notification(self) -> bool:
        """Whether the driver wants an interrupt for the used entries added since the last one."""
        mem = self._mem
        if mem is None:
            return False
        new = self.next_used
        if self.event_idx:
            # §2.7.7.2: notify when used.idx passes avail.used_event (vring_need_event).
            old = self._signalled_used
            self._signalled_used = new
            used_event = mem.read_struct(self.avail_addr + 4 + 2 * self.size, U16)[0]
            return (new - used_event - 1) & 0xFFFF < (new - old) & 0xFFFF
        if self._signalled_used == new:
            return False
        self._signalled_used = new
        # §2.7.7.2: without EVENT_IDX, flags bit 0 (NO_INTERRUPT) asks for no notification.
        flags = mem.read_struct(self.avail_addr, U16)[0]
        return not flags & VIRTQ_AVAIL_F_NO_INTERRUPT

    def _enable_notification(self) -> bool:
        """Ask for kicks again; True when chains arrived meanwhile (pop must look again)."""
        if not self.event_idx or self._mem is None:
            return False
        # §2.7.10: with EVENT_IDX the driver kicks once avail.idx passes used.avail_event.
        self._mem.write_struct(self.used_addr + 4 + 8 * self.size, U16, self.next_avail)
        return self.pending() > 0

    def snapshot_state(self) -> QueueState:
        return QueueState(
            self.size,
            self.ready,
            self.desc_addr,
            self.avail_addr,
            self.used_addr,
            self.next_avail,
            self.next_used,
            self._signalled_used,
        )

    def restore_state(
        self,
        st: QueueState,
        mem: GuestMemory | None = None,
        *,
        event_idx: bool = False,
        indirect: bool = False,
    ) -> None:
        """Registers and ring positions from a snapshot. With ``mem`` (the device was at
        DRIVER_OK) a ready queue is activated too, through the same ring checks as a driver's
        (``QueueError`` when the saved placement is not valid in this guest's RAM)."""
        self.reset()
        self.size, self.ready = st.size, st.ready
        self.desc_addr, self.avail_addr, self.used_addr = st.desc_addr, st.avail_addr, st.used_addr
        self.next_avail, self.next_used = st.next_avail & 0xFFFF, st.next_used & 0xFFFF
        if mem is not None and st.ready:
            self.activate(mem, event_idx=event_idx, indirect=indirect)
        self._signalled_used = st.signalled_used & 0xFFFF

    def undo_pop(self) -> None:
        """Give the last popped chain back (a device that cannot serve it yet, e.g. net RX)."""
        self.next_avail = (self.next_avail - 1) & 0xFFFF

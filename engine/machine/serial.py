"""An 8250/16550A UART model (COM1), pure: registers in, bytes and interrupts out.

No fds, no threads: output goes to a transmit queue (``Transmitter``: ``put_byte`` and
``room``; the chardev's ``OutputQueue`` in the engine, which a loop writes out in chunks), the
interrupt to a ``trigger()`` callable (an irqfd write in the engine), and input arrives through
``enqueue(bytes)``. That keeps the model testable byte by byte and lets any chardev backend
drive it.

Transmit status is honest (docs/console.md): THRE and TEMT are set while the queue has room for
a whole FIFO (``FIFO_SIZE``), which is what Linux's 8250 driver writes after seeing THRE
(``serial8250_tx_chars`` writes up to ``tx_loadsz`` bytes per THRE interrupt, the console writes
a FIFO's worth after ``UART_LSR_THRE``). With less room (a slow reader) both are clear and the
THRE interrupt waits; ``tx_room()`` (the queue has room again) sets them and raises it. A byte
the guest writes with no room at all is lost, as on a real UART whose FIFO overflows, and
counted. Otherwise transmission is instant, as in vm-superio/QEMU: the IIR reports FIFOs
enabled, enabling the THRE interrupt while THRE is set raises it (Linux relies on that for
interrupt-driven output), and an interrupt is raised on the edge from "none pending" to
"pending" (the GSI is edge-triggered).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

DATA, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)
FCR = IIR

IER_RDA = 0x01
IER_THRE = 0x02
IER_RLS = 0x04
IER_MS = 0x08
IER_VALID = 0x0F

IIR_NONE = 0x01
IIR_THRE = 0x02
IIR_RDA = 0x04
IIR_FIFO = 0xC0

LCR_DLAB = 0x80
MCR_LOOP = 0x10
MCR_VALID = 0x1F

LSR_DR = 0x01
LSR_OE = 0x02
LSR_THRE = 0x20
LSR_TEMT = 0x40

MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80
DEFAULT_MSR = MSR_DCD | MSR_DSR | MSR_CTS

FIFO_SIZE = 64


class Transmitter(Protocol):
    """Where transmitted bytes go (``engine.machine.chardev_out.OutputQueue`` in the engine)."""

    def put_byte(self, value: int) -> bool:
        """Take one byte; False when there is no room (the byte is lost)."""

    def room(self) -> int:
        """Bytes it would take now."""

    def write(self, data: bytes) -> int:
        """Take at most ``room()`` bytes of ``data``; returns how many it took."""


@dataclass(frozen=True, slots=True)
class SerialState:
    """Every register and the receive FIFO, as a snapshot keeps them (engine/snapshot/)."""

    ier: int
    lcr: int
    mcr: int
    scr: int
    dll: int
    dlm: int
    thr_pending: bool
    overrun: bool
    last_iir: int
    rx: bytes
    #: THRE was reported clear (the output queue was full): the restored UART raises it once
    #: its own queue has room (``tx_room``), or a guest waiting for that interrupt would hang
    tx_held: bool = False


class Serial:
    """Register-level 16550A. ``read``/``write`` take the offset from the port base (0..7)."""

    def __init__(
        self,
        tx: Transmitter,
        trigger: Callable[[], None],
        *,
        on_space: Callable[[], None] | None = None,
    ) -> None:
        self._tx = tx
        self._trigger = trigger
        #: told (under the device lock) whether THR writes may be queued by KVM instead of
        #: exiting: only while they cannot raise an interrupt (THRE interrupt off, no loopback)
        self.on_coalesce: Callable[[bool], None] | None = None
        #: THR writes KVM holds for us (coalesced, not yet applied): THRE counts them as sent
        self.tx_queued: Callable[[], int] = lambda: 0
        self._on_space = on_space
        self.ier = 0
        self.lcr = 0x03  # 8N1
        self.mcr = 0x08  # OUT2
        self.scr = 0
        self.dll, self.dlm = 0x0C, 0  # 9600 baud
        self._thr_pending = False
        self._tx_held = False  # THRE was reported clear: tx_room() must raise the interrupt
        self._overrun = False
        self._rx: deque[int] = deque()
        self._last_iir = IIR_NONE
        self.tx_bytes = 0
        self.tx_lost = 0
        self.rx_bytes = 0

    # -- snapshot (the caller holds the UART's lock) ------------------------------------------------

    def snapshot_state(self) -> SerialState:
        return SerialState(
            self.ier,
            self.lcr,
            self.mcr,
            self.scr,
            self.dll,
            self.dlm,
            self._thr_pending,
            self._overrun,
            self._last_iir,
            bytes(self._rx),
            self._tx_held,
        )

    def restore_state(self, st: SerialState) -> None:
        """Registers and FIFO as saved; no interrupt is raised (the irqchip's restored state
        already holds any the guest had not taken)."""
        self.ier, self.lcr, self.mcr = st.ier & IER_VALID, st.lcr & 0xFF, st.mcr & MCR_VALID
        self.scr, self.dll, self.dlm = st.scr & 0xFF, st.dll & 0xFF, st.dlm & 0xFF
        self._thr_pending, self._overrun, self._last_iir = st.thr_pending, st.overrun, st.last_iir
        self._rx = deque(st.rx[:FIFO_SIZE])
        self._tx_held = st.tx_held

    # -- input from the backend ---------------------------------------------------------------------

    def free_space(self) -> int:
        return FIFO_SIZE - len(self._rx)

    def enqueue(self, data: bytes) -> int:
        """Queue host input for the guest; returns how many bytes were taken (FIFO-bounded)."""
        n = min(len(data), self.free_space())
        if n < len(data):
            self._overrun = True
        self._rx.extend(data[:n])
        self.rx_bytes += n
        if n:
            self._update()
        return n

    @property
    def coalescable(self) -> bool:
        """A THR write now has no effect the guest sees before its next access to this UART."""
        return not self.ier & IER_THRE and not self.mcr & MCR_LOOP

    def _mode_changed(self, before: bool) -> None:
        now = self.coalescable
        if now != before and self.on_coalesce is not None:
            self.on_coalesce(now)

    # -- transmit status ---------------------------------------------------------------------------

    def _thre(self) -> bool:
        """THR (and the transmitter) empty: the queue takes a whole FIFO's worth."""
        return self._tx.room() >= FIFO_SIZE

    def tx_room(self) -> None:
        """The transmit queue has room again (the loop, under the same lock as the registers)."""
        if self._tx_held and self._thre():
            self._tx_held = False
            self._thr_pending = True
            self._update()

    # -- registers ----------------------------------------------------------------------------------

    def _iir(self) -> int:
        if self.ier & IER_RDA and self._rx:
            return IIR_RDA
        if self.ier & IER_THRE and self._thr_pending:
            return IIR_THRE
        return IIR_NONE

    def _update(self) -> None:
        iir = self._iir()
        if iir != IIR_NONE and self._last_iir == IIR_NONE:
            self._trigger()
        self._last_iir = iir

    def lsr_unlocked(self) -> int:
        """LSR for the vCPU loop without the device lock, when reading it changes nothing:
        THRE set (room for a FIFO), nothing received, no overrun to clear; else -1 (the caller
        takes the locked ``read``). Races with the loop only move the read a moment earlier."""
        if self._rx or self._overrun or self._tx.room() - self.tx_queued() < FIFO_SIZE:
            return -1
        return LSR_THRE | LSR_TEMT

    def read(self, offset: int, size: int = 1) -> int:
        if offset == LSR:  # first: a polling driver reads it before every byte
            if self._tx.room() - self.tx_queued() >= FIFO_SIZE:
                lsr = LSR_THRE | LSR_TEMT
            else:
                lsr = 0
                self._tx_held = True
            if self._rx:
                lsr |= LSR_DR
            if self._overrun:
                lsr |= LSR_OE
                self._overrun = False
            return lsr
        if offset == DATA:
            if self.lcr & LCR_DLAB:
                return self.dll
            value = self._rx.popleft() if self._rx else 0
            if self._on_space is not None and len(self._rx) == FIFO_SIZE // 2:
                self._on_space()
            self._update()
            return value
        if offset == IER:
            return self.dlm if self.lcr & LCR_DLAB else self.ier
        if offset == IIR:
            iir = self._iir()
            if iir == IIR_THRE:
                self._thr_pending = False  # reading IIR acknowledges THRE
                self._update()
            return iir | IIR_FIFO
        if offset == LCR:
            return self.lcr
        if offset == MCR:
            return self.mcr
        if offset == MSR:
            if self.mcr & MCR_LOOP:
                m = self.mcr
                return ((m & 0x02) << 3) | ((m & 0x01) << 5) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
            return DEFAULT_MSR
        if offset == SCR:
            return self.scr
        return 0xFF

    def write_thr(self, data: bytes) -> None:
        """THR writes KVM queued for us (coalesced PIO), applied as one run: what the same
        writes one by one would do (``coalescable`` held while KVM queued them)."""
        if self.lcr & LCR_DLAB or self.mcr & MCR_LOOP or self.ier & IER_THRE:
            for value in data:
                self.write(DATA, 1, value)
            return
        taken = self._tx.write(data)
        self.tx_bytes += taken
        self.tx_lost += len(data) - taken
        self._thr_pending = self._thre()
        self._tx_held = not self._thr_pending
        self._update()

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == DATA:
            if self.lcr & LCR_DLAB:
                self.dll = value
                return
            if self.mcr & MCR_LOOP:
                if self.free_space():
                    self._rx.append(value)
                self._thr_pending = True
            else:
                if self._tx.put_byte(value):
                    self.tx_bytes += 1
                else:
                    self.tx_lost += 1  # written while THRE was clear and no room: overflow
                self._thr_pending = self._thre()
                self._tx_held = not self._thr_pending
            self._update()
        elif offset == IER:
            if self.lcr & LCR_DLAB:
                self.dlm = value
                return
            enabling_thre = value & IER_THRE and not self.ier & IER_THRE
            before = self.coalescable
            self.ier = value & IER_VALID
            self._mode_changed(before)
            if enabling_thre:
                if self._thre():
                    self._thr_pending = True
                else:
                    self._tx_held = True  # raised by tx_room() once the queue has room
            self._update()
        elif offset == FCR:
            if value & 0x02:  # clear receive FIFO
                self._rx.clear()
                if self._on_space is not None:
                    self._on_space()
            self._update()
        elif offset == LCR:
            self.lcr = value
        elif offset == MCR:
            before = self.coalescable
            self.mcr = value & MCR_VALID
            self._mode_changed(before)
        elif offset == SCR:
            self.scr = value

"""virtio-mmio v2 transport: registers, status machine, negotiation, interrupts, NEEDS_RESET."""

from __future__ import annotations

import os

import pytest
from virtio_driver import Allocator, Driver

from engine.machine.memory import GuestMemory
from engine.virtio import mmio as M
from engine.virtio import mmio_regs as R
from engine.virtio.device import VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1, VirtioDevice

MiB = 1 << 20


class Echo(VirtioDevice):
    """A minimal device: copies each chain's readable bytes into its writable buffers."""

    device_id = 42

    def __init__(self, fail_activate: bool = False) -> None:
        super().__init__("echo", [64, 8], features=1 << 3)
        self.config = bytearray(b"\x01\x02\x03\x04\x05\x06\x07\x08")
        self.fail_activate = fail_activate
        self.resets = 0

    def on_activate(self) -> None:
        if self.fail_activate:
            raise OSError("backend went away")

    def on_reset(self) -> None:
        self.resets += 1

    def write_config(self, offset: int, data: bytes) -> None:
        self.config[offset : offset + len(data)] = data

    def process_queue(self, index: int) -> None:
        q = self.queues[index]
        while (chain := q.pop()) is not None:
            assert self.mem is not None
            data = chain.read(self.mem, 0, chain.writable_len)
            q.add_used(chain, chain.write(self.mem, data[: chain.writable_len]))
        self.signal(index)


@pytest.fixture
def setup():
    mem = GuestMemory.anonymous([(0, 8 * MiB)])
    dev = Echo()
    t = M.MmioTransport(dev, mem)
    drv = Driver(t, mem, Allocator(0x1000, 8 * MiB))
    yield t, dev, drv, mem
    t.close()
    mem.close()


def test_identity_registers(setup) -> None:
    t, dev, drv, _ = setup
    assert drv.r(R.MAGIC) == 0x74726976
    assert drv.r(R.VERSION) == 2
    assert drv.r(R.DEVICE_ID) == 42
    feats = drv.device_features()
    assert feats >> VIRTIO_F_VERSION_1 & 1 and feats & 1 << 3
    drv.w(R.QUEUE_SEL, 1)
    assert drv.r(R.QUEUE_NUM_MAX) == 8
    drv.w(R.QUEUE_SEL, 2)
    assert drv.r(R.QUEUE_NUM_MAX) == 0
    assert t.read(R.MAGIC, 2) == 0  # registers are 32-bit only
    assert t.num_queues == 2 and t.device is dev


def test_echo_round_trip_and_interrupt(setup) -> None:
    _t, _dev, drv, _ = setup
    drv.start()
    q = drv.queues[0]
    q.add([b"hello world"], [11])
    q.kick()
    (c,) = q.collect()
    assert c.data == b"hello world" and c.length == 11
    assert drv.interrupts == 1
    assert drv.ack_interrupt() == R.INT_VRING
    assert drv.r(R.INTERRUPT_STATUS) == 0


def test_invalid_status_transitions_are_ignored(setup) -> None:
    _t, _, drv, _ = setup
    drv.w(R.STATUS, R.STATUS_DRIVER_OK)
    assert drv.status == 0
    drv.w(R.STATUS, R.STATUS_ACKNOWLEDGE)
    drv.w(R.STATUS, R.STATUS_ACKNOWLEDGE | R.STATUS_FEATURES_OK)  # skipped DRIVER
    assert drv.status == R.STATUS_ACKNOWLEDGE
    drv.w(R.STATUS, R.STATUS_ACKNOWLEDGE | R.STATUS_FAILED)
    assert drv.status & R.STATUS_FAILED


def test_features_ok_needs_version_1(setup) -> None:
    _, dev, drv, _ = setup
    drv.negotiate(drop=1 << VIRTIO_F_VERSION_1)
    assert not drv.features_ok()
    acked = drv.negotiate()
    assert drv.features_ok() and dev.acked_features == acked


def test_driver_features_only_in_driver_state(setup) -> None:
    _, dev, drv, _ = setup
    drv.w(R.DRIVER_FEATURES_SEL, 1)
    drv.w(R.DRIVER_FEATURES, 1)  # status 0: ignored
    drv.negotiate(want=0, drop=0)
    assert not drv.features_ok()  # nothing (not even VERSION_1) was accepted
    acked = drv.negotiate(want=1 << VIRTIO_F_VERSION_1 | 1 << 50)
    assert acked == 1 << VIRTIO_F_VERSION_1  # unknown bits are not offered, so not acked
    assert dev.acked_features == 1 << VIRTIO_F_VERSION_1


def test_queue_registers_locked_after_features_ok_window(setup) -> None:
    _, _, drv, _ = setup
    drv.w(R.QUEUE_SEL, 0)
    drv.w(R.QUEUE_NUM, 16)  # status 0: ignored
    drv.start()
    q = drv.transport.queues[0]
    assert q.size == 64 and q.ready
    drv.w(R.QUEUE_NUM, 16)  # after DRIVER_OK: ignored
    assert q.size == 64


def test_bad_ring_at_queue_ready_sets_needs_reset(setup) -> None:
    _t, _, drv, _ = setup
    drv.negotiate()
    drv.w(R.QUEUE_SEL, 0)
    drv.w(R.QUEUE_NUM, 64)
    drv.w(R.QUEUE_DESC_LOW, 0x1000)
    drv.w(R.QUEUE_DESC_HIGH, 0x10)  # far outside RAM
    drv.w(R.QUEUE_READY, 1)
    assert drv.r(R.QUEUE_READY) == 0
    assert drv.status & R.STATUS_DEVICE_NEEDS_RESET
    assert drv.r(R.INTERRUPT_STATUS) & R.INT_CONFIG


def test_activation_failure_sets_needs_reset() -> None:
    mem = GuestMemory.anonymous([(0, 4 * MiB)])
    t = M.MmioTransport(Echo(fail_activate=True), mem)
    drv = Driver(t, mem, Allocator(0x1000, 4 * MiB))
    drv.negotiate()
    drv.setup_queue(0)
    drv.driver_ok()
    assert drv.status & R.STATUS_DEVICE_NEEDS_RESET
    assert drv.interrupts == 1 and drv.ack_interrupt() == R.INT_CONFIG
    t.close()


def test_broken_avail_index_needs_reset_without_raising(setup) -> None:
    t, dev, drv, _ = setup
    drv.start()
    q = drv.queues[0]
    q.set_avail_idx(1000)
    t.notify(0)  # must not raise
    assert drv.status & R.STATUS_DEVICE_NEEDS_RESET
    assert dev.broken and dev.stats.errors == 1
    t.notify(0)  # further kicks are ignored
    assert dev.stats.errors == 1
    # Reset brings it back.
    drv.start()
    q = drv.queues[0]
    q.add([b"ok"], [2])
    q.kick()
    assert [c.data for c in q.collect()] == [b"ok"]


def test_kick_before_driver_ok_is_not_lost(setup) -> None:
    t, _, drv, _ = setup
    drv.negotiate()
    q = drv.setup_queue(0)
    q.add([b"early"], [5])
    t.notify(0)  # before DRIVER_OK: dropped by the transport
    assert q.collect() == []
    drv.driver_ok()
    assert [c.data for c in q.collect()] == [b"early"]


def test_reset_clears_state_and_generation_is_monotonic(setup) -> None:
    t, dev, drv, _ = setup
    drv.start()
    dev.interrupt.signal_config()
    gen = drv.r(R.CONFIG_GENERATION)
    assert gen == 1
    drv.w(R.STATUS, 0)
    assert drv.status == 0 and dev.resets == 1 and not dev.active
    assert not t.queues[0].ready and t.queues[0].size == 64
    assert drv.r(R.CONFIG_GENERATION) == gen
    assert drv.r(R.INTERRUPT_STATUS) == 0


def test_config_space_widths_and_write_permission(setup) -> None:
    t, _dev, drv, _ = setup
    assert drv.config(0, 1) == 1
    assert drv.config(0, 2) == 0x0201
    assert drv.config(4, 4) == 0x08070605
    assert drv.config(0, 8) == 0x0807060504030201
    assert drv.config(6, 4) == 0x0807  # past the end reads zero
    assert t.read(R.CONFIG, 3) == 0
    t.write(R.CONFIG, 1, 0xAA)  # status 0: not allowed
    assert drv.config(0, 1) == 1
    drv.negotiate()
    t.write(R.CONFIG, 1, 0xAA)
    assert drv.config(0, 1) == 0xAA


def test_irqfd_is_written(setup) -> None:
    t, _dev, drv, _ = setup
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        drv.start()
        t.set_interrupt(efd)
        q = drv.queues[0]
        q.add([b"x"], [1])
        q.kick()
        assert os.eventfd_read(efd) == 1
    finally:
        os.close(efd)


def test_queue_eventfd_drives_notify(setup) -> None:
    t, _, drv, _ = setup
    drv.start()
    q = drv.queues[1]
    q.add([b"via eventfd"], [11])
    os.eventfd_write(t.queue_eventfd(1), 1)
    t.on_queue_event(1)
    assert [c.data for c in q.collect()] == [b"via eventfd"]
    t.on_queue_event(1)  # empty eventfd: nothing happens, no error


def test_event_idx_negotiated_reaches_the_queue(setup) -> None:
    t, _, drv, _ = setup
    drv.start()
    assert t.queues[0].event_idx
    drv.start(drop=1 << VIRTIO_F_RING_EVENT_IDX)
    assert not t.queues[0].event_idx

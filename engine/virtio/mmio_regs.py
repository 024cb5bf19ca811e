"""virtio-mmio version 2's register map (virtio 1.2 §4.2.2): offsets, status bits, the status
changes a driver may make, InterruptStatus bits.

One table of numbers for the transport (``mmio.py``, ``mmio_events.py``), its snapshot state
(``mmio_state.py``), the test driver and the fuzzers. Imported by name: a register access reads
a module global as before.
"""

from __future__ import annotations

MMIO_MAGIC = 0x74726976  # "virt"
MMIO_VERSION = 2
VENDOR_ID = 0x4C56_5653  # "SVVL"

STATUS_ACKNOWLEDGE = 0x01
STATUS_DRIVER = 0x02
STATUS_DRIVER_OK = 0x04
STATUS_FEATURES_OK = 0x08
STATUS_DEVICE_NEEDS_RESET = 0x40
STATUS_FAILED = 0x80

INT_VRING = 0x1
INT_CONFIG = 0x2

_A, _D, _F, _K = STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_FEATURES_OK, STATUS_DRIVER_OK
#: The only status changes a driver may make (besides 0 = reset and OR-ing FAILED).
VALID_TRANSITIONS = frozenset(
    {(0, _A), (_A, _A | _D), (_A | _D, _A | _D | _F), (_A | _D | _F, _A | _D | _F | _K)}
)

# Register offsets.
MAGIC, VERSION, DEVICE_ID, VENDOR = 0x000, 0x004, 0x008, 0x00C
DEVICE_FEATURES, DEVICE_FEATURES_SEL = 0x010, 0x014
DRIVER_FEATURES, DRIVER_FEATURES_SEL = 0x020, 0x024
QUEUE_SEL, QUEUE_NUM_MAX, QUEUE_NUM, QUEUE_READY, QUEUE_NOTIFY = 0x030, 0x034, 0x038, 0x044, 0x050
INTERRUPT_STATUS, INTERRUPT_ACK, STATUS = 0x060, 0x064, 0x070
QUEUE_DESC_LOW, QUEUE_DESC_HIGH = 0x080, 0x084
QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH = 0x090, 0x094
QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH = 0x0A0, 0x0A4
SHM_LEN_LOW, SHM_LEN_HIGH = 0x0B0, 0x0B4
CONFIG_GENERATION = 0x0FC
CONFIG = 0x100
WINDOW_SIZE = 0x200

QUEUE_ADDR_REGS = {
    QUEUE_DESC_LOW: ("desc_addr", 0),
    QUEUE_DESC_HIGH: ("desc_addr", 32),
    QUEUE_DRIVER_LOW: ("avail_addr", 0),
    QUEUE_DRIVER_HIGH: ("avail_addr", 32),
    QUEUE_DEVICE_LOW: ("used_addr", 0),
    QUEUE_DEVICE_HIGH: ("used_addr", 32),
}

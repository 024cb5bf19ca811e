"""virtio-blk's wire format (virtio 1.2 §5.2): feature bits, request types, status bytes and the
config space layout (the request header and the discard segment are ``blk_request.py``'s).

Apart from the device so that the device (``blk.py``), its request path (``blk_request.py``),
tests and benchmarks share one copy of the numbers without importing each other.
"""

from __future__ import annotations

import struct

VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_F_MQ = 12
VIRTIO_BLK_F_DISCARD = 13
VIRTIO_BLK_F_WRITE_ZEROES = 14

VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13

VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2

SECTOR = 512
ID_BYTES = 20
SIZE_MAX = 1 << 20  # largest single buffer we advertise
MAX_DISCARD_SECTORS = 0x3F_FFFF  # 2 GiB per discard / write-zeroes request
CONFIG = struct.Struct("<QII4xI8xBxHIIIIIB3x")

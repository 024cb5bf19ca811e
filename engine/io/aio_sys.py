"""The Linux AIO and io_uring ABI: C declarations (cffi, ABI mode), numbers, raw system calls.

Why raw system calls and not libaio/liburing: both libraries' hot paths (``io_prep_*``,
``io_uring_get_sqe``/``io_uring_prep_*``/``io_uring_cqe_seen``) are inline functions in their
headers, which an ABI-mode binding cannot call, so a binding would fill the same structs by hand
anyway; the system calls are the stable ABI (``include/uapi/linux/aio_abi.h``,
``include/uapi/linux/io_uring.h``). ``syscall(2)`` is declared with six ``long`` arguments: glibc's
x86_64 ``syscall`` only moves registers, so a fixed prototype is exact and cheaper to call than
a variadic one. ``_aio_ffi.py`` is generated from ``CDEF`` (``python -m engine.io.aio_sys``),
as ``engine/machine/_kvm_ffi.py`` is, so importing this parses no C.
"""

from __future__ import annotations

from typing import Any

CDEF = """
    long syscall(long number, long a1, long a2, long a3, long a4, long a5, long a6);
    long preadv(int fd, const char *iov, int iovcnt, long offset);
    long pwritev(int fd, const char *iov, int iovcnt, long offset);

    struct iocb {
        uint64_t aio_data; uint32_t aio_key; int32_t aio_rw_flags;
        uint16_t aio_lio_opcode; int16_t aio_reqprio; uint32_t aio_fildes;
        uint64_t aio_buf; uint64_t aio_nbytes; int64_t aio_offset;
        uint64_t aio_reserved2; uint32_t aio_flags; uint32_t aio_resfd;
    };
    struct io_event { uint64_t data; uint64_t obj; int64_t res; int64_t res2; };

    struct io_sqring_offsets {
        uint32_t head, tail, ring_mask, ring_entries, flags, dropped, array, resv1;
        uint64_t user_addr;
    };
    struct io_cqring_offsets {
        uint32_t head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1;
        uint64_t user_addr;
    };
    struct io_uring_params {
        uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle, features, wq_fd;
        uint32_t resv[3];
        struct io_sqring_offsets sq_off;
        struct io_cqring_offsets cq_off;
    };
    struct io_uring_sqe {
        uint8_t opcode; uint8_t flags; uint16_t ioprio; int32_t fd;
        uint64_t off; uint64_t addr; uint32_t len; uint32_t rw_flags; uint64_t user_data;
        uint16_t buf_index; uint16_t personality; int32_t splice_fd_in;
        uint64_t addr3; uint64_t pad2;
    };
    struct io_uring_cqe { uint64_t user_data; int32_t res; uint32_t flags; };
    struct io_uring_restriction {
        uint16_t opcode; uint8_t op; uint8_t resv; uint32_t resv2[3];
    };
    struct io_uring_probe_op { uint8_t op; uint8_t resv; uint16_t flags; uint32_t resv2; };
    struct io_uring_probe {
        uint8_t last_op; uint8_t ops_len; uint16_t resv; uint32_t resv2[3];
        struct io_uring_probe_op ops[256];
    };
"""

FFI_MODULE = "engine.io._aio_ffi"
FFI_HEADER = "# ruff: noqa\n# fmt: off\n# Generated from engine/io/aio_sys.py CDEF: python -m engine.io.aio_sys\n"

# x86_64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl)
SYS_IO_SETUP = 206
SYS_IO_DESTROY = 207
SYS_IO_GETEVENTS = 208
SYS_IO_SUBMIT = 209
SYS_IO_URING_SETUP = 425
SYS_IO_URING_ENTER = 426
SYS_IO_URING_REGISTER = 427

# aio_abi.h
IOCB_CMD_FSYNC = 2
IOCB_CMD_FDSYNC = 3
IOCB_CMD_PREADV = 7
IOCB_CMD_PWRITEV = 8
IOCB_FLAG_RESFD = 1

# io_uring.h
IORING_SETUP_CQSIZE = 1 << 3
IORING_SETUP_R_DISABLED = 1 << 6
IORING_FEAT_SINGLE_MMAP = 1 << 0
IORING_FEAT_NODROP = 1 << 1
IORING_FEAT_SUBMIT_STABLE = 1 << 2
IORING_OFF_SQ_RING = 0
IORING_OFF_CQ_RING = 0x8000000
IORING_OFF_SQES = 0x10000000
IORING_ENTER_GETEVENTS = 1
IORING_OP_READV = 1
IORING_OP_WRITEV = 2
IORING_OP_FSYNC = 3
IORING_FSYNC_DATASYNC = 1
IOSQE_FIXED_FILE = 1 << 0
IOSQE_IO_DRAIN = 1 << 1
IORING_REGISTER_FILES = 2
IORING_REGISTER_EVENTFD = 4
IORING_REGISTER_PROBE = 8
IORING_REGISTER_RESTRICTIONS = 11
IORING_REGISTER_ENABLE_RINGS = 12
IORING_RESTRICTION_SQE_OP = 1
IORING_RESTRICTION_SQE_FLAGS_ALLOWED = 2
IORING_RESTRICTION_SQE_FLAGS_REQUIRED = 3
IO_URING_OP_SUPPORTED = 1


def build_ffi(*, out_of_line: bool = False) -> Any:
    """A cffi ``FFI`` parsed from ``CDEF`` (the slow path; also what generates ``_aio_ffi``)."""
    from engine import cffi_gen

    return cffi_gen.build_ffi(CDEF, FFI_MODULE if out_of_line else None)


def write_ffi_module(path: str) -> None:
    """Regenerate ``_aio_ffi.py`` (``python -m engine.io.aio_sys``) after editing ``CDEF``."""
    from engine import cffi_gen

    cffi_gen.write_ffi_module(CDEF, FFI_MODULE, FFI_HEADER, path)


try:  # the pre-built FFI: no C parsing at start-up
    from engine.io._aio_ffi import ffi
except ImportError:  # pragma: no cover - only when the generated module is missing
    ffi = build_ffi()

libc = ffi.dlopen(None)
_syscall = libc.syscall


def syscall(number: int, *args: int) -> int:
    """``syscall(number, args...)``; raises ``OSError`` (errno, strerror) on failure."""
    ret = _syscall(number, *args, *(0,) * (6 - len(args)))
    if ret < 0:
        import os

        err = ffi.errno
        raise OSError(err, os.strerror(err))
    return ret


def address(cdata: Any) -> int:
    """The address of a cffi object, for a system call argument."""
    return int(ffi.cast("uintptr_t", cdata))


if __name__ == "__main__":  # pragma: no cover
    import pathlib

    write_ffi_module(str(pathlib.Path(__file__).with_name("_aio_ffi.py")))

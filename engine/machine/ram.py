"""Guest RAM from the plan: anonymous or file/hugetlbfs-backed, shared, bound, preallocated.

``create_guest_memory(plan.memory)`` makes one ``GuestRegion`` per plan range (a NUMA node piece,
or the pieces below and above the 32-bit MMIO hole) and does the host-side set-up in this order,
because each step depends on the previous one:

1. check the host NUMA nodes the plan binds to (fail before anything is mapped);
2. map each range: anonymous, or at consecutive offsets of one ``mem-path`` file (a file is
   used as is, a folder gets an unlinked temporary file: hugetlbfs mounts are folders);
   ``MAP_SHARED`` when ``mem-share`` (a file-backed private mapping is copy-on-write);
3. ``MADV_DONTDUMP`` when ``dump-guest-core`` is off, so host core dumps leave guest RAM out;
4. ``mbind`` each host binding, *before* any page is touched (first touch places pages);
5. ``prealloc``: fault every page in now (``MADV_POPULATE_WRITE``, chunked, with progress).

A restore (``engine/snapshot/restore.py``) maps each range from the snapshot's memory file
instead (``from_file``): ``MAP_PRIVATE``, so pages are read when the guest first touches them
and its writes are copy-on-write, never reaching the template's file.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from collections.abc import Callable

from engine.errors import EngineError, HostError
from engine.machine.kvm_sys import ffi, libc
from engine.machine.memory import GuestMemory, GuestRegion, map_anonymous
from engine.plan import MemoryPlan

MADV_DONTDUMP = 16
MADV_POPULATE_WRITE = 23
PREALLOC_CHUNK = 256 << 20
HUGETLBFS_MAGIC = 0x958458F6

Progress = Callable[[int, int], None]


class MemoryLayoutError(EngineError):
    """The plan's memory ranges are inconsistent (a compiler bug or a hand-edited plan)."""


def _madvise(region: GuestRegion, offset: int, length: int, advice: int) -> int:
    r = libc.madvise(ffi.cast("void *", region.host_addr + offset), length, advice)
    return 0 if r == 0 else ffi.errno


def _page_size_of(path: str) -> int:
    """The page size a file on ``path``'s filesystem is mapped with (huge on hugetlbfs)."""
    st = os.statvfs(path)
    return max(st.f_bsize, mmap.PAGESIZE)


def _open_backing(mem_path: str, total: int) -> tuple[int, int]:
    """An fd of at least ``total`` bytes on ``mem_path`` and its page size."""
    try:
        if os.path.isdir(mem_path):
            import tempfile

            fd, name = tempfile.mkstemp(prefix="svlaunch-ram-", dir=mem_path)
            os.unlink(name)
        else:
            fd = os.open(mem_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise HostError(
            f"memory backend {mem_path}: {e.strerror}",
            hint="mem-path must be a writable file or folder (e.g. a hugetlbfs mount)",
        ) from None
    page = _page_size_of(mem_path if os.path.isdir(mem_path) else os.path.dirname(mem_path) or ".")
    if total % page:
        os.close(fd)
        raise HostError(
            f"memory size {total} is not a multiple of {mem_path}'s page size {page}",
            hint="use a memory size that is a multiple of the huge page size",
        )
    try:
        if os.fstat(fd).st_size < total:
            os.ftruncate(fd, total)
    except OSError as e:
        os.close(fd)
        raise HostError(
            f"memory backend {mem_path}: cannot size it to {total} bytes: {e.strerror}"
        ) from None
    return fd, page


def prealloc(mem: GuestMemory, progress: Progress | None = None) -> None:
    """Fault in every page of guest RAM, in chunks, reporting ``(done, total)`` bytes."""
    total, done = mem.total_size, 0
    for r in mem.regions:
        off = 0
        while off < r.size:
            n = min(PREALLOC_CHUNK, r.size - off)
            err = _madvise(r, off, n, MADV_POPULATE_WRITE)
            if err == errno.EINVAL:  # kernel before 5.14: touch one byte per page
                view = memoryview(r.mapping)
                for p in range(off, off + n, mmap.PAGESIZE):
                    view[p] = view[p]
                view.release()
            elif err:
                raise HostError(
                    f"cannot preallocate guest RAM at {r.guest_addr + off:#x}: {os.strerror(err)}",
                    hint="the host (or its hugepage pool) lacks memory: lower the size or turn prealloc off",
                )
            off += n
            done += n
            if progress is not None:
                progress(done, total)


def create_guest_memory(
    plan: MemoryPlan,
    *,
    progress: Progress | None = None,
    sysfs_node_root: str = "/sys/devices/system/node",
    from_file: tuple[int, dict[int, int]] | None = None,
) -> GuestMemory:
    """Guest RAM for ``plan``. ``from_file``: (a snapshot memory file, {guest address: file
    offset} for every range): each range is that file's pages, mapped private."""
    if plan.bindings:  # lazy: the NUMA helpers pull in pathlib
        from engine.numa.host import check_host_nodes

        check_host_nodes(plan.bindings, sysfs_node_root)
    ranges = sorted((r.guest_addr, r.size) for r in plan.ranges)
    if sum(s for _, s in ranges) != plan.size:
        raise MemoryLayoutError(
            f"memory ranges add up to {sum(s for _, s in ranges)} bytes, the plan says {plan.size}"
        )
    hole_lo, hole_size = plan.mmio_hole
    for addr, size in ranges:
        if addr % mmap.PAGESIZE or size % mmap.PAGESIZE or size <= 0:
            raise MemoryLayoutError(f"memory range {addr:#x}+{size:#x} is not page-aligned")
        if addr < hole_lo + hole_size and hole_lo < addr + size:
            raise MemoryLayoutError(f"memory range {addr:#x}+{size:#x} overlaps the MMIO hole")
    regions: list[GuestRegion] = []
    fd = -1
    try:
        if plan.mem_path:
            fd, _page = _open_backing(plan.mem_path, plan.size)
        offset = 0
        for addr, size in ranges:
            if from_file is not None:
                src, offsets = from_file
                m = mmap.mmap(
                    src,
                    size,
                    flags=mmap.MAP_PRIVATE,
                    prot=mmap.PROT_READ | mmap.PROT_WRITE,
                    offset=offsets[addr],
                )
                regions.append(GuestRegion(addr, size, m, file_backed=True))
                continue
            if fd >= 0:
                flags = mmap.MAP_SHARED if plan.shared else mmap.MAP_PRIVATE
                m = mmap.mmap(
                    fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset
                )
            else:
                m = map_anonymous(size, shared=plan.shared)
            regions.append(GuestRegion(addr, size, m, file_backed=fd >= 0, shared=plan.shared))
            offset += size
    except OSError as e:
        for r in regions:
            r.release()
        raise HostError(
            f"cannot map {plan.size} bytes of guest RAM: {e.strerror}",
            hint="lower the memory size or free host memory",
        ) from None
    finally:
        if fd >= 0:
            os.close(fd)
    mem = GuestMemory(regions)
    if not plan.dump_guest_core:
        for r in mem.regions:
            _madvise(r, 0, r.size, MADV_DONTDUMP)
    if plan.bindings:
        from engine.numa.host import bind_memory

        bind_memory(mem, plan.bindings)
    if plan.prealloc:
        prealloc(mem, progress)
    return mem


def is_hugetlbfs(path: str) -> bool:
    with contextlib.suppress(OSError):
        return _page_size_of(path) > mmap.PAGESIZE
    return False

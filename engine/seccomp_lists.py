"""The engine's syscall allow-lists, one per thread role, each syscall with the reason it is needed.

Only what the engine calls *after set-up* (``install`` runs at the start of each run loop): KVM
and device set-up, mbind, opening /dev/kvm and the drives all happen before. Every thread runs
Python, and CPython may do its own work on any thread (allocation, the GIL, garbage collection,
logging), so ``RUNTIME`` is in every list; the role lists add what that role's loop does.
Measured with ``scripts/measure-syscalls`` (strace over the engine's tests); see docs/sandbox.md.
"""

from __future__ import annotations

#: CPython and glibc on any thread
RUNTIME: dict[str, str] = {
    "read": "fd reads: eventfds, tap, chardevs, QMP",
    "write": "fd writes: eventfds, irqfds, serial/console output, logging",
    "close": "closing fds (QMP clients, hot-unplugged backends)",
    "fstat": "CPython stats a file before reading it",
    "newfstatat": 'glibc\'s fstat is newfstatat(fd, "", AT_EMPTY_PATH)',
    "lseek": "buffered file objects seek",
    "fcntl": "O_NONBLOCK / CLOEXEC flags on new fds",
    "mmap": "malloc arenas, pymalloc arenas, thread stacks",
    "munmap": "freeing what mmap gave",
    "mprotect": "glibc grows a thread's malloc heap with mprotect",
    "madvise": "glibc trims freed heap (MADV_DONTNEED); balloon frees guest pages",
    "brk": "main-arena malloc",
    "mremap": "large realloc",
    "futex": "the GIL, locks, conditions, queues",
    "sched_yield": "lock spinning in glibc",
    "rt_sigprocmask": "glibc blocks signals around critical sections",
    "rt_sigaction": "signal.signal, and CPython restores handlers at exit",
    "rt_sigreturn": "return from a signal handler (SIGINT/SIGTERM, vCPU kick)",
    "restart_syscall": "the kernel resumes a sleep with a timeout (the GIL's futex wait, "
    "nanosleep, poll) that a signal or io_uring's task work interrupted",
    "getpid": "CPython checks the pid (fork safety, logging)",
    "gettid": "threading.get_native_id, logging",
    "clock_gettime": "time.monotonic when the vDSO is not used",
    "clock_nanosleep": "time.sleep (rate limiters, pause loops)",
    "nanosleep": "older time.sleep path",
    "getrandom": "random/os.urandom (MAC generation, hash seeds)",
    "exit": "a thread ends",
    "exit_group": "the engine exits (QMP quit, guest shutdown)",
    "ioctl": "KVM ioctls (vCPU run, irq lines), TUN, terminal settings",
    "poll": "select/poll on single fds",
    "ppoll": "poll with a timeout",
    "epoll_wait": "event loops",
    "epoll_pwait": "event loops (glibc may use the p variant)",
    "epoll_ctl": "add/remove fds in event loops",
    "eventfd2": "event loops made at run time (hot-plug, iothreads)",
    "tgkill": "kicking a vCPU thread out of KVM_RUN (pthread_kill)",
    "rseq": "glibc registers rseq for each new thread",
    "set_robust_list": "glibc: every new thread",
    "sigaltstack": "CPython's faulthandler alternate stack per thread",
    "openat": "lazy imports (the stdlib imports in error paths); the jail bounds what opens",
    "getdents64": "the import system lists package directories",
    "readlink": "os.path.realpath during imports",
    "lstat": "import system path checks",
    "stat": "import system path checks",
}

#: virtio-blk image and tap reads/writes: every thread that serves a device queue
DATA_PATH: dict[str, str] = {
    "preadv": "virtio-blk scatter reads",
    "pwritev": "virtio-blk scatter writes",
    "preadv2": "virtio-blk scatter reads (CPython built with preadv2 calls it for os.preadv)",
    "pwritev2": "virtio-blk scatter writes (CPython built with pwritev2 calls it for os.pwritev)",
    "fdatasync": "virtio-blk flush",
    "readv": "tap reads",
    "writev": "tap writes",
}

#: virtio-blk flush and discard as the main loop and iothreads serve them
BLK_MAINTENANCE: dict[str, str] = {
    "fsync": "virtio-blk flush",
    "fallocate": "virtio-blk discard/write-zeroes",
}

#: virtio-blk's asynchronous back ends (engine/io): submitting, reaping, and waiting for what is
#: in flight (a device reset drains on the vCPU thread that wrote the status register; closing a
#: drive drains on whichever thread closes it)
BLK_ASYNC: dict[str, str] = {
    "io_submit": "aio=native: a batch of requests",
    "io_getevents": "aio=native: completions, and draining at reset or close",
    "io_destroy": "aio=native: closing a drive (hot-unplug, replace)",
    "io_uring_enter": "aio=io_uring: a batch of requests, and draining at reset or close",
}

#: setting up a drive's asynchronous back end: at start-up, and on the main thread for hot-plug
BLK_SETUP: dict[str, str] = {
    "io_setup": "aio=native: a hot-plugged drive's AIO context",
    "io_uring_setup": "aio=io_uring: a hot-plugged drive's ring",
    "io_uring_register": "aio=io_uring: its file, eventfd and restrictions",
}

#: the main thread: QMP, lifecycle, thread creation, hot-plug
MAIN: dict[str, str] = {
    "accept4": "QMP: a client connects",
    "recvfrom": "QMP: socket reads",
    "sendto": "QMP: socket writes",
    "recvmsg": "QMP: socket reads with fds (getfd)",
    "sendmsg": "QMP: socket writes",
    "shutdown": "QMP: close a client",
    "getsockopt": "socket error checks",
    "setsockopt": "socket options on accepted QMP clients",
    "getsockname": "socket objects query their address",
    "getpeername": "socket objects query their peer",
    "clone": "starting vCPU/iothreads (resume, hot-plug)",
    "clone3": "glibc ≥ 2.34 starts threads with clone3",
    "fstatfs": "hot-plug: the host-file check refuses files on /proc, /sys (engine.hostfiles)",
    "unlink": "removing the QMP socket on exit",
    "unlinkat": "removing the QMP socket on exit",
    "pread64": "virtio-blk served on the main loop",
    "pwrite64": "virtio-blk served on the main loop",
    **DATA_PATH,
    **BLK_MAINTENANCE,
    **BLK_ASYNC,
    **BLK_SETUP,
    "timerfd_create": "rate limiters (rng max-bytes, blk iops) of devices on the main loop",
    "timerfd_settime": "rate limiters of devices on the main loop",
    "socket": "netdev_add of a tap: pyroute2's IPRoute opens a NETLINK_ROUTE socket",
    "socketpair": "netdev_add of a tap: pyroute2's asyncio loop makes its self-pipe",
    "epoll_create1": "netdev_add of a tap: pyroute2's asyncio loop (an epoll of its own)",
    "wait4": "reaping nothing: CPython's os.waitpid in shutdown paths",
    "kill": "signalling itself on fatal errors",
    "getcwd": "os.path.abspath in error messages",
    "sched_getaffinity": "os.cpu_count",
    "prlimit64": "resource queries",
    "uname": "platform queries in logging",
    # QMP migrate to file:DIR (engine/snapshot/save.py: its writer thread inherits this list)
    "mkdir": "QMP migrate: the snapshot folder",
    "mkdirat": "QMP migrate: the snapshot folder (glibc may use the at variant)",
    "ftruncate": "QMP migrate: the memory file is sized before its holes are left",
    "rename": "QMP migrate: the finished files take their names",
    "renameat": "QMP migrate: the finished files take their names (relative to the folder)",
    "renameat2": "QMP migrate: glibc's renameat may be renameat2",
}

#: a vCPU thread: KVM_RUN and the MMIO/PIO it handles in place
VCPU: dict[str, str] = {
    "pread64": "virtio-blk requests kicked from the vCPU",
    "pwrite64": "virtio-blk requests kicked from the vCPU",
    **DATA_PATH,
    **BLK_MAINTENANCE,  # a request served in place may be a flush or a discard, too
    **BLK_ASYNC,
    "sendto": "UART output to a socket chardev, written in place by the vCPU that stored THR",
    "sendmsg": "UART output to a socket chardev (socket.sendall may use sendmsg)",
    "recvfrom": "UART input polled from a socket chardev when the guest reads RBR",
}

#: an iothread / device event loop
IO: dict[str, str] = {
    "pread64": "virtio-blk",
    "pwrite64": "virtio-blk",
    **DATA_PATH,
    **BLK_MAINTENANCE,
    **BLK_ASYNC,
    "recvfrom": "socket chardevs",
    "sendto": "socket chardevs",
    "accept4": "socket chardev server",
    "timerfd_create": "rate limiters",
    "timerfd_settime": "rate limiters",
}

ROLES: dict[str, dict[str, str]] = {"main": MAIN, "vcpu": VCPU, "io": IO}

#: a syscall no role allows, used by the test trigger (harmless: it only queries)
FORBIDDEN_FOR_TESTS = "personality"


def allowed(role: str) -> dict[str, str]:
    """syscall → reason, for ``role`` ("main", "vcpu", "io")."""
    return {**RUNTIME, **ROLES[role]}

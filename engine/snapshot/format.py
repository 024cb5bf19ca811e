"""The snapshot folder: ``state`` and ``memory``, versioned, self-describing, checksummed.

StratoVirt writes the same two files (``docs/snapshot.md``). Here:

``state``::

    0   8  magic b"SVLSNAP\\n"
    8   4  format version (u32 LE)
    12  8  payload length (u64 LE)
    20 32  SHA-256 of the payload
    52  -  payload: UTF-8 JSON {"format", "version", "plan", "memory", "kvm", "vcpus",
           "devices", "serial", "ged", ...}: every value named, binary KVM structs in base64

``memory``::

    0   4096  header page: magic b"SVLSNAPM", version (u32), 4 reserved bytes, data length
              (u64), snapshot id (16 bytes, also in ``state``), SHA-256 of the data (32 bytes)
    4096  -   guest RAM, region after region (``state`` gives each region's offset)

Why a header page: restore maps the data with ``MAP_PRIVATE`` at page-aligned offsets, lazily,
so restore time does not grow with guest RAM; the header binds the file to its ``state`` (the
id) and gives its length, so a truncated or foreign memory file is refused before anything is
built. The data's SHA-256 is written too, but checking it reads all of guest RAM: that is
``verify_memory`` (``svlaunch snapshot --verify``), not part of every restore.

Every check here runs before the engine touches KVM; a failure is one ``SnapshotError`` naming
the file and what is wrong. Standard library only (the launcher reads ``state`` too).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from typing import Any

from engine.errors import HostError

FORMAT = "svlaunch-snapshot"
VERSION = 1
STATE_FILE = "state"
MEMORY_FILE = "memory"
STATE_MAGIC = b"SVLSNAP\n"
MEMORY_MAGIC = b"SVLSNAPM"
_STATE_HEAD = struct.Struct("<8sIQ32s")
_MEMORY_HEAD = struct.Struct("<8sI4xQ16s32s")
MEMORY_DATA_OFFSET = 4096
#: a state payload larger than this is not one this engine wrote (a few KiB per vCPU/device)
MAX_STATE = 64 << 20


class SnapshotError(HostError):
    """A snapshot that cannot be read, written or restored: names the file and the reason."""


@dataclass(frozen=True, slots=True)
class StateFile:
    """A checked ``state`` payload and the folder it came from."""

    folder: str
    payload: dict[str, Any]


def _err(path: str, what: str, hint: str = "") -> SnapshotError:
    return SnapshotError(
        f"snapshot {path}: {what}",
        hint=hint or "take the snapshot again (QMP migrate, svlaunch snapshot NAME DIR)",
    )


def snapshot_folder(uri: str) -> str:
    """``file:DIR`` → DIR (StratoVirt accepts the scheme in any case); ``ValueError`` else."""
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme.lower() != "file" or not rest:
        raise ValueError(f"{uri!r} is not file:DIR")
    return rest


# -- writing ----------------------------------------------------------------------------------


def open_new_folder(folder: str) -> int:
    """A descriptor of ``folder`` for a new snapshot: created (0700) when absent; refused when it
    is a symlink, not a folder, or already holds a snapshot (nothing is overwritten)."""
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise _err(
            folder, f"cannot create the folder: {e.strerror}", "give a writable folder"
        ) from None
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise _err(
            folder,
            "is a symlink" if os.path.islink(folder) else f"cannot open it: {e.strerror}",
            "give a folder (it is created when absent)",
        ) from None
    for name in (STATE_FILE, MEMORY_FILE):
        try:
            os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        os.close(fd)
        raise _err(
            folder,
            f"already holds a snapshot ({name})",
            "a snapshot is never overwritten: remove it or give another folder",
        )
    return fd


def create_temp(dir_fd: int, name: str) -> tuple[int, str]:
    """A new file ``.NAME.partial-<pid>`` in the folder (O_EXCL, no symlink), 0600."""
    tmp = f".{name}.partial-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dir_fd)  # left by an engine of this pid that died mid-write
    fd = os.open(
        tmp,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
        dir_fd=dir_fd,
    )
    return fd, tmp


def memory_header(data_len: int, snap_id: bytes, digest: bytes) -> bytes:
    head = _MEMORY_HEAD.pack(MEMORY_MAGIC, VERSION, data_len, snap_id, digest)
    return head.ljust(MEMORY_DATA_OFFSET, b"\0")


def state_bytes(payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _STATE_HEAD.pack(STATE_MAGIC, VERSION, len(body), hashlib.sha256(body).digest()) + body


# -- reading ----------------------------------------------------------------------------------


def _read_all(fd: int, limit: int) -> bytes:
    chunks, total = [], 0
    while total <= limit:
        b = os.read(fd, min(1 << 20, limit + 1 - total))
        if not b:
            break
        chunks.append(b)
        total += len(b)
    return b"".join(chunks)


def read_state(folder: str) -> StateFile:
    """The checked payload of ``folder/state``: magic, version, length and SHA-256."""
    path = os.path.join(folder, STATE_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        hint = "give the folder QMP migrate wrote (file:DIR)" if e.errno == 2 else ""
        raise _err(path, f"cannot open it: {e.strerror}", hint) from None
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _err(path, "is not a regular file")
        data = _read_all(fd, _STATE_HEAD.size + MAX_STATE)
    finally:
        os.close(fd)
    if len(data) < _STATE_HEAD.size:
        raise _err(path, f"is truncated ({len(data)} bytes, not even a header)")
    magic, version, length, digest = _STATE_HEAD.unpack_from(data)
    if magic != STATE_MAGIC:
        raise _err(path, "is not an svlaunch snapshot state file (bad magic)")
    if version != VERSION:
        raise _err(
            path,
            f"has format version {version}; this engine reads version {VERSION}",
            "restore it with the svlaunch that wrote it, or take a new snapshot",
        )
    body = data[_STATE_HEAD.size :]
    if len(body) != length:
        what = "truncated" if len(body) < length else "longer than its header says"
        raise _err(path, f"is {what}: {len(body)} payload bytes, the header says {length}")
    if hashlib.sha256(body).digest() != digest:
        raise _err(path, "is corrupted: its SHA-256 does not match the header")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise _err(path, f"payload is not JSON: {e}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise _err(path, f"payload is not a {FORMAT} document")
    if payload.get("version") != VERSION:
        raise _err(path, f"payload version {payload.get('version')!r} is not {VERSION}")
    return StateFile(folder, payload)


@dataclass(frozen=True, slots=True)
class MemoryFile:
    """An open, checked ``memory`` file: map its data at ``MEMORY_DATA_OFFSET + offset``."""

    fd: int
    path: str
    data_len: int
    digest: bytes

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def open_memory(folder: str, snap_id: bytes, data_len: int) -> MemoryFile:
    """``folder/memory``, checked against what ``state`` says: magic, version, id and length."""
    path = os.path.join(folder, MEMORY_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise _err(path, f"cannot open it: {e.strerror}") from None
    try:
        import stat

        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _err(path, "is not a regular file")
        head = os.pread(fd, _MEMORY_HEAD.size, 0)
        if len(head) < _MEMORY_HEAD.size:
            raise _err(path, f"is truncated ({st.st_size} bytes, not even a header)")
        magic, version, length, file_id, digest = _MEMORY_HEAD.unpack(head)
        if magic != MEMORY_MAGIC:
            raise _err(path, "is not an svlaunch snapshot memory file (bad magic)")
        if version != VERSION:
            raise _err(path, f"has format version {version}; this engine reads {VERSION}")
        if file_id != snap_id:
            raise _err(
                path,
                "belongs to another snapshot (its id differs from state's)",
                "keep the state and memory files of one snapshot together",
            )
        if length != data_len:
            raise _err(path, f"holds {length} bytes of RAM; state says {data_len}")
        if st.st_size != MEMORY_DATA_OFFSET + data_len:
            what = "truncated" if st.st_size < MEMORY_DATA_OFFSET + data_len else "too long"
            raise _err(
                path,
                f"is {what}: {st.st_size} bytes, expected {MEMORY_DATA_OFFSET + data_len}",
            )
    except BaseException:
        os.close(fd)
        raise
    return MemoryFile(fd, path, data_len, digest)


def memory_digest(fd: int, data_len: int, chunk: int = 8 << 20) -> bytes:
    """SHA-256 of the RAM data in a memory file (reads all of it)."""
    h = hashlib.sha256()
    off = 0
    while off < data_len:
        b = os.pread(fd, min(chunk, data_len - off), MEMORY_DATA_OFFSET + off)
        if not b:
            break
        h.update(b)
        off += len(b)
    return h.digest()


def verify_memory(mf: MemoryFile) -> None:
    """Read the whole memory file and check the SHA-256 its header records (opt-in: O(RAM))."""
    if memory_digest(mf.fd, mf.data_len) != mf.digest:
        raise _err(mf.path, "is corrupted: the RAM data's SHA-256 does not match its header")

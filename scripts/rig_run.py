"""Run one command inside the rig's L1 guest (QEMU TCG with nested SVM) and collect its results.

A run = the cached L1 layers + a small per-run archive (the project code, the run's files at their
host paths, the run description), one QEMU process, two serial ports (ttyS0: L1 diagnostics and
markers; ttyS1: the inner VMM's stdout), and a raw write-back disk that L1 fills with a tar of the
files the inner guest may have changed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import py_compile
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from rig_cpio import CpioWriter
from rig_debs import BUILD, REPO, BuildError, log
from rig_l1image import RIG, base_archive, qemu_archive

GUEST = BUILD / "guest"
PROJECT_DIRS = ("launcher", "engine", "schema")
L1_PROJECT = "/rig/project"
SKIP_PREFIXES = ("/dev/", "/proc/", "/sys/")
MAX_FILES_BYTES = 768 * 2**20  # L1 has 2 GiB of RAM and keeps every file in it
WB_ROOM = 64 * 2**20  # room for files that grow during the run (serial logs)
ANSI = re.compile(r"\x1b(c|\[[0-9;?]*[A-Za-z])")  # SeaBIOS clears the screen
QEMU_NOISE = "TCG doesn't support requested feature"  # EPYC model flags TCG lacks; harmless


@dataclass(frozen=True)
class HostFile:
    """A host path the inner VMM uses; placed at the same path in L1."""

    path: str
    writable: bool = False


@dataclass
class RunSpec:
    """What to run in L1, and with which files."""

    argv: list[str]
    cwd: str = "/"
    files: list[HostFile] = field(default_factory=list)
    setup: str | None = None
    with_qemu: bool = False
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class RunResult:
    """What came back: the inner VMM's exit status and timings (None when L1 never said)."""

    returncode: int
    inner_rc: int | None
    inner_s: float | None
    l1_up_s: float | None
    total_s: float
    timed_out: bool
    run_dir: Path


def _pyc(src: Path, l1_name: str) -> bytes:
    """Byte-code for one project module, cached by source hash (L1 must not compile under TCG)."""
    data = src.read_bytes()
    cache = RIG / "pyc" / (hashlib.sha256(data + l1_name.encode()).hexdigest() + ".pyc")
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = str(cache) + f".{os.getpid()}"
        mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
        py_compile.compile(str(src), tmp, dfile=l1_name, doraise=True, invalidation_mode=mode)
        os.replace(tmp, cache)
    return cache.read_bytes()


def _add_project(w: CpioWriter) -> None:
    tag = f"cpython-{sys.version_info[0]}{sys.version_info[1]}"
    for top in PROJECT_DIRS:
        root = REPO / top
        if not root.is_dir():
            continue
        for dirpath, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            rel = Path(dirpath).relative_to(REPO)
            for f in sorted(files):
                src = Path(dirpath) / f
                name = f"{L1_PROJECT}/{rel}/{f}"
                w.host_path(name, str(src))
                if f.endswith(".py"):
                    try:
                        pyc = _pyc(src, name)
                    except py_compile.PyCompileError:
                        continue  # L1 reports the syntax error when it imports the module
                    w.file(f"{L1_PROJECT}/{rel}/__pycache__/{f[:-3]}.{tag}.pyc", pyc)


def _add_files(w: CpioWriter, files: list[HostFile]) -> list[str]:
    """Place host files at their paths; return the paths to write back."""
    total = 0
    writeback: list[str] = []
    for hf in files:
        p = os.path.abspath(hf.path)
        if p.startswith(SKIP_PREFIXES) or p in ("/dev", "/proc", "/sys"):
            continue
        if os.path.isdir(p):
            w.dir(p)
        elif os.path.isfile(p):
            total += os.path.getsize(p)
            if total > MAX_FILES_BYTES:
                raise BuildError(
                    f"the run's files exceed {MAX_FILES_BYTES >> 20} MiB at {p}\n"
                    "hint: L1 holds every file in its 2 GiB of RAM; use smaller disk images"
                )
            st = os.stat(p)
            with open(p, "rb") as f:
                w.file(p, f.read(), st.st_mode & 0o7777, int(st.st_mtime))
        else:
            w.dir(os.path.dirname(p))
        if hf.writable and not os.path.isdir(p):
            writeback.append(p)
    return writeback


def _run_archive(spec: RunSpec, out: BinaryIO, wbdev: str | None) -> list[str]:
    here = Path(__file__).resolve().parent
    w = CpioWriter(out)
    w.file("init", (here / "guest" / "l1-init").read_bytes(), 0o755)
    w.file("rig/l1_run.py", (here / "guest" / "l1_run.py").read_bytes())
    _add_project(w)
    writeback = _add_files(w, spec.files)
    # one VM per run, timed: no engine pool warming up beside it in L1 (a run may turn it on)
    env = {"PYTHONPATH": L1_PROJECT, "PYTHONDONTWRITEBYTECODE": "1", "SVLAUNCH_POOL": "off"}
    env |= spec.env
    run = {"argv": spec.argv, "cwd": spec.cwd, "setup": spec.setup, "env": env}
    run |= {"writeback": writeback, "wbdev": wbdev}
    w.file("rig/run.json", json.dumps(run, indent=1).encode())
    w.close()
    return writeback


def _pump(fd: int, sink: BinaryIO | None, lines: list[str] | None) -> None:
    """Copy a serial stream to `sink`, or to stderr as L1 diagnostics while collecting lines."""
    buf = b""
    with os.fdopen(fd, "rb", buffering=0) as src:
        while chunk := src.read(65536):
            if sink is not None:
                sink.write(chunk)
                sink.flush()
                continue
            buf += chunk
            *done, buf = buf.split(b"\n")
            for raw in done:
                line = ANSI.sub("", raw.decode(errors="replace")).rstrip("\r")
                assert lines is not None
                at = line.find("RIG ")
                if at > 0:  # a marker after text without a newline (SeaBIOS)
                    line, marker = line[:at], line[at:]
                    lines.append(marker)
                lines.append(line)
                if not line.startswith("RIG ") and line.strip():
                    print(f"L1| {line}", file=sys.stderr, flush=True)
    if lines is not None and buf:
        lines.append(buf.decode(errors="replace").rstrip("\r"))


def _qemu_stderr(stream: BinaryIO) -> None:
    for raw in stream:
        line = raw.decode(errors="replace").rstrip()
        if QEMU_NOISE not in line:
            print(line, file=sys.stderr, flush=True)


def _extract(img: Path, wanted: list[str]) -> int:
    """Copy the written-back files from the tar on the write-back disk onto the host paths."""
    want = {p.lstrip("/"): p for p in wanted}
    n = 0
    with tarfile.open(img, "r:") as tar:
        for m in tar:
            dest = want.get(m.name)
            if dest is None or not m.isfile():
                continue
            src = tar.extractfile(m)
            assert src is not None
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "r+b" if os.path.exists(dest) else "wb") as f:
                while chunk := src.read(1 << 20):
                    if chunk.count(0) == len(chunk):
                        f.seek(len(chunk), io.SEEK_CUR)  # keep sparse images sparse
                    else:
                        f.write(chunk)
                f.truncate(m.size)
            n += 1
    return n


def _terminated(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _clean_stale_runs(runs: Path, max_age_s: float = 6 * 3600) -> None:
    """Remove run folders left by killed rigs (a live run is never that old)."""
    now = time.time()
    for d in runs.glob("run-*"):
        try:
            if now - d.stat().st_mtime > max_age_s:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def l1_kernel() -> Path:
    if not (GUEST / "vmlinuz").exists() or not (GUEST / "kernel-version").exists():
        subprocess.run([str(REPO / "scripts" / "build-guest")], check=True)
    return GUEST / "vmlinuz"


def execute(
    spec: RunSpec, timeout: float, keep: bool = False, l1_cpus: int = 1, icount: int | None = None
) -> RunResult:
    """Boot L1, run the spec, write back; the inner VMM's output goes to our stdout.

    ``icount``: L1's virtual clock advances 2**icount ns per instruction executed (and skips
    ahead while L1 idles), so what L1 and L2 time is work done, not how busy this host is."""
    t_start = time.monotonic()
    kernel = l1_kernel()
    kversion = (GUEST / "kernel-version").read_text().strip()
    layers = [base_archive(kversion)]
    if spec.with_qemu:
        layers.append(qemu_archive())
    runs = RIG / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    _clean_stale_runs(runs)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=runs))
    initrd = run_dir / "initrd"
    wanted_wb = [f for f in spec.files if f.writable]
    wb_img = run_dir / "writeback.img" if wanted_wb else None
    with open(initrd, "wb") as out:
        for layer in layers:
            with open(layer, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
        writeback = _run_archive(spec, out, "/dev/vda" if wb_img else None)
    if wb_img is not None:
        size = sum(os.path.getsize(p) for p in writeback if os.path.isfile(p)) * 2 + WB_ROOM
        with open(wb_img, "wb") as f:
            f.truncate((size + 2**20 - 1) // 2**20 * 2**20)
    con_r, con_w = os.pipe()
    out_r, out_w = os.pipe()
    cmd = ["qemu-system-x86_64", "-M", "q35", "-cpu", "EPYC,+svm,+npt", "-accel", "tcg"]
    cmd += ["-m", "2048", "-smp", str(l1_cpus), "-nodefaults", "-no-user-config"]
    cmd += ["-nographic", "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd)]
    cmd += ["-append", "console=ttyS0 quiet panic=-1 rdinit=/init"]
    if icount is not None:
        cmd += ["-icount", f"shift={icount},sleep=on"]
    cmd += ["-chardev", f"file,id=con,path=/dev/fd/{con_w}", "-serial", "chardev:con"]
    cmd += ["-chardev", f"file,id=out,path=/dev/fd/{out_w}", "-serial", "chardev:out"]
    if wb_img is not None:
        cmd += ["-drive", f"file={wb_img},format=raw,if=none,id=wb,cache=unsafe"]
        cmd += ["-device", "virtio-blk-pci,drive=wb"]
    t_qemu = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=(con_w, out_w)
    )
    assert proc.stderr is not None
    os.close(con_w)
    os.close(out_w)
    lines: list[str] = []
    threads = [
        threading.Thread(target=_pump, args=(con_r, None, lines), daemon=True),
        threading.Thread(target=_pump, args=(out_r, sys.stdout.buffer, None), daemon=True),
        threading.Thread(target=_qemu_stderr, args=(proc.stderr,), daemon=True),
    ]
    for t in threads:
        t.start()
    timed_out = False
    signal.signal(signal.SIGTERM, _terminated)
    try:
        proc.wait(timeout=max(1.0, timeout - (t_qemu - t_start)))
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if proc.poll() is None:  # timeout, Ctrl-C or SIGTERM: never leave QEMU behind
            proc.kill()
            proc.wait()
            if not timed_out:
                shutil.rmtree(run_dir, ignore_errors=True)
    for t in threads:
        t.join(timeout=5)
    total = time.monotonic() - t_start
    inner_rc = inner_s = l1_up = None
    for line in lines:
        if m := re.match(r"RIG inner rc=(\d+) s=([\d.]+)", line):
            inner_rc, inner_s = int(m.group(1)), float(m.group(2))
        elif m := re.match(r"RIG l1 up ([\d.]+)", line):
            l1_up = float(m.group(1))
        elif line.startswith("RIG "):
            log(line[4:])
    if l1_up is not None:
        log(f"L1 reached its init at {l1_up:.2f} s (L1 clock)")
    if inner_s is not None:
        print(f"rig: inner boot took {inner_s:.2f} s", file=sys.stderr, flush=True)
    if timed_out:
        log(f"timed out after {timeout:g} s; killed QEMU")
        rc = 124
    elif inner_rc is None:
        log(f"L1 did not report the inner VMM's exit (QEMU exit {proc.returncode}); see L1| lines")
        rc = 3
    else:
        rc = min(inner_rc, 255)
    if wb_img is not None and not timed_out and inner_rc is not None:
        try:
            n = _extract(wb_img, writeback)
            log(f"wrote back {n} file(s)")
        except (OSError, tarfile.TarError) as e:
            log(f"write-back failed: {e}")
            rc = rc or 3
    print(f"rig: whole run took {total:.2f} s", file=sys.stderr, flush=True)
    if keep:
        log(f"kept {run_dir}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    return RunResult(rc, inner_rc, inner_s, l1_up, total, timed_out, run_dir)

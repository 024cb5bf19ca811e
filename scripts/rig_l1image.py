"""Build and cache the rig's L1 initramfs layers under build/rig/.

Layers (initramfs archives concatenate, so each run appends only its own small archive):
  base-<key>.cpio.lz4  busybox, the kvm/tun/vhost/virtio-pci modules, a Python 3.11 runtime from
                      Debian packages (byte-compiled), the project's PyPI dependencies, iproute2's ip
  qemu-<key>.cpio.lz4  Debian's qemu-system-x86_64 with its libraries and firmware (--vmm qemu only)
Why a cached base: packing and byte-compiling ~100 MB takes tens of seconds; a run should not.
"""

from __future__ import annotations

import compileall
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Collection
from pathlib import Path

from rig_cpio import CpioWriter
from rig_debs import BUILD, DEBS, REPO, BuildError, locked, log, unpack

RIG = BUILD / "rig"
FORMAT = "l1-v2"  # bump when the base layout changes
PY_DEBS = [
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libc6",
    "libffi8",
    "libexpat1",
    "zlib1g",
    "libbz2-1.0",
    "liblzma5",
    "libssl3",
    "libsqlite3-0",
    "libncursesw6",
    "libtinfo6",
    "libreadline8",
    "libuuid1",
    "libdb5.3",
    "libgdbm6",
    "libcrypt1",
    "libnsl2",
    "libtirpc3",
    "libseccomp2",
    "liblz4-1",  # the engine decodes LZ4 bzImage payloads with liblz4 (decompress.py)
    "libzstd1",
    "libgcc-s1",
    "libc-bin",
    "dash",
    "busybox-static",
]
# Loaded in this order by the L1 init (dependencies resolved from each module's modinfo).
L1_MODULES = [
    "irqbypass",
    "kvm",
    "kvm-amd",
    "tun",
    "tap",
    "vhost_iotlb",
    "vhost",
    "vhost_net",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vhost_vsock",
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
]
MODULE_ARGS = {"kvm-amd": "nested=1"}
PRUNE = [
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/lib/python3.11/idlelib",
    "usr/lib/python3.11/tkinter",
    "usr/lib/python3.11/turtledemo",
    "usr/lib/python3.11/ensurepip",
    "usr/lib/python3.11/lib2to3",
    "usr/lib/python3.11/pydoc_data",
    "usr/lib/python3.11/config-3.11-x86_64-linux-gnu",
]
QEMU_SHARE = ("bios-microvm.bin", "linuxboot_dma.bin", "kvmvapic.bin", "pvh.bin", "qboot.rom")
SITE = "usr/lib/python3/dist-packages"


def merged(path: str) -> str:
    """Map a package path onto the merged-/usr layout the L1 image uses (/lib -> usr/lib)."""
    path = path.lstrip("/")
    for top in ("bin", "sbin", "lib", "lib64"):
        if path == top or path.startswith(top + "/"):
            return "usr/" + path
    return path


def pip_requirements() -> list[str]:
    with open(REPO / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def kernel_root(version: str) -> Path:
    """The unpacked kernel package build-guest used (same kernel for L1 and L2)."""
    for d in sorted((DEBS / "x").glob(f"linux-image-{version}_*")):
        if (d / ".done").exists():
            return d
    return unpack([f"linux-image-{version}"])[0]


def module_order(kroot: Path, names: list[str]) -> list[tuple[str, Path]]:
    """Modules in insmod order, each after its dependencies (read from .modinfo)."""
    files = {ko.name.split(".ko")[0]: ko for ko in (kroot / "lib" / "modules").rglob("*.ko")}
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        key = name.replace("-", "_")
        if key in seen:
            return
        ko = files.get(name) or files.get(name.replace("_", "-")) or files.get(key)
        if ko is None:
            raise BuildError(f"kernel package lacks module {name}")
        seen.add(key)
        m = re.search(rb"\0depends=([^\0]*)\0", b"\0" + ko.read_bytes())
        for dep in m.group(1).decode().split(",") if m and m.group(1) else []:
            visit(dep)
        order.append((ko.name.split(".ko")[0], ko))

    for n in names:
        visit(n)
    return order


def _copy_tree(src: Path, root: Path) -> None:
    """Merge one unpacked package into the staging root (merged-/usr)."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        for name in dirnames + filenames:
            s = Path(dirpath) / name
            relpath = name if rel == "." else f"{rel}/{name}"
            if relpath == ".done":
                continue
            dst = root / merged(relpath)
            if s.is_symlink():
                dst.parent.mkdir(parents=True, exist_ok=True)
                if not dst.exists() and not dst.is_symlink():
                    os.symlink(os.readlink(s), dst)
            elif s.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(s, dst)


def _package_files(roots: list[Path]) -> set[str]:
    """Archive paths (merged-/usr) of everything in the unpacked packages."""
    have: set[str] = set()
    for r in roots:
        for dirpath, _dirs, files in os.walk(r):
            rel = os.path.relpath(dirpath, r)
            have.update(merged(f if rel == "." else f"{rel}/{f}") for f in files)
    return have


def _host_binary(root: Path, binary: str, dest: str, have: Collection[str] = ()) -> None:
    """Copy a host executable and the libraries ldd resolves for it, except those in `have`."""
    res = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True)
    libs = re.findall(r"(/\S+) \(0x", res.stdout)
    for lib in libs:
        dst = root / merged(lib)
        if merged(lib) not in have and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(os.path.realpath(lib), dst)
    dst = root / dest
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(binary, dst)
    os.chmod(dst, 0o755)


def _pip_install(target: Path) -> None:
    py = REPO / ".venv" / "bin" / "python"
    cmd = [str(py if py.exists() else sys.executable), "-m", "pip", "install", "-q"]
    cmd += ["--disable-pip-version-check", "--target", str(target), "--only-binary=:all:"]
    for plat in ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"):
        cmd += ["--platform", plat]
    cmd += ["--python-version", "3.11", "--implementation", "cp"]
    cmd += ["--abi", "cp311", "--abi", "abi3", "--abi", "none", *pip_requirements()]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise BuildError(f"pip install --target failed:\n{res.stderr.strip()}")
    shutil.rmtree(target / "bin", ignore_errors=True)


def _compile(root: Path) -> None:
    """Byte-compile so L1 (TCG, slow) never compiles an import; hash-based, mtimes don't matter."""
    if sys.version_info[:2] != (3, 11):
        raise BuildError(f"byte-compiling for L1 needs Python 3.11 on the host, not {sys.version}")
    mode = compileall.py_compile.PycInvalidationMode.UNCHECKED_HASH
    for sub in ("usr/lib/python3.11", SITE):
        ok = compileall.compile_dir(
            root / sub,
            quiet=2,
            stripdir=str(root),
            prependdir="/",
            invalidation_mode=mode,
            workers=2,
        )
        if not ok:
            log(f"warning: some files under {sub} did not byte-compile")


def _pack(root: Path, out: Path, extra: list[tuple[str, str]]) -> None:
    """Pack a staging tree to LZ4 (legacy format) newc, with (name, symlink target) pairs first.

    Why LZ4: measured L1 boot to init (88 MB base): lz4 2.5-2.8 s, zstd 3.7-4.6 s, gzip
    3.4-5.2 s; uncompressed was as fast but noisier and 4x the bytes to copy per run.
    """
    raw = out.with_name(out.name + ".cpio.tmp")
    with open(raw, "wb") as f:
        w = CpioWriter(f)
        for name, target in extra:
            w.symlink(name, target)
        for entry in sorted(os.listdir(root)):
            w.tree(entry, str(root / entry), skip=())
        w.close()
    tmp = out.with_name(out.name + ".tmp")
    res = subprocess.run(["lz4", "-l", "-9", "-q", "-f", str(raw), str(tmp)], capture_output=True)
    raw.unlink()
    if res.returncode != 0:
        raise BuildError(f"lz4 failed: {res.stderr.decode().strip()}\nhint: run scripts/host-deps")
    with open(tmp, "ab") as f:
        # The kernel parses an archive that follows a compressed one only at a 4-byte aligned
        # offset; zero padding between archives is skipped.
        f.write(b"\0" * (-f.tell() % 512))
    os.replace(tmp, out)


def _base_key(kversion: str) -> str:
    lists = Path("/var/lib/apt/lists")
    newest = max((p.stat().st_mtime for p in lists.glob("*Packages*")), default=0.0)
    src = Path(__file__).read_bytes() + (REPO / "scripts" / "rig_cpio.py").read_bytes()
    blob = json.dumps([FORMAT, kversion, PY_DEBS, L1_MODULES, pip_requirements(), newest])
    return hashlib.sha256(blob.encode() + src).hexdigest()[:16]


def base_archive(kversion: str) -> Path:
    """The cached base layer for kernel `kversion`, built if missing."""
    out = RIG / f"base-{_base_key(kversion)}.cpio.lz4"
    if out.exists():
        return out
    with locked(RIG / ".base.lock"):
        if out.exists():
            return out
        log("building the L1 base image (once; about a minute)")
        stage = RIG / "stage-base"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        for pkg_root in unpack(PY_DEBS):
            _copy_tree(pkg_root, stage)
        for p in PRUNE:
            shutil.rmtree(stage / p, ignore_errors=True)
        os.symlink("python3.11", stage / "usr/bin/python3")
        _pip_install(stage / SITE)
        _compile(stage)
        _host_binary(stage, shutil.which("ip") or "/usr/sbin/ip", "usr/local/sbin/ip")
        mods = module_order(kernel_root(kversion), L1_MODULES)
        lines = []
        for name, ko in mods:
            dst = stage / "usr/lib/modules" / f"{name}.ko"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ko, dst)
            lines.append(f"{name} {MODULE_ARGS.get(name, '')}".strip())
        (stage / "etc").mkdir(exist_ok=True)
        (stage / "etc/rig-modules").write_text("\n".join(lines) + "\n")
        # dash as /bin/sh: busybox sh runs its own applets before PATH, which would hide
        # iproute2's ip (ip tuntap) from --l1-setup hooks.
        if not (stage / "usr/bin/sh").is_symlink():
            os.symlink("dash", stage / "usr/bin/sh")
        busybox = stage / "usr/bin/busybox"
        applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True).stdout
        for a in applets.split():
            if a != "busybox" and not (stage / "usr/bin" / a).exists():
                os.symlink("busybox", stage / "usr/bin" / a)
        for d in ("proc", "sys", "dev", "tmp", "run", "root", "usr/sbin", "usr/lib64"):
            (stage / d).mkdir(parents=True, exist_ok=True)
        for top in ("bin", "sbin", "lib", "lib64"):
            os.symlink(f"usr/{top}", stage / top)
        # ctypes.util.find_library (pyseccomp) asks `ldconfig -p`, which reads this cache.
        res = subprocess.run(["ldconfig", "-r", str(stage)], capture_output=True, text=True)
        if res.returncode != 0:
            log(f"warning: ldconfig -r failed: {res.stderr.strip()}")
        _pack(stage, out, [])
        shutil.rmtree(stage, ignore_errors=True)
        for old in RIG.glob("base-*.cpio.lz4"):
            if old != out:
                old.unlink()
        log(f"L1 base image: {out.relative_to(REPO)} ({out.stat().st_size // 2**20} MiB)")
    return out


def qemu_archive() -> Path:
    """The cached QEMU layer: the host's Debian qemu-system-x86_64, its libraries and firmware."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise BuildError("qemu-system-x86_64 is not installed\nhint: run scripts/host-deps")
    st = os.stat(qemu)
    src = Path(__file__).read_bytes()
    key = hashlib.sha256(f"{FORMAT} {st.st_size} {st.st_mtime}".encode() + src).hexdigest()[:16]
    out = RIG / f"qemu-{key}.cpio.lz4"
    if out.exists():
        return out
    with locked(RIG / ".qemu.lock"):
        if out.exists():
            return out
        stage = RIG / "stage-qemu"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        have = _package_files(unpack(PY_DEBS))
        _host_binary(stage, qemu, "usr/bin/qemu-system-x86_64", have)
        share = stage / "usr/share/qemu"
        share.mkdir(parents=True)
        for name in QEMU_SHARE:
            src_file = Path("/usr/share/qemu") / name
            if src_file.exists():
                shutil.copyfile(src_file.resolve(), share / name)
        _pack(stage, out, [])
        shutil.rmtree(stage, ignore_errors=True)
        for old in RIG.glob("qemu-*.cpio.lz4"):
            if old != out:
                old.unlink()
    return out

"""Hot-replace: block and net devices into the microVM's pre-created virtio-mmio slots.

StratoVirt's microvm keeps 4 block and 2 net transports from boot (``SlotPlan`` entries in the
plan: empty windows whose DeviceID reads 0, so guest drivers skip them). QMP then works in two
steps, as in StratoVirt (docs/stratovirt.md, "QMP"): ``blockdev-add``/``netdev_add`` register a
backend by name, and ``device_add`` (id = that name, or ``drive=``/``netdev=``; ``addr`` = the
slot number within its kind) builds the device with the virtio factory and swaps it into the
slot's window; ``device_del`` puts an empty device back. Slot numbers count every transport of
the kind in plan order, so a cold-plugged drive occupies slot 0 and can be deleted too.

This module knows neither QMP nor JSON: it takes the spec objects the QMP layer builds (duck
typed) and raises ``HotplugError``, which ``engine.vm`` turns into QMP errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from engine import device_rules as rules
from engine.errors import EngineError
from engine.hostfiles import check_host_file
from engine.machine.devices import AttachedDevice, DeviceManager
from engine.plan import BlkPlan, DevicePlan, NetPlan, SlotPlan

KINDS = ("blk", "net")


class HotplugError(EngineError):
    """A refused hot-replace request; ``not_found`` marks an unknown device id."""

    def __init__(self, message: str, *, not_found: bool = False, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.not_found = not_found


@dataclass
class Backend:
    """A ``blockdev-add``/``netdev_add`` registration, waiting for (or used by) a device."""

    kind: str
    id: str
    spec: Any  # engine.qmp.control.BlockdevSpec | NetdevSpec
    fds: tuple[
        int, ...
    ] = ()  # net: tap fds a client passed with getfd (owned here; devices get dups)
    user: str | None = None  # the device id using it


@dataclass
class SlotTable:
    """Which windows are replaceable, per kind, in slot order (mmio_base, irq)."""

    windows: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    @classmethod
    def from_devices(cls, devices: Sequence[DevicePlan]) -> SlotTable:
        w: dict[str, list[tuple[int, int]]] = {k: [] for k in KINDS}
        for d in devices:
            if isinstance(d, SlotPlan) and d.accepts in w:
                w[d.accepts].append((d.mmio_base, d.irq))
            elif isinstance(d, BlkPlan) or (isinstance(d, NetPlan) and not d.vhost):
                w[d.kind].append((d.mmio_base, d.irq))
        return cls(w)

    def kind_at(self, mmio_base: int) -> tuple[str, int] | None:
        for kind, wins in self.windows.items():
            for i, (base, _irq) in enumerate(wins):
                if base == mmio_base:
                    return kind, i
        return None


def _cold_backends(devices: Sequence[DevicePlan]) -> list[Backend]:
    """The backends of the drives and NICs the VM started with, in use by their devices.

    They are registered like ``blockdev-add``/``netdev_add`` ones, so a cold-plugged disk or NIC
    is replaced the same way a hot-plugged one is: ``device_del``, then ``blockdev-del`` or
    ``netdev_del``, then the new backend and device.
    """
    found = []
    for d in devices:
        if isinstance(d, BlkPlan):
            spec = SimpleNamespace(
                node_name=d.drive_id or d.id,
                filename=d.file,
                read_only=d.readonly,
                direct=d.direct,
                iops=d.iops,
                discard=d.discard,
            )
            found.append(Backend("blk", spec.node_name, spec, user=d.id))
        elif isinstance(d, NetPlan) and not d.vhost:
            name = d.netdev_id or d.id
            spec = SimpleNamespace(id=name, ifname=d.ifname, fds=(), queues=d.queue_pairs)
            found.append(Backend("net", name, spec, user=d.id))
    return found


class HotReplace:
    """The VM's hot-replace state. Calls come from the QMP thread, one at a time."""

    def __init__(
        self,
        dm: DeviceManager,
        devices: Sequence[DevicePlan],
        vm_name: str = "",
        iothreads: tuple[str, ...] = (),
    ) -> None:
        self.dm = dm
        self.vm_name = vm_name
        self.iothreads = iothreads
        self.slots = SlotTable.from_devices(devices)
        self.backends: dict[tuple[str, str], Backend] = {
            (b.kind, b.id): b for b in _cold_backends(devices)
        }
        self._lock = threading.Lock()

    # -- backends -----------------------------------------------------------------------------------

    def blockdev_add(self, spec: Any) -> None:
        """Register a block backend; its file passes the manifest's host-file check now (and is
        opened through it again when a device uses it: ``engine.hostfiles``)."""
        with self._lock:
            if ("blk", spec.node_name) in self.backends:
                raise HotplugError(f"Block device '{spec.node_name}' already exists")
            problem = check_host_file(
                spec.filename, what=f"blockdev-add {spec.node_name}", write=not spec.read_only
            )
            if problem is not None:
                raise HotplugError(problem.message, hint=problem.hint)
            self.backends["blk", spec.node_name] = Backend("blk", spec.node_name, spec)

    def netdev_add(self, spec: Any) -> None:
        """Register a net backend. ``spec.fds`` are open tap fds this call owns: kept with the
        backend, or closed when it is refused."""
        try:
            with self._lock:
                if ("net", spec.id) in self.backends:
                    raise HotplugError(f"Net device '{spec.id}' already exists")
                problem = rules.ifname_problem(spec.ifname)
                if problem is not None:
                    raise HotplugError(problem.message, hint=problem.hint)
                self.backends["net", spec.id] = Backend("net", spec.id, spec, tuple(spec.fds))
        except BaseException:
            for fd in spec.fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise

    def unused_blockdevs(self) -> list[Any]:
        """``blockdev-add`` specs no device uses (``query-named-block-nodes``)."""
        with self._lock:
            return [b.spec for b in self.backends.values() if b.kind == "blk" and b.user is None]

    def _del_backend(self, kind: str, name: str) -> None:
        with self._lock:
            b = self.backends.get((kind, name))
            if b is None:
                what = "Block device" if kind == "blk" else "Net device"
                raise HotplugError(f"{what} '{name}' not found", not_found=True)
            if b.user is not None:
                raise HotplugError(
                    f"'{name}' is in use by device '{b.user}'", hint="device_del it first"
                )
            del self.backends[kind, name]
        for fd in b.fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def blockdev_del(self, node_name: str) -> None:
        self._del_backend("blk", node_name)

    def netdev_del(self, netdev_id: str) -> None:
        self._del_backend("net", netdev_id)

    # -- devices ------------------------------------------------------------------------------------

    def device_add(self, spec: Any) -> AttachedDevice:
        """Build ``spec``'s device on its backend and swap it into slot ``spec.slot``."""
        with self._lock:
            kind, extra = spec.kind, dict(spec.extra)
            if kind not in KINDS:
                raise HotplugError(f"Driver '{spec.driver}' cannot be hot-added on a microVM")
            name = extra.get("drive" if kind == "blk" else "netdev") or spec.id
            b = self.backends.get((kind, name))
            if b is None:
                step = "blockdev-add" if kind == "blk" else "netdev_add"
                raise HotplugError(
                    f"No backend '{name}' for device '{spec.id}'", hint=f"add it with {step} first"
                )
            if b.user is not None:
                raise HotplugError(f"Backend '{name}' is already used by device '{b.user}'")
            if self.dm.attached(spec.id) is not None:
                raise HotplugError(f"Device id '{spec.id}' is already in use")
            wins = self.slots.windows.get(kind, [])
            if not 0 <= spec.slot < len(wins):
                raise HotplugError(
                    f"{kind} slot {spec.slot} does not exist (this VM has {len(wins)})"
                )
            base, irq = wins[spec.slot]
            old = self._at(base)
            if not isinstance(old.spec, SlotPlan):
                raise HotplugError(
                    f"{kind} slot {spec.slot} is occupied by '{old.spec.id}'",
                    hint="device_del it first, or pick another addr",
                )
            plan = self._plan(spec, b, base, irq, extra)
            device = self.dm.create_virtio(plan)
            try:
                att = self.dm.replace_virtio(old, plan, device)
            except BaseException:
                with contextlib.suppress(Exception):
                    device.close()
                raise
            b.user = spec.id
            return att

    def device_del(self, device_id: str) -> AttachedDevice:
        """Put an empty device back in ``device_id``'s slot (cold- or hot-plugged)."""
        with self._lock:
            att = self.dm.attached(device_id)
            if att is None or isinstance(att.spec, SlotPlan):
                raise HotplugError(f"Device '{device_id}' not found", not_found=True)
            where = self.slots.kind_at(att.spec.mmio_base)
            if where is None:
                raise HotplugError(
                    f"Device '{device_id}' (virtio-{att.spec.kind}) cannot be unplugged: "
                    "only block and net devices in replaceable slots can"
                )
            kind, i = where
            empty = SlotPlan(
                id=f"{kind}-slot{i}", mmio_base=att.spec.mmio_base, irq=att.spec.irq, accepts=kind
            )
            new = self.dm.replace_virtio(att, empty, self.dm.create_virtio(empty))
            for b in self.backends.values():
                if b.user == device_id:
                    b.user = None
            return new

    def close(self) -> None:
        with self._lock:
            for b in self.backends.values():
                for fd in b.fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self.backends.clear()

    def _at(self, base: int) -> AttachedDevice:
        for att in self.dm.virtio:
            if att.spec.mmio_base == base:
                return att
        raise HotplugError(f"no transport at {base:#x}")  # a plan/manager mismatch: a bug

    def _plan(self, spec: Any, b: Backend, base: int, irq: int, extra: dict) -> DevicePlan:
        """The device's plan, with a cold-plugged device's defaults, checked by the same
        per-device rules the launcher's validation applies (``engine.device_rules``)."""
        s = b.spec
        try:
            common = {
                "id": spec.id,
                "mmio_base": base,
                "irq": irq,
                "iothread": extra.get("iothread"),
                "queue_size": int(extra.get("queue-size", rules.DEFAULT_QUEUE_SIZE)),
            }
            if spec.kind == "blk":
                queues = extra.get("num-queues")
                blk = BlkPlan(
                    file=s.filename,
                    readonly=bool(s.read_only),
                    direct=bool(s.direct),
                    aio=rules.default_aio(bool(s.direct)),
                    serial=extra.get("serial"),
                    iops=s.iops,
                    discard=s.discard,
                    num_queues=1 if queues is None else int(queues),
                    drive_id=b.id,
                    **common,
                )
                problems = rules.blk_problems(blk, self.iothreads)
                plan: DevicePlan = blk
            else:
                mac = extra.get("mac")
                net = NetPlan(
                    ifname=s.ifname,
                    mac=rules.default_mac(self.vm_name, b.id) if mac is None else str(mac),
                    queue_pairs=max(1, int(s.queues)),
                    mq=str(extra.get("mq", "off")).lower() in ("on", "true", "1"),
                    netdev_id=b.id,
                    **common,
                )
                problems = rules.net_problems(net, self.iothreads)
                plan = net
        except (TypeError, ValueError) as e:
            raise HotplugError(f"device_add {spec.id}: bad option: {e}") from None
        if problems:
            raise HotplugError(problems[0].message, hint=problems[0].hint)
        if isinstance(plan, NetPlan):
            if not plan.ifname and not b.fds:
                raise HotplugError(
                    f"Net device '{b.id}' has no tap left to attach: its fds went with the "
                    "device that used them",
                    hint="netdev_del it and netdev_add a new backend",
                )
            # the device owns dups of the backend's fds, so the backend stays reusable
            plan = dataclasses.replace(plan, fds=tuple(os.dup(fd) for fd in b.fds))
        return plan

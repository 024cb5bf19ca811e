"""Hot-replace: block and net devices into the microVM's pre-created virtio-mmio slots.

StratoVirt's microvm keeps 4 block and 2 net transports from boot (``SlotPlan`` entries in the
plan: empty windows whose DeviceID reads 0, so guest drivers skip them). QMP then works in two
steps, as in StratoVirt (stratovirt-spec §7.5): ``blockdev-add``/``netdev_add`` register a
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.machine.devices import AttachedDevice, DeviceManager
from launcher.compile.plan import BlkPlan, DevicePlan, NetPlan, SlotPlan
from launcher.errors import EngineError

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
    fds: tuple[int, ...] = ()  # net: tap fds taken from getfd (owned here; devices get dups)
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


class HotReplace:
    """The VM's hot-replace state. Calls come from the QMP thread, one at a time."""

    def __init__(
        self,
        dm: DeviceManager,
        devices: Sequence[DevicePlan],
        take_fd: Callable[[str], int],
        vm_name: str = "",
        iothreads: tuple[str, ...] = (),
    ) -> None:
        self.dm = dm
        self.vm_name = vm_name
        self.iothreads = iothreads
        self.slots = SlotTable.from_devices(devices)
        self.backends: dict[tuple[str, str], Backend] = {}
        self._take_fd = take_fd
        self._lock = threading.Lock()

    # -- backends -----------------------------------------------------------------------------------

    def blockdev_add(self, spec: Any) -> None:
        with self._lock:
            if ("blk", spec.node_name) in self.backends:
                raise HotplugError(f"Block device '{spec.node_name}' already exists")
            if not os.path.exists(spec.filename):
                raise HotplugError(
                    f"Failed to open block device '{spec.node_name}': {spec.filename}: "
                    "No such file or directory",
                    hint="give file.filename as an existing host path",
                )
            self.backends["blk", spec.node_name] = Backend("blk", spec.node_name, spec)

    def netdev_add(self, spec: Any) -> None:
        with self._lock:
            if ("net", spec.id) in self.backends:
                raise HotplugError(f"Net device '{spec.id}' already exists")
            fds: list[int] = []
            try:
                for ref in spec.fds:
                    fds.append(self._take_fd(ref))
            except BaseException:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                raise
            self.backends["net", spec.id] = Backend("net", spec.id, spec, tuple(fds))

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

    def _alone(self, **devices: Any) -> Any:
        """A manifest of this VM holding only the new device, for the manifest's device rules."""
        from launcher import model as m

        return m.Manifest(name=self.vm_name or "vm", iothreads=self.iothreads, **devices)

    def _plan(self, spec: Any, b: Backend, base: int, irq: int, extra: dict) -> DevicePlan:
        """The device's plan, built from the same model value and through the same rules and
        plan builder as a cold-plugged device of the manifest (defaults, MAC, limits)."""
        from launcher import model as m
        from launcher.compile.engine_devices import blk_plan, net_plan

        s = b.spec
        try:
            common = {
                "device_id": spec.id,
                "iothread": extra.get("iothread"),
                "queue_size": int(extra.get("queue-size", 256)),
            }
            if spec.kind == "blk":
                queues = extra.get("num-queues")
                drive = m.Drive(
                    id=b.id,
                    file=s.filename,
                    readonly=bool(s.read_only),
                    direct=bool(s.direct),
                    iops=s.iops,
                    serial=extra.get("serial"),
                    num_queues=None if queues is None else int(queues),
                    **common,
                )
                _check_like_the_manifest(self._alone(drives=(drive,)))
                return blk_plan(drive, base, irq)
            net = m.Net(
                id=b.id,
                ifname=s.ifname,
                queues=max(1, int(s.queues)),
                mac=extra.get("mac"),
                mq=str(extra.get("mq", "off")).lower() in ("on", "true", "1"),
                **common,
            )
            _check_like_the_manifest(self._alone(nets=(net,)))
            # the device owns dups of the backend's fds, so the backend stays reusable
            net = dataclasses.replace(net, fds=tuple(os.dup(fd) for fd in b.fds))
            return net_plan(self.vm_name, net, base, irq)
        except ValueError as e:
            raise HotplugError(f"device_add {spec.id}: bad option: {e}") from None


def _check_like_the_manifest(manifest: Any) -> None:
    """The manifest's device rules (queue sizes, serial length, MAC format...) for one device."""
    from launcher.validate import check_model

    device = manifest.drives or manifest.nets
    prefix = f"{'drives' if manifest.drives else 'nets'}.{device[0].id}"
    for issue in check_model(manifest, target="engine"):
        if issue.is_error and issue.path.startswith(prefix):
            raise HotplugError(issue.message, hint=issue.hint)

"""The recipe: plan → a built, paused ``Machine``. The only code that knows the boot order.

``build(plan, events)`` follows Firecracker's ``build_microvm_for_boot``; each numbered step
depends on the ones before it:

1. host checks: /dev/kvm, vCPU count and APIC ids against the host's limits (NUMA nodes are
   checked in step 2, before anything is mapped);
2. guest RAM (``ram.create_guest_memory``: map, DONTDUMP, mbind, prealloc);
3. the VM, then 4. one memory slot per RAM region, then the TSS and identity-map pages, the
   in-kernel irqchip, then PIT2 (PIT needs the irqchip); identity map before any vCPU exists
   (KVM refuses it afterwards). Memory slots go in before the irqchip, as Firecracker does:
   once the irqchip exists each slot waits for an SRCU grace period (docs/performance.md);
5. devices: COM1 + chardev, the ACPI PM port, virtio-mmio transports with irqfd/ioeventfds
   (a ``SlotPlan`` gets an empty DeviceID-0 transport that QMP hot-replace fills);
6. boot data: kernel, initrd (placed high, below ``initrd_addr_max``), command line, ACPI
   tables, zero page with E820, then the GDT/IDT/page tables;
7. vCPUs: created with id = APIC id, CPUID set before MSRs (KVM filters MSRs by CPUID), then
   registers; each gets a thread that starts parked. ``Machine.resume()`` lets them run.

A restore (``snapshot=``, checked by ``engine.snapshot.restore.load``) follows the same steps,
except that guest RAM is the snapshot's memory file (step 2), no kernel or boot data is loaded
(step 6: it is all in RAM), each vCPU gets its saved state instead of boot registers (step 7,
after the CPUID this host gives it is checked against the saved one), and then the irqchip,
PIT, legacy devices, virtio devices and kvmclock get theirs (``apply_machine``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.errors import EngineError, HostError
from engine.eventloop import EventLoop, IoThread
from engine.logsetup import get_logger
from engine.machine import bootparams, layout, regs
from engine.machine.bus import Bus
from engine.machine.cpuid_setup import is_pvm_host, vcpu_cpuid
from engine.machine.devices import DeviceManager
from engine.machine.kvm import Kvm, VmFd
from engine.machine.loader import LoadResult, open_kernel
from engine.machine.memory import GuestMemory
from engine.machine.ram import Progress, create_guest_memory
from engine.machine.vcpu import VcpuThread, install_kick_handler
from engine.machine.vcpu_exits import ExitContext, ExitProfile, VmEvents, profiling_requested
from engine.plan import Plan

if TYPE_CHECKING:
    from typing import Any

    from engine.snapshot.restore import LoadedSnapshot

log = get_logger(__name__)

PVM_NOTICE = (
    "this host's /dev/kvm is PVM (kvm_pvm): a stock Linux kernel's CPL0 code is emulated "
    "(~0.7 us per instruction), so its boot is slow and some instructions fail; "
    "boot real kernels in the nested rig (scripts/rig MANIFEST)"
)


@dataclass(slots=True)
class Machine:
    plan: Plan
    kvm: Kvm
    vm: VmFd
    mem: GuestMemory
    pio: Bus
    mmio: Bus
    devices: DeviceManager
    loop: EventLoop
    iothreads: dict[str, IoThread]
    vcpus: list[VcpuThread] = field(default_factory=list)
    kernel: LoadResult | None = None
    pvm: bool = False

    def resume(self) -> None:
        for v in self.vcpus:
            v.resume()

    def pause(self) -> None:
        for v in self.vcpus:
            v.pause()
        self.devices.drain_coalesced()  # what the guest wrote before the pause is handled

    def close(self) -> None:
        """Stop vCPUs, devices and loops, then release KVM fds before guest memory."""
        for v in self.vcpus:
            v.stop()
        for io in self.iothreads.values():
            io.stop()
        self.devices.close()
        for v in self.vcpus:
            if not v.alive:
                v.fd.close()
        self.vm.close()
        self.kvm.close()
        self.mem.close()


def _check_host(kvm: Kvm, plan: Plan) -> None:
    n = len(plan.vcpus)
    if n > kvm.max_vcpus:
        raise HostError(
            f"the plan has {n} vCPUs, this host's KVM allows {kvm.max_vcpus}",
            hint="lower cpu.cpus",
        )
    top = max(v.apic_id for v in plan.vcpus)
    if top >= kvm.max_vcpu_id:
        raise HostError(
            f"APIC id {top} is above this host's KVM limit {kvm.max_vcpu_id - 1}",
            hint="use a smaller topology (fewer sockets/dies/cores)",
        )


def _write_acpi(mem: GuestMemory, plan: Plan) -> int:
    """Place the ACPI tables in the system-data region; returns the RSDP address (0: none)."""
    from engine.machine.acpi.builder import build_acpi

    acpi = build_acpi(plan)
    acpi.write(mem)
    return int(acpi.rsdp_addr)


def _load_boot_data(m: Machine) -> LoadResult:
    """Initrd first (high, as QEMU), then the kernel at a random place clear of it (KASLR)."""
    plan, mem = m.plan, m.mem
    try:
        with open(plan.boot.kernel, "rb") as f:
            image = open_kernel(f, name=plan.boot.kernel)
            initrd = None
            if plan.boot.initrd:
                try:
                    with open(plan.boot.initrd, "rb") as fi:
                        data = fi.read()
                except OSError as e:
                    raise HostError(f"initrd {plan.boot.initrd}: {e.strerror}") from None
                initrd = bootparams.load_initrd(
                    mem, data, kernel_end=image.linked_end, addr_max=image.initrd_addr_max
                )
            ram = [(r.guest_addr, r.size) for r in mem.regions]
            avoid = [(initrd.addr, initrd.size)] if initrd else []
            kernel = image.load(mem, image.placement(ram, avoid=avoid, cmdline=plan.boot.cmdline))
    except OSError as e:
        raise HostError(f"kernel {plan.boot.kernel}: {e.strerror}") from None
    log.debug("kernel at %#x (placement: %s)", kernel.kernel_start, kernel.placement.why)
    cmdline_len = bootparams.write_cmdline(mem, plan.boot.cmdline, max_len=kernel.cmdline_size)
    rsdp = _write_acpi(mem, plan)
    e820 = bootparams.e820_map([(r.guest_addr, r.size) for r in mem.regions])
    zp = bootparams.build_zero_page(
        kernel,
        e820,
        cmdline_addr=layout.CMDLINE_START,
        cmdline_len=cmdline_len,
        initrd=initrd,
        rsdp_addr=rsdp,
    )
    bootparams.write_boot_params(mem, zp)
    regs.write_boot_tables(mem)
    return kernel


def build(
    plan: Plan,
    events: VmEvents,
    *,
    kvm_path: str = "/dev/kvm",
    progress: Progress | None = None,
    thread_init: Any = None,
    snapshot: LoadedSnapshot | None = None,
) -> Machine:
    """Build the VM of ``plan`` with every vCPU paused. ``events`` receives poweroff/reset/fatal.
    With ``snapshot`` the VM is the snapshot's, ready to resume where it was taken."""
    pvm = is_pvm_host()
    install_kick_handler()
    kvm = Kvm(kvm_path)  # 1
    cleanup: list[Any] = [kvm]
    try:
        _check_host(kvm, plan)
        supported = kvm.supported_cpuid()
        tables = [vcpu_cpuid(supported, vp, plan.topology, pvm=pvm) for vp in plan.vcpus]
        source = None
        if snapshot is not None:
            from engine.snapshot import restore

            restore.check_cpuid(snapshot.folder, snapshot.snap, _rows(tables))
            source = (snapshot.memory.fd, restore.file_offsets(snapshot.snap))
        mem = create_guest_memory(plan.memory, progress=progress, from_file=source)  # 2
        cleanup.append(mem)
        vm = kvm.create_vm()  # 3
        cleanup.append(vm)
        for slot, r in enumerate(mem.regions):  # 4 (before the irqchip: see the docstring)
            vm.set_user_memory_region(slot, r.guest_addr, r.size, r.host_addr)
        vm.set_tss_address(layout.KVM_TSS_START)
        vm.set_identity_map_address(layout.KVM_IDENTITY_MAP_START)
        vm.create_irqchip()
        vm.create_pit2()
        loop = EventLoop("main")  # 5
        if pvm:  # said on the loop's first turn: logging is imported after the guest started
            loop.call_soon_threadsafe(lambda: log.warning(PVM_NOTICE))
        iothreads = {name: IoThread(name) for name in plan.iothreads}
        pio, mmio = Bus("pio"), Bus("mmio")
        dm = DeviceManager(vm, mem, pio, mmio, loop, {n: t.loop for n, t in iothreads.items()})
        m = Machine(plan, kvm, vm, mem, pio, mmio, dm, loop, iothreads, pvm=pvm)
        cleanup = [m]
        if plan.serial is not None:
            dm.attach_serial(plan.serial)
        dm.attach_power(
            lambda: events.on_reset("guest reset (ACPI reset register)"),
            lambda: events.on_poweroff("guest poweroff (ACPI S5)"),
        )
        if plan.pvpanic is not None:
            dm.attach_pvpanic(events.on_guest_panic)
        for spec in plan.devices:
            device = dm.create_virtio(spec)
            try:
                dm.attach_virtio(spec, device)
            except BaseException:
                device.close()  # not the manager's yet: a tap it created goes with it
                raise
        if snapshot is None:
            m.kernel = _load_boot_data(m)  # 6
        profile = profiling_requested()  # 7
        for i, (vp, table) in enumerate(zip(plan.vcpus, tables, strict=True)):
            fd = vm.create_vcpu(vp.apic_id)
            if snapshot is not None:
                restore.apply_vcpu(fd, snapshot.snap.vcpus[i])
            else:
                assert m.kernel is not None
                fd.set_cpuid2(table)
                regs.configure_vcpu(fd, m.kernel.entry)
            ctx = ExitContext(pio=pio, mmio=mmio, events=events, pvm=pvm)
            if profile:
                ctx.profile = ExitProfile()
            t = VcpuThread(fd, vp.index, ctx, thread_init=thread_init)
            m.vcpus.append(t)
        if snapshot is not None:
            restore.apply_machine(m, snapshot)
        ring = dm.coalesce_serial(m.vcpus[0].fd) if m.vcpus else None
        for t in m.vcpus:
            t.ctx.ring = ring
            t.ctx.fast_reads = dm.fast_reads
            t.start()
        for io in iothreads.values():
            io.start()
        return m
    except BaseException:
        for obj in reversed(cleanup):
            try:
                obj.close()
            except Exception:  # the build's own error is the one to report
                pass
        raise


def _rows(tables: list[list[Any]]) -> list[list[tuple[int, ...]]]:
    return [[(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx) for e in t] for t in tables]


def boot(plan: Plan, events: VmEvents, **kwargs: Any) -> Machine:
    """Build and run (the non-paused start)."""
    m = build(plan, events, **kwargs)
    m.resume()
    return m


__all__ = ["PVM_NOTICE", "EngineError", "Machine", "boot", "build"]

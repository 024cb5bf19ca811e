"""The device tables of the manifest schema: drives, nets, chardevs, serial, virtio-serial,
consoles, vsock, balloon, rngs, root ports, pflash, VFIO and USB.

Split from ``schemagen`` so that module holds the machine-level keys; the keys come back in the
order ``docs/manifest.md`` lists them (``schemagen`` inserts them between ``log`` and
``monitors``).
"""

from __future__ import annotations

from launcher.manifest.schema_vocab import (
    J,
    array_of,
    boolean,
    enum,
    int_list,
    integer,
    obj,
    path,
    pci_props,
    prop,
    string,
    table_of,
)


def device_properties() -> dict[str, J]:
    """The schema's device keys, from ``drives`` to ``usb``, in manifest order."""
    chardev_props = {
        "backend": enum(
            "Where the character device goes.",
            ["stdio", "pty", "socket", "file"],
            sv="-chardev <backend>",
        ),
        "path": path("Socket or file path (required for socket and file).", sv="path="),
        "server": boolean(
            "Listen on the socket instead of connecting (socket only).", False, sv="server"
        ),
        "nowait": boolean(
            "Do not wait for a client before starting (socket only).", False, sv="nowait"
        ),
    }
    drive = obj(
        "A virtio-blk disk: the -drive backend and its device.",
        {
            "file": path("Disk image or block device on the host.", sv="-drive file="),
            "readonly": boolean("Open the image read-only.", False, sv="readonly=on|off"),
            "direct": boolean("Open with O_DIRECT.", True, sv="direct=on|off"),
            "aio": enum(
                "Async I/O engine; default native when direct, else off.",
                ["native", "io_uring", "off"],
                sv="aio=",
            ),
            "format": enum(
                "Image format (StratoVirt v2.2.0 supports raw only).",
                ["raw", "qcow2"],
                "raw",
                sv="format=",
            ),
            "iops": integer(
                "I/O operations per second limit (at most 1000000).", sv="throttling.iops-total="
            ),
            "serial": string("Serial number the guest sees (at most 20 bytes).", sv="serial="),
            "iothread": string(
                "Iothread (declared in iothreads) that serves the disk.", sv="iothread="
            ),
            "queues": integer(
                "Number of virtqueues (1-32); default 1 on mmio, min(cpus, 32) on pci.",
                sv="num-queues=",
            ),
            "queue-size": integer("Virtqueue size: a power of two, 4-1024.", 256, sv="queue-size="),
            "bootindex": integer(
                "Boot order for firmware (0-255, lower boots first).", sv="bootindex="
            ),
            "attached": boolean(
                "Create the virtio-blk device (false: backend only, for hot plug).", True
            ),
            "device-id": string(
                "Device id, if it must differ from the drive id.", sv="id=", minLength=1
            ),
            **pci_props(),
        },
        required=("file",),
        sv="-drive id=<id>,file=... -device virtio-blk-*,drive=<id>",
    )
    net = obj(
        "A virtio-net NIC: the -netdev backend and its device.",
        {
            "type": enum("Backend type.", ["tap", "vhost-user"], "tap", sv="-netdev <type>"),
            "ifname": string("Host tap device name (at most 15 bytes).", sv="ifname=", minLength=1),
            "fds": int_list("Inherited tap file descriptors, one per queue pair.", sv="fd=/fds="),
            "vhost": boolean("Use the vhost-net kernel backend.", sv="vhost=on|off"),
            "vhostfds": int_list(
                "Inherited /dev/vhost-net file descriptors (needs vhost).", sv="vhostfd=/vhostfds="
            ),
            "queues": integer("Queue pairs (1-16).", sv="queues="),
            "chardev": string(
                "Socket chardev of a vhost-user backend (a client socket).", sv="chardev="
            ),
            "attached": boolean("Create the virtio-net device (false: backend only).", True),
            "device-id": string(
                "Device id, if it must differ from the netdev id.", sv="id=", minLength=1
            ),
            "mac": string("Guest MAC address, six hex pairs: 52:54:00:12:34:56.", sv="mac="),
            "mq": boolean("Enable multiqueue in the guest.", False, sv="mq=on|off"),
            "iothread": string(
                "Iothread that serves the NIC (ignored with vhost).", sv="iothread="
            ),
            "queue-size": integer(
                "Virtqueue size: a power of two, 256-4096.", 256, sv="queue-size="
            ),
            **pci_props(),
        },
        sv="-netdev <type>,id=<id>,... -device virtio-net-*,netdev=<id>",
    )
    serial = prop(
        {
            "anyOf": [
                {"type": "string", "enum": ["stdio", "pty"]},
                obj(
                    "Serial backend.",
                    {k: v for k, v in chardev_props.items()},
                    required=("backend",),
                ),
            ]
        },
        'The legacy serial port (ttyS0): "stdio", "pty", or a table with backend/path.',
        sv="-serial <backend>[,path=...]",
    )
    rng = obj(
        "A virtio-rng device and its rng-random object.",
        {
            "file": path("Host entropy source.", "/dev/urandom", sv="-object rng-random,filename="),
            "max-bytes": integer("Bytes allowed per period (with period).", sv="max-bytes="),
            "period": integer("Rate-limit period in milliseconds (with max-bytes).", sv="period="),
            "device-id": string(
                "Device id, if it must differ from the object id.", sv="id=", minLength=1
            ),
            **pci_props(),
        },
        sv="-object rng-random,id=<id>,filename=... -device virtio-rng-*,rng=<id>",
    )
    pci_only = {k: v for k, v in pci_props().items() if k != "transport"}
    return {
        "drives": table_of("Block devices.", drive, sv="-drive, -device virtio-blk-*"),
        "nets": table_of("Network devices.", net, sv="-netdev, -device virtio-net-*"),
        "chardevs": table_of(
            "Character devices for consoles, monitors and vhost-user.",
            obj("A character device.", chardev_props, required=("backend",)),
            sv="-chardev",
        ),
        "serial": serial,
        "virtio-serial": obj(
            "The virtio-serial transport for consoles (implied by consoles).",
            {
                "id": string("Device id (required on standard VMs).", sv="id=", minLength=1),
                **pci_props(),
            },
            sv="-device virtio-serial-*",
        ),
        "consoles": table_of(
            "virtio consoles (/dev/hvc*), keyed by device id.",
            obj(
                "A virtconsole.",
                {"chardev": string("Chardev it uses (consumed).", sv="chardev=")},
                required=("chardev",),
            ),
            sv="-device virtconsole",
        ),
        "vsock": obj(
            "The vhost-vsock device (one per VM).",
            {
                "id": string("Device id.", "vsock0", sv="id=", minLength=1),
                "guest-cid": integer(
                    "Guest context id: 3-4294967294, unique on the host.", sv="guest-cid="
                ),
                "vhostfd": integer("Inherited /dev/vhost-vsock descriptor.", sv="vhostfd="),
                **pci_props(),
            },
            required=("guest-cid",),
            sv="-device vhost-vsock-*",
        ),
        "balloon": obj(
            "The virtio-balloon device (one per VM).",
            {
                "id": string("Device id (required on standard VMs).", sv="id=", minLength=1),
                "deflate-on-oom": boolean(
                    "Deflate when the guest runs out of memory.", False, sv="deflate-on-oom="
                ),
                "free-page-reporting": boolean(
                    "Let the guest report free pages.", False, sv="free-page-reporting="
                ),
                **pci_props(),
            },
            sv="-device virtio-balloon-*",
        ),
        "rngs": table_of("Entropy devices.", rng, sv="-object rng-random, -device virtio-rng-*"),
        "root-ports": table_of(
            "PCIe root ports (standard VMs); the id names the new bus. Quote ids with dots:"
            ' [root-ports."pcie.1"].',
            obj(
                "A pcie-root-port.",
                {
                    "port": integer("Port number (0-255).", sv="port="),
                    "chassis": integer("Chassis number (0-255, libvirt only).", sv="chassis="),
                    **pci_only,
                },
                required=("port", "addr"),
            ),
            sv="-device pcie-root-port",
        ),
        "pflash": array_of(
            "Firmware flash devices (standard VMs): unit 0 code, unit 1 variables.",
            obj(
                "A pflash drive.",
                {
                    "unit": integer("0 (firmware code) or 1 (variables).", sv="unit="),
                    "file": path("Flash image.", sv="file="),
                    "readonly": boolean("Read-only (unit 0 usually is).", False, sv="readonly="),
                    "format": enum("Image format (raw only).", ["raw"], "raw", sv="format="),
                },
                required=("unit", "file"),
            ),
            sv="-drive if=pflash",
        ),
        "vfio": table_of(
            "Host PCI devices passed through (standard VMs).",
            obj(
                "A vfio-pci device.",
                {
                    "host": string("Host PCI address DDDD:BB:DD.F.", sv="host=", minLength=1),
                    "sysfsdev": path("sysfs path of the device (instead of host).", sv="sysfsdev="),
                    **pci_only,
                },
                required=("addr",),
            ),
            sv="-device vfio-pci",
        ),
        "usb": obj(
            "USB controller and devices (standard VMs).",
            {
                "xhci": obj(
                    "The nec-usb-xhci controller.",
                    {
                        "id": string("Device id.", "xhci", sv="id=", minLength=1),
                        "p2": integer("USB 2 ports (1-15).", 4, sv="p2="),
                        "p3": integer("USB 3 ports (1-15).", 4, sv="p3="),
                        **{k: v for k, v in pci_only.items() if k != "multifunction"},
                    },
                    required=("addr",),
                    sv="-device nec-usb-xhci",
                ),
                "keyboard": obj(
                    "A USB keyboard.",
                    {"id": string("Device id.", "kbd", sv="id=", minLength=1)},
                    sv="-device usb-kbd",
                ),
                "tablet": obj(
                    "A USB tablet.",
                    {"id": string("Device id.", "tablet", sv="id=", minLength=1)},
                    sv="-device usb-tablet",
                ),
            },
        ),
    }

"""systemd units: the agent's (``svlaunch-agent.service``) and one VM per instance
(``svlaunch@NAME.service``, for hosts that run single manifests without the agent).

The hardening is what still lets the engine work: its devices (``/dev/kvm``, ``/dev/net/tun``,
vhost, block devices for drives, ptys for consoles) and nothing else (``DevicePolicy=closed``),
the capabilities a tap, a cgroup and the ozone sandbox's namespaces, mounts and id changes need
(``CapabilityBoundingSet``), cgroups delegated to the unit (``Delegate=yes``), the kernel's
modules, logs and clock out of reach, a read-only ``/usr``, ``/boot`` and ``/etc``.

The agent's unit uses ``KillMode=process``: stopping or restarting the agent must not stop the
VMs it started (they live in its cgroup); the next agent adopts them. A VM's own unit does the
opposite: its ``svlaunch up`` runs in the foreground and stopping the unit (SIGINT, as Ctrl-C)
powers the guest down.
"""

from __future__ import annotations

import os
import shutil
import sys

RUNTIME_DIR = "/run/svlaunch"
HARDENING = """\
# Hardening that leaves the engine what it needs (docs/gitops.md, "systemd")
NoNewPrivileges=yes
ProtectSystem=full
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectClock=yes
ProtectHostname=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
SystemCallArchitectures=native
RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_VSOCK AF_INET AF_INET6
DevicePolicy=closed
DeviceAllow=/dev/kvm rw
DeviceAllow=/dev/net/tun rw
DeviceAllow=/dev/vhost-net rw
DeviceAllow=/dev/vhost-vsock rw
DeviceAllow=char-pts rw
DeviceAllow=block-* rw
CapabilityBoundingSet=CAP_NET_ADMIN CAP_SYS_ADMIN CAP_SYS_RESOURCE CAP_SYS_CHROOT \
CAP_SETUID CAP_SETGID CAP_SETPCAP CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH \
CAP_KILL CAP_MKNOD CAP_IPC_LOCK
Delegate=yes
LimitMEMLOCK=infinity
LimitNOFILE=1048576
TasksMax=infinity
"""


#: the end of both units: the runtime root (kept across restarts: the VMs live there), the
#: hardening, and the install target
COMMON = f"""\
Environment=SVLAUNCH_RUNTIME_DIR={RUNTIME_DIR}
RuntimeDirectory=svlaunch
RuntimeDirectoryMode=0700
RuntimeDirectoryPreserve=yes
{HARDENING}
[Install]
WantedBy=multi-user.target
"""


def quote(arg: str) -> str:
    """One ``ExecStart=`` argument: systemd's own quoting, ``%`` and ``$`` doubled (no
    specifier or variable expansion of user text)."""
    text = arg.replace("%", "%%").replace("$", "$$")
    if text and all(c.isalnum() or c in "/._-+=:@,#" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def svlaunch_argv() -> list[str]:
    """How this installation runs svlaunch: its console script next to the interpreter, or
    the interpreter with ``-m launcher.cli``."""
    script = os.path.join(os.path.dirname(sys.executable), "svlaunch")
    if os.access(script, os.X_OK):
        return [os.path.abspath(script)]
    found = shutil.which("svlaunch")
    if found:
        return [os.path.abspath(found)]
    return [os.path.abspath(sys.executable), "-m", "launcher.cli"]


def agent_unit(source: str, host: str | None, interval: str, prune: bool) -> str:
    argv = [*svlaunch_argv(), "agent", source, "--interval", interval]
    if host:
        argv += ["--host", host]
    if prune:
        argv.append("--prune")
    return f"""\
# Written by 'svlaunch export systemd': the GitOps agent (docs/gitops.md)
[Unit]
Description=svlaunch agent: this host runs what {source.replace("%", "%%")} says
Wants=network-online.target
After=network-online.target

[Service]
Type=exec
ExecStart={" ".join(quote(a) for a in argv)}
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=5s
# the VMs outlive the agent: stopping or restarting this unit stops the agent only
KillMode=process
{COMMON}"""


def vm_unit(folder: str) -> str:
    """``svlaunch@NAME.service`` runs ``FOLDER/NAME.toml`` in the foreground."""
    argv = [*svlaunch_argv(), "up"]
    path = quote(os.path.join(folder, "X.toml")).replace("X.toml", "%i.toml")
    return f"""\
# Written by 'svlaunch export systemd': one VM per instance, svlaunch@NAME runs NAME.toml
[Unit]
Description=svlaunch VM %i
Wants=network-online.target
After=network-online.target

[Service]
Type=exec
ExecStart={" ".join(quote(a) for a in argv)} {path}
# SIGINT is Ctrl-C to 'svlaunch up': the guest is asked to power off, then the engine quits
KillSignal=SIGINT
TimeoutStopSec=45s
Restart=on-failure
RestartSec=5s
{COMMON}"""

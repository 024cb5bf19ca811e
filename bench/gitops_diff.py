"""Benchmark: `svlaunch diff` of a 1,000-VM git repository against a host that runs all of it.

The repository: 1,000 microvm manifests (TOML and YAML; drives, NICs, vsock, consoles), committed to a
bare repository. The host: 1,000 "running" VMs, each with its runtime folder exactly as
`svlaunch apply` leaves it (lock held, meta.json, plan.json, the GitOps record, the host state
file) and a QMP server that answers as the engine does (engine/qmp/server.py serving the tests'
FakeVm: 1,000 engines do not fit on this machine, their QMP servers do). So the diff does all
of its real work: git fetch, listing the revision, the parse cache, the rules across manifests,
one identity-checked QMP session per VM (query-name, query-status, query-block), the plan.

Printed: wall time of a cold `svlaunch diff` process (min and median of N), with the parse
cache warm (the case of every look of the agent) and cold (the first diff of a revision), and
`svlaunch validate DIR` of the same manifests for reference. Goal: <= 1 s with no change.

usage: .venv/bin/python bench/gitops_diff.py [--count 1000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT))
from bench import validate_many  # noqa: E402
from bench._result import result  # noqa: E402

HOST = "bench"

#: bench/validate_many.py's microvm manifests, with their QMP sockets in each VM's runtime folder
#: (the bench serves them), and a drive as the root file system
MICROVM = validate_many.MICROVM.replace('qmp = "/run/svlaunch/vm-{i}.qmp"\n', "")


#: every fourth VM: YAML, a balloon, two drives (one read-only), a console
YAML = """\
name: vm-{i}
serial: pty
cpu: {{cpus: 2}}
memory: {{size: 1G}}
boot:
  kernel: /images/vmlinux
  initrd: /images/initrd.img
drives:
  rootfs: {{file: "/images/rootfs-{i}.ext4"}}
  base: {{file: /images/base.ext4, readonly: true}}
nets:
  net0: {{ifname: "tq{i}"}}
balloon: {{target: 768M}}
chardevs:
  con0: {{backend: socket, path: "/run/vm-{i}.console", server: true, nowait: true}}
consoles:
  console0: {{chardev: con0}}
"""


def generate(work: Path, count: int) -> None:
    for i in range(count):
        if i % 4 == 3:
            text, name = YAML.format(i=i), f"yaml/vm-{i:04d}.yaml"
        else:
            text = MICROVM.format(
                i=i, cpus=1 + i % 4, mem=256 * (1 + i % 4), a=i >> 8 & 255, b=i & 255, cid=3 + i
            )
            name = f"micro/vm-{i:04d}.toml"
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


HOST_SIDE = r"""
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[2])
from fakevm import FakeVm
from engine.qmp.server import QmpServer
from engine.eventloop import EventLoop
from launcher import runtime
from launcher.gitops.desired import build
from launcher.gitops.live import devices_of, slots_of_plan
from launcher.gitops.plan import desired_plan
from launcher.gitops.materialize import materialize
from launcher.gitops.source import parse_source, snapshot
from launcher.gitops.state import HostState, VmRecord, VmState, gitops_dir, save_state, write_record

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
spec = parse_source(sys.argv[1])
work = gitops_dir()
snap = snapshot(spec, work)
materialize(snap)
desired = build(snap, "bench", work)
assert not desired.errors, desired.results[:3]
loop = EventLoop("qmp")
import threading
threading.Thread(target=loop.run, daemon=True).start()
state = HostState("bench", spec.text, snap.revision, time.time())
servers, claims = [], []
pid = os.getpid()
start = runtime.process_start_time(pid)
for name, w in sorted(desired.vms.items()):
    man = desired.manifest(name)
    claim = runtime.claim(name)
    claims.append(claim)
    vm = claim.vm
    plan = desired_plan(man)
    os.close(vm.create("plan.json", json.dumps(plan).encode()))
    qmp = plan["qmp"][0]
    fake = FakeVm(name, man.cpu.cpus, man.memory.size)
    srv = QmpServer(fake, [qmp], loop=loop)
    fake.sink = srv
    srv.start()
    servers.append(srv)
    meta = runtime.Meta(name=name, pid=pid, pid_start=start, started=time.time(), qmp=qmp,
                        manifest=w.file, detached=True, vcpus=man.cpu.cpus,
                        memory=man.memory.size, plan=str(vm.plan_file), engine_pid=pid,
                        engine_start=start)
    vm.write_meta(meta)
    rec = VmRecord("bench", spec.text, snap.revision, w.entry.path, w.model_hash,
                   desired.text_of(w), w.format, w.base_dir, True, time.time(), meta.started,
                   {"blk": {}}, slots_of_plan(plan), None, man.paused)
    write_record(vm, rec)
    state.vms[name] = VmState(spec.text, snap.revision, w.entry.path, w.model_hash,
                              created=True, applied=time.time(),
                              engine={"pid": pid, "start": start})
save_state(state)
print("ready", len(servers), flush=True)
sys.stdin.read()
"""


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, res


def line(name: str, samples: list[float]) -> str:
    return f"{name:52s} min {min(samples):6.3f} s  median {statistics.median(samples):6.3f} s"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    py = sys.executable
    cli = [py, "-m", "launcher.cli"]
    with tempfile.TemporaryDirectory(prefix="svl-bench-") as tmp:
        from gitrepo import Repo

        repo = Repo(Path(tmp) / "git")
        generate(repo.work, args.count)
        repo.commit("1,000 VMs")
        env = {**os.environ, "SVLAUNCH_RUNTIME_DIR": str(Path(tmp) / "rt")}
        host = subprocess.Popen(
            [py, "-c", HOST_SIDE, repo.source, str(ROOT / "tests" / "support")],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert host.stdout is not None and host.stdin is not None
        ready = host.stdout.readline().split()
        assert ready[:1] == ["ready"], ready
        try:
            diff = [*cli, "diff", repo.source, "--host", HOST, "--format", "json",
                    "--detailed-exitcode"]  # fmt: skip
            cache = Path(tmp) / "rt" / ".gitops" / "parsed.json"
            warm, cold = [], []
            dt, res = timed(diff, env)  # warm-up: bytecode, page cache
            data = json.loads(res.stdout)
            actions = {r["action"] for r in data["rows"]}
            assert res.returncode == 0 and actions == {"unchanged"}, (res.returncode, actions)
            assert len(data["rows"]) == args.count
            for _ in range(args.runs):
                dt, res = timed(diff, env)
                assert res.returncode == 0, res.stderr
                warm.append(dt)
                cache.unlink()
                dt, res = timed(diff, env)
                assert res.returncode == 0, res.stderr
                cold.append(dt)
            validate = [timed([*cli, "validate", "--quiet", str(repo.work)], env)[0]
                        for _ in range(args.runs)]  # fmt: skip
        finally:
            host.stdin.close()
            host.wait(60)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"N={args.runs} runs, {args.count} VMs running, load average {load}")
    print(line(f"svlaunch diff, no change ({args.count} VMs, cache warm)", warm))
    print(line(f"svlaunch diff, no change ({args.count} VMs, cache cold)", cold))
    print(line(f"svlaunch validate DIR ({args.count} manifests, reference)", validate))
    ok = min(warm) <= 1.0
    print(f"goal: svlaunch diff of {args.count} VMs with no change <= 1 s: "
          f"{'met' if ok else 'NOT met'} (min {min(warm):.3f} s)")  # fmt: skip
    med = statistics.median
    result("gitops_diff", vms=args.count, runs=args.runs, warm_min_s=min(warm),
           warm_median_s=med(warm), cold_median_s=med(cold),
           validate_median_s=med(validate))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""svlaunch's KVM engine: builds and runs one VM from a plan (``engine.plan``).

The engine imports nothing of the launcher. The launcher, in turn, may import only the engine's
contract at start-up (the modules below: pure values and rules, no cffi, no I/O); everything
else of the engine loads in the engine's own process or when a command runs a VM.
"""

#: what ``svlaunch validate``/``cmdline`` may load of the engine (``tests/unit/test_startup.py``)
CONTRACT_MODULES = (
    "engine",
    "engine.errors",
    "engine.ending",
    "engine.plan",
    "engine.device_rules",
    "engine.hostfiles",
    "engine.names",
    "engine.ozone",
    "engine.ozone.rules",
    "engine.machine",
    "engine.machine.layout",
    "engine.machine.apicid",
)

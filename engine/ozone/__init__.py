"""The sandbox (ozone for the builtin engine): jail, mounts, namespaces, cgroups, capabilities.

``Sandbox.from_plan(plan)`` validates (reads the host, changes nothing); ``realize()`` builds the
jail and starts the engine in it; ``teardown()`` undoes it, also from the state file alone
(``engine.ozone.sandbox.teardown_named``). See docs/sandbox.md.
"""

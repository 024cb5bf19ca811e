"""The engine pool: a resident process with the engine imported that forks one engine per VM.

``python -m engine.pool serve --socket PATH`` (or under systemd socket activation) answers
requests on a unix ``SOCK_SEQPACKET`` socket (``protocol``); each ``start`` forks an engine
(``server``, ``child``) that is the VM's own process from then on, exactly as if it had been
exec'd, minus the interpreter's start-up. ``client`` is what the launcher uses.
docs/pool.md has the why and the numbers.
"""

"""Snapshot and restore, StratoVirt's way: QMP ``migrate`` to ``file:DIR`` writes a paused VM,
``incoming = "file:DIR"`` (``-incoming``) builds the VM from it instead of booting.

``format`` (the files and their checks) and ``rules`` (what cannot be snapshotted, what a
restore must not change) are pure and part of the engine's contract: the launcher reads them to
validate a manifest. ``codec`` turns the state dataclasses into JSON; ``save`` captures a
running VM and writes it; ``restore`` loads, checks and applies it. See docs/snapshot.md.
"""

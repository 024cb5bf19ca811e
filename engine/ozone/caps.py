"""Capability names and the drop sequence.

Parsing is pure (names → a bit mask). ``drop_to`` applies a mask to all five sets in the one
order the kernel allows: the bounding set first (dropping needs CAP_SETPCAP, which we are about to
lose), then KEEPCAPS so a root→uid switch keeps the permitted set, then the uid switch, then
effective/permitted/inheritable, then ambient (so the non-root engine keeps the kept capabilities
across execve of an interpreter that has no file capabilities).
"""

from __future__ import annotations

from engine.ozone import sys as osys
from engine.ozone.rules import CAPS, DANGEROUS, NAMES, names_of  # noqa: F401  (re-exported)
from engine.ozone.rules import parse_caps as parse  # noqa: F401


def drop_to(mask: int, uid: int, gid: int, last_cap: int) -> None:
    """Keep exactly ``mask`` in all five sets and become ``uid``/``gid`` (see module doc for order)."""
    for cap in range(last_cap + 1):
        if not mask >> cap & 1:
            osys.prctl(osys.PR_CAPBSET_DROP, cap)
    osys.prctl(osys.PR_SET_KEEPCAPS, 1)
    osys.set_ids(uid, gid)
    osys.prctl(osys.PR_SET_KEEPCAPS, 0)
    # setresuid from 0 clears the effective set; permitted survives thanks to KEEPCAPS
    osys.capset(mask, mask, mask)
    osys.prctl(osys.PR_CAP_AMBIENT, osys.PR_CAP_AMBIENT_CLEAR_ALL)
    for cap in range(last_cap + 1):
        if mask >> cap & 1:
            osys.prctl(osys.PR_CAP_AMBIENT, osys.PR_CAP_AMBIENT_RAISE, cap)

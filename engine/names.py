"""The one rule for a VM name, shared by the schema, validation, import, ``up`` and the sandbox.

A VM name becomes a folder under the runtime root, a jail folder, a cgroup and part of socket
paths, and it is printed in tables: so it is one path component of at most 64 printable ASCII
characters from a small set, starting with a letter or a digit (no ``.``/``..``, no ``/``, no
control characters, no trailing newline: the pattern is matched with ``fullmatch``).
"""

from __future__ import annotations

import re

#: the JSON Schema spelling of the rule (ECMA-262 regex, anchored). ``(?!\n)``: Python's ``$``
#: (jsonschema, svlaunch's shape check) also matches before a final newline; ECMA's does not.
VM_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$(?!\n)"
VM_NAME_HINT = "use 1-64 characters from A-Z a-z 0-9 _ . + -, starting with a letter or digit"

_VM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")


def is_vm_name(name: str) -> bool:
    """Whether ``name`` is a valid VM name (the whole string: ``"vm\\n"`` is not)."""
    return _VM_NAME.fullmatch(name) is not None

"""Out-of-line cffi modules generated from a ``CDEF`` string, so importing a binding parses no C
(parsing the KVM declarations costs about 49 ms at every start: docs/performance.md).

Each binding (``engine/machine/kvm_sys.py``, ``engine/io/aio_sys.py``) keeps its ``CDEF`` and
imports the generated ``_*_ffi.py``; ``python -m <binding>`` regenerates it after an edit, and a
test compares the committed module with a fresh one.
"""

from __future__ import annotations

from typing import Any


def build_ffi(cdef: str, module: str | None = None) -> Any:
    """A cffi ``FFI`` parsed from ``cdef`` (the slow path); with ``module``, ready to emit it."""
    from cffi import FFI

    f = FFI()
    f.cdef(cdef)
    if module is not None:
        f.set_source(module, None)
    return f


def write_ffi_module(cdef: str, module: str, header: str, path: str) -> None:
    """Write the generated module ``module`` for ``cdef`` to ``path``, ``header`` first."""
    import io

    buf = io.StringIO()
    build_ffi(cdef, module).emit_python_code(buf)
    with open(path, "w") as f:
        f.write(header + buf.getvalue())

"""ACPI tables for a direct-boot, HW-reduced x86_64 guest (docs/engine.md, "ACPI").

- ``sdt``: table header, checksum, Generic Address Structure;
- ``aml``: minimal AML encoder (names, devices, packages, resource templates);
- ``tables``: RSDP, XSDT, FADT, MADT, SRAT, SLIT builders, pure values → bytes;
- ``dsdt``: the DSDT (COM1, virtio-mmio ``LNRO0005`` devices, ``_S5_``);
- ``pm``: the reset/sleep register the FADT names, and what a guest write to it means;
- ``builder``: ``build_acpi(plan) -> AcpiBlob``, the tables placed at guest addresses.
"""

"""Guest NUMA: host node checks and ``mbind`` binding of guest RAM (``engine.numa.host``)."""

"""svlaunch benchmarks: each module here is a standalone program that prints its numbers."""

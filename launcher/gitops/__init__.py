"""GitOps: a host runs exactly what its manifest source says, and keeps running it.

A source (a folder, or a git repository at a ref) holds manifests; each names the hosts that run
it (``hosts``, absent: all). ``svlaunch diff`` compares what this host should run with what it
runs and what svlaunch recorded; ``svlaunch apply`` carries the difference out; ``svlaunch
agent`` does both on a timer and restarts crashed VMs per their policy. docs/gitops.md.

Modules, one job each:

- ``source``: read a source: scan a folder, or fetch a git ref into a cache and read its tree
  (real git; no hook runs, no symlink leaves the tree);
- ``desired``: the VMs a source gives this host, validated, with a parse cache for speed;
- ``inventory``: rules across manifests (per host) and the optional host inventory;
- ``state``: the host state file and the per-VM record in its runtime folder (adoption);
- ``observe``: what runs now (liveness, run state, how a dead VM ended);
- ``plan``: the diff (create, destroy, update-live, restart, drift, unchanged, per field);
- ``render``: the diff as a table or JSON;
- ``live``: QMP for the live changes (balloon, hot-replaced drives and NICs);
- ``apply``: carrying a plan out, in dependency order, a bounded number at a time;
- ``agent``: the reconcile loop and supervision; ``systemd``: the units.
"""

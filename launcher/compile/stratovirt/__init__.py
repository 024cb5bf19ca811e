"""Model ⇄ StratoVirt v2.2 command line, both ways, and the ozone wrapper.

``emit_argv(m)`` (``emit``) turns a manifest into the argv StratoVirt v2.2 accepts, in one
canonical order; ``import_argv(argv)`` (``importer``) reads such an argv back into a manifest,
accepting exactly what StratoVirt accepts. ``ozone`` does the same for the sandbox launcher.
``tokens`` (option arity) and ``props`` (``key=value`` lists and value types) are the grammar
both directions share, so a value is spelled and read by one definition.

Argv locations: errors carry ``Mark(file="argv", line=N, col=C)``: the N-th argument as the user
gave it (1-based, a leading program path counts), C-th character inside it (0: the whole element).
"""

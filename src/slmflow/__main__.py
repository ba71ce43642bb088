"""`python -m slmflow ...` = the `slmflow` command. Why: launchers that start one Python process
per GPU or CPU rank (``torchrun -m``, ``accelerate launch -m``) take a module, not a console
script, e.g. ``torchrun --nproc_per_node 2 -m slmflow train agent router ...``."""

from slmflow.cli import main

if __name__ == "__main__":
    main()

"""python train.py ...: the same as `cdiff train ...` (cdiff_jax/commands/train.py), from a checkout."""

import sys

from cdiff_jax.commands.train import main

if __name__ == "__main__":
    sys.exit(main())

"""Sample faces from a mask, a caption or both, or edit a face (`python sample.py edit ...`); see --help.

A thin wrapper kept at the top level of a checkout: the command is `cdiff_jax.commands.sample`
(`python -m cdiff_jax.commands.sample` from an installed package).
"""

import sys

from cdiff_jax.commands.sample import main

if __name__ == "__main__":
    sys.exit(main())

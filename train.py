"""Training entry point: not implemented yet.

Training the dynamic diffusers (the paper's stage), the experts and the autoencoder is tracked
in its own issue; until it lands this script says so and exits with an error instead of
pretending to train. Sampling (`sample.py`) and checkpoint conversion
(`python -m cdiff_jax.convert`) work today.
"""

import sys

if __name__ == "__main__":
    print("error: train.py is not implemented yet (training is tracked in its own issue); "
          "use sample.py or python -m cdiff_jax.convert", file=sys.stderr)
    sys.exit(2)

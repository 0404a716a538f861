"""Blocked vs whole-sequence attention at the released UNets' attended sizes (XLA:CPU).

    python bench/attention.py

The baseline is the same attention without query blocks, timed in the same run.
"""

import jax

from cdiff_jax.nn import layers
from timing import best_time

SHAPES = [  # (tokens, heads, head width, where)
    (1024, 32, 2, "dynamic diffuser, 32x32 self-attention"),
    (1024, 32, 12, "expert, 32x32 self-attention"),
    (256, 32, 18, "expert, 16x16 self-attention"),
    (4096, 1, 512, "autoencoder mid attention at 64x64"),
]


DEFAULT_MIN = layers.BLOCKED_MIN_SCORES


def main():
    for tokens, heads, width, where in SHAPES:
        q = jax.random.normal(jax.random.key(0), (1, tokens, heads * width))
        k, v = q + 1, q * 2
        timings = {}
        for name, min_scores in (("whole", 1 << 62), ("blocked", 1)):
            layers.BLOCKED_MIN_SCORES = min_scores  # read at trace time: each jit below traces anew
            fn = jax.jit(lambda q, k, v, h: layers.multi_head_attention(q, k, v, h), static_argnums=3)
            timings[name] = best_time(fn, q, k, v, heads)
        used = "blocked" if width <= layers.BLOCKED_MAX_HEAD_WIDTH and heads * tokens**2 >= DEFAULT_MIN else "whole"
        print(f"{where}: whole {timings['whole'] * 1e3:.1f} ms, blocks of {layers.QUERY_BLOCK} "
              f"{timings['blocked'] * 1e3:.1f} ms, speed-up {timings['whole'] / timings['blocked']:.2f}x; "
              f"the rule picks {used}")


if __name__ == "__main__":
    main()

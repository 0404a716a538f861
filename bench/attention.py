"""Our attention against `jax.nn.dot_product_attention` at the released UNets' attended sizes
(XLA:CPU).

    python bench/attention.py

The baseline is `jax.nn.dot_product_attention(implementation="xla")` on the same inputs (what
`layers.multi_head_attention` called before it put heads first), timed in the same run.
"""

import jax

from cdiff_jax.nn import layers
from timing import best_time

SHAPES = [  # (batch, queries, keys, heads, head width, where)
    (1, 1024, 1024, 32, 2, "dynamic diffuser, 32x32 self-attention"),
    (2, 1024, 1024, 32, 2, "dynamic diffuser, 32x32 self-attention, guidance batch"),
    (1, 1024, 1024, 32, 12, "expert, 32x32 self-attention"),
    (2, 1024, 1024, 32, 12, "expert, 32x32 self-attention, guidance batch"),
    (1, 1024, 77, 32, 12, "text expert, 32x32 cross-attention over the caption"),
    (1, 256, 256, 32, 18, "expert, 16x16 self-attention"),
    (1, 64, 64, 32, 30, "expert, 8x8 self-attention"),
    (1, 4096, 4096, 1, 512, "autoencoder mid attention at 64x64"),
]


def library_attention(q, k, v, heads):
    b, n, inner = q.shape
    d = inner // heads
    q, k, v = (x.reshape(b, x.shape[1], heads, d) for x in (q, k, v))
    return jax.nn.dot_product_attention(q, k, v, scale=d**-0.5, implementation="xla").reshape(b, n, inner)


def main():
    for batch, queries, keys, heads, width, where in SHAPES:
        q = jax.random.normal(jax.random.key(0), (batch, queries, heads * width))
        k = jax.random.normal(jax.random.key(1), (batch, keys, heads * width))
        v = 2 * k
        library = best_time(jax.jit(library_attention, static_argnums=3), q, k, v, heads)
        ours = best_time(jax.jit(layers.multi_head_attention, static_argnums=3), q, k, v, heads)
        print(f"{where} (batch {batch}): dot_product_attention {library * 1e3:.1f} ms, "
              f"ours {ours * 1e3:.1f} ms: {library / ours:.2f}x faster")


if __name__ == "__main__":
    main()

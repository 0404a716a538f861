"""The CPU form of attention against two baselines at the released UNets' attended sizes.

    python bench/attention.py

Baselines, timed in the same run on the same inputs: the "library" form of `kernels.attention`
(`jax.nn.dot_product_attention`, what other backends get and what the CPU form replaced), and
the heads-first form with the scale on the scores and a plain softmax (what it was before the
scale moved to q and the normalisation after the value product). A network's attention is also
worth timing inside the network (bench/sample_512.py --what parts): there the scale constant
competes with everything else for memory bandwidth.
"""

import jax
from timing import best_time

from cdiff_jax.nn.kernels import KernelForms, attention, kernel_forms

ROUNDS = 3
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


def scores_scaled_attention(q, k, v, heads):
    b, n, inner = q.shape
    d = inner // heads
    q = q.reshape(b, n, heads, d).transpose(0, 2, 1, 3)
    keys_t = k.reshape(b, k.shape[1], heads, d).transpose(0, 2, 3, 1)
    v = v.reshape(b, v.shape[1], heads, d).transpose(0, 2, 1, 3)
    out = jax.nn.softmax((q @ keys_t) * d**-0.5, axis=-1) @ v
    return out.transpose(0, 2, 1, 3).reshape(b, n, inner)


def main():
    print(f"this backend's form: {kernel_forms().attention}")
    in_form = lambda form: lambda q, k, v, heads: attention(q, k, v, heads, KernelForms(attention=form))  # noqa: E731
    forms = {
        "dot_product_attention": in_form("library"),
        "scale on the scores": scores_scaled_attention,
        "ours": in_form("heads_first"),
    }
    forms = {name: jax.jit(fn, static_argnums=3) for name, fn in forms.items()}
    for batch, queries, keys, heads, width, where in SHAPES:
        q = jax.random.normal(jax.random.key(0), (batch, queries, heads * width))
        k = jax.random.normal(jax.random.key(1), (batch, keys, heads * width))
        v = 2 * k
        best = dict.fromkeys(forms, float("inf"))
        for _ in range(ROUNDS):  # forms alternate, so a slow spell of the machine hits all of them
            for name, fn in forms.items():
                best[name] = min(best[name], best_time(fn, q, k, v, heads))
        ours = best["ours"]
        print(
            f"{where} (batch {batch}): "
            + ", ".join(f"{name} {t * 1e3:.1f} ms" for name, t in best.items())
            + f": ours {best['dot_product_attention'] / ours:.2f}x and "
            f"{best['scale on the scores'] / ours:.2f}x faster"
        )


if __name__ == "__main__":
    main()

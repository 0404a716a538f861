"""Two experts of the same architecture: two calls vs one vmapped call over stacked parameters.

    python bench/expert_batching.py --batch 1

The issue asked whether batching the experts pays on CPU; the baseline is two sequential
calls in the same jitted program, timed in the same run.
"""

import argparse

import jax
import jax.numpy as jnp
from flax import nnx
from timing import best_time

from cdiff_jax.config import load_config
from cdiff_jax.nn.unet import UNet


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--config", default="released.py:512_codiff")
    args = p.parse_args()
    cfg = load_config(args.config).modalities["text"].expert
    graphdef, first = nnx.split(UNet(cfg, rngs=nnx.Rngs(0)))
    _, second = nnx.split(UNet(cfg, rngs=nnx.Rngs(1)))
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), first, second)
    b = args.batch
    x, t = jnp.ones((b, 64, 64, 3)), jnp.full((b,), 500)
    contexts = jnp.ones((2, b, 77, cfg.context_dim))

    sequential = jax.jit(
        lambda s1, s2, x, t, c: (nnx.merge(graphdef, s1)(x, t, c[0]), nnx.merge(graphdef, s2)(x, t, c[1]))
    )
    batched = jax.jit(lambda st, x, t, c: jax.vmap(lambda s, ctx: nnx.merge(graphdef, s)(x, t, ctx))(st, c))
    t_seq = best_time(sequential, first, second, x, t, contexts)
    t_vmap = best_time(batched, stacked, x, t, contexts)
    print(
        f"batch {b}: two calls {t_seq:.2f}s, vmapped over stacked parameters {t_vmap:.2f}s, ratio {t_vmap / t_seq:.2f}x"
    )


if __name__ == "__main__":
    main()

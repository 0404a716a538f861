"""What the per-step progress callback costs inside the compiled sampling loop.

    python bench/progress_overhead.py

Times the same 200-step sample of the small demo model with and without the host callback;
the difference divided by the steps is the callback's cost per step (an upper bound for large
models, whose steps take seconds).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cdiff_jax.config import load_config
from cdiff_jax.sampling import SamplerSettings, sample
from cdiff_jax.system import init_system

STEPS = 200


def main():
    system = init_system(load_config("demo_faces.py"), seed=0)
    graphdef, state = nnx.split(system)
    rng = np.random.default_rng(0)
    conditions = {
        "mask": jnp.asarray(rng.integers(0, 2, (1, 19, 1024)), jnp.float32),
        "text": jnp.asarray(rng.integers(1000, 3000, (1, 77)), jnp.int32),
    }
    x_T = jnp.asarray(rng.normal(size=(1, 16, 16, 3)), jnp.float32)
    timings = {}
    settings = SamplerSettings(steps=STEPS)
    for progress in (False, True):
        on_step = (lambda done, total: None) if progress else None

        def run(on_step=on_step):
            return jax.block_until_ready(
                sample(graphdef, state, conditions, x_T, jax.random.key(0), settings, on_step=on_step)
            )

        run()
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        timings[progress] = best
    per_step = (timings[True] - timings[False]) / STEPS
    print(
        f"{STEPS} steps: without callback {timings[False]:.3f}s, with {timings[True]:.3f}s; "
        f"callback cost {per_step * 1e3:.3f} ms per step ({timings[True] / timings[False]:.2f}x on this tiny model)"
    )


if __name__ == "__main__":
    main()

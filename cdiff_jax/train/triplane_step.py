"""The triplane stage's compiled step: an EG3D generator fitted to the toy 3D world as an auto-decoder.

Each training identity owns a learned latent code; the generator renders code i from the camera of a view
of identity i, and the step lowers the mean squared error to that view's exact image, plus (`depth_weight`)
the absolute error of its expected depth to the view's exact depth: from images alone the volume stays a
coloured haze with no surfaces for a long time (BENCHMARKS.md). EG3D itself trains
as a GAN with a dual discriminator; on two CPU cores a GAN of this size does not converge within hours,
while the auto-decoder sees the answer at every view and fits in a few (bench and README: the toy 3D
world). What DDGI-3D needs of the generator holds either way: a W+ space whose codes render consistent
faces from every view. Codes are normalised by the mapping network, so new identities come from z ~ N(0, I).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cdiff_jax.config import EG3DConfig
from cdiff_jax.nn.eg3d import TriPlaneGenerator, Views, draw_uniforms
from cdiff_jax.noise import normal
from cdiff_jax.optimization import LoopPolicy, loop_policy, run_steps
from cdiff_jax.train.step import StepMetrics, TrainState, apply_gradients


class AutoDecoder(nnx.Module):
    """The generator and one code per training identity."""

    def __init__(self, cfg: EG3DConfig, identities: int, *, rngs: nnx.Rngs):
        self.generator = TriPlaneGenerator(cfg, rngs=rngs)
        self.codes = nnx.Param(normal(rngs.params(), (identities, cfg.z_dim)))

    def ws(self, identity: jax.Array, cameras: jax.Array) -> jax.Array:
        """W+ codes [B, num_ws, w_dim] of the identities (cameras condition the mapping as EG3D's does)."""
        cfg = self.generator.cfg
        c = jnp.zeros_like(cameras) if cfg.c_gen_conditioning_zero else cameras * cfg.c_scale
        w = self.generator.mapping(self.codes[...][identity], c)
        return jnp.broadcast_to(w[:, None], (w.shape[0], cfg.num_ws, w.shape[-1]))

    def views(self, identity: jax.Array, cameras: jax.Array, key: jax.Array) -> Views:
        g = self.generator
        batch = identity.shape[0]
        draws = draw_uniforms(key, g.cfg, batch, g.cfg.neural_rendering_resolution)
        noises = g.backbone.synthesis.noises(batch, "const", None, None)
        return g.views(self.ws(identity, cameras), cameras, draws, noises)


def triplane_loss(model: AutoDecoder, batch: dict, key: jax.Array, depth_weight: float = 0.0) -> jax.Array:
    """The images' mean squared error, plus `depth_weight` x the expected depth's mean absolute error."""
    seen = model.views(batch["identity"], batch["camera"], key)
    loss = jnp.mean(jnp.square(seen.image - batch["image"]))
    if depth_weight:
        loss += depth_weight * jnp.mean(jnp.abs(seen.depth - batch["depth"]))
    return loss


def triplane_train_steps(
    graphdef,
    buffers,
    state: TrainState,
    batches: dict,
    key: jax.Array,
    tx: optax.GradientTransformation,
    depth_weight: float = 0.0,
) -> tuple[TrainState, StepMetrics]:
    """One Adam step per leading entry of `batches`; the randomness of step n is fold_in(key, n)."""
    return _triplane_train_steps(graphdef, buffers, state, batches, key, tx, depth_weight, loop_policy())


@jax.jit(static_argnames=("graphdef", "tx", "depth_weight", "policy"), donate_argnames=("state",))
def _triplane_train_steps(graphdef, buffers, state, batches, key, tx, depth_weight: float, policy: LoopPolicy):
    def one_step(state: TrainState, batch):
        loss, grads = jax.value_and_grad(
            lambda p: triplane_loss(
                nnx.merge(graphdef, p, buffers), batch, jax.random.fold_in(key, state.step), depth_weight
            )
        )(state.params)
        return apply_gradients(state, loss, grads, tx)

    state, (loss, grad_norm), applied = run_steps(one_step, state, batches, policy)
    return state, StepMetrics(loss=loss, grad_norm=grad_norm, finite=applied)

"""DDGI's two training stages, one compiled step each (the system, the GAN and the frozen head frozen):

  stage 1 ("mapping"): M alone (T is the identity), G(w^m_t) against the ground-truth image;
  stage 2 ("modulation"): T with M frozen, G(w_t) against I^d_0, the diffusion model's own sample, plus the
  ground truth weighted by `ground_truth_weight`.

Each example of a batch is read at one of its cached steps, drawn per example and per step, so the heads
learn from the whole trajectory. Each target term is `l2_weight` * mean squared error + `perceptual_weight`
* a perceptual distance: the paper's weights are not published, these are pSp's (L2 1.0, LPIPS 0.8). LPIPS
needs VGG weights that nothing here downloads, and the toy faces' judges must not be trained against, so the
distance is the mean squared difference of the frozen autoencoder's posterior means (a network trained on the
same images that judges nothing); identity loss is omitted (toy faces have no identity network).

A tri-plane GAN may render at a lower `resolution` while training (a quarter of the rays at half the size), the
targets then coming area-averaged to it (stages.py); both terms compare those smaller images. The autoencoder's
encoder takes them: it is convolutions, strided downsampling and a mid-block attention over however many
positions there are (its attention levels are fixed when it is built), so 32x32 images give 8x8 posterior means
in the demo's, where 64x64 give 16x16.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cdiff_jax.ddgi.features import read_features
from cdiff_jax.ddgi.gan import gan_images
from cdiff_jax.modalities import kind_entry
from cdiff_jax.optimization import LoopPolicy, loop_policy, run_steps
from cdiff_jax.train.step import StepMetrics, TrainState, apply_gradients

DDGI_STAGES = {"ddgi_mapping": ("mapping",), "ddgi_modulation": ("modulation",)}


@dataclasses.dataclass(frozen=True)
class DDGIObjective:
    stage: str  # "ddgi_mapping" or "ddgi_modulation"
    experts: tuple[str, ...]  # the modalities whose UNets are read
    l2_weight: float = 1.0
    perceptual_weight: float = 0.8
    ground_truth_weight: float = 1.0  # stage 2: the ground-truth terms beside I^d_0's (ours)
    resolution: int | None = None  # a tri-plane GAN's neural rendering resolution (None: its own); targets at it

    def __post_init__(self):
        if self.stage not in DDGI_STAGES:
            raise ValueError(f"DDGI stage {self.stage!r}: expected one of {sorted(DDGI_STAGES)}")


def perceptual_distance(autoencoder, a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean squared difference of the autoencoder's posterior means of two image batches in [-1, 1]."""
    return jnp.mean(jnp.square(autoencoder.encode(a)[0] - autoencoder.encode(b)[0]))


def ddgi_images(heads, system, generator, batch: dict, k: jax.Array, timesteps: jax.Array,
                objective: DDGIObjective, key: jax.Array | None = None) -> jax.Array:
    """G's images of the W+ codes the heads read from example i at its cached step k[i] ([B] indices into the
    kept steps, whose timesteps are `timesteps`); EG3D renders them at its training camera and the objective's
    resolution, its renderer's uniforms drawn from `key`."""
    x_t = batch["x_t"]  # [B, K, h, w, c]
    b = x_t.shape[0]
    conditions = {name: batch[kind_entry(system.cfg.modalities[name].kind).batch_key] for name in objective.experts}
    features = jax.lax.stop_gradient(read_features(system, x_t[jnp.arange(b), k], timesteps[k], conditions,
                                                   objective.experts))
    codes = heads(features.middle, features.decoder, features.attention, features.content,
                  generator.mapping.w_avg[...])
    w = codes.mapped if objective.stage == "ddgi_mapping" else codes.w
    return gan_images(generator, w, key, resolution=objective.resolution)


def ddgi_loss(heads, system, generator, batch: dict, key: jax.Array, timesteps: jax.Array,
              objective: DDGIObjective) -> jax.Array:
    k = jax.random.randint(key, (batch["x_t"].shape[0],), 0, batch["x_t"].shape[1])
    images = ddgi_images(heads, system, generator, batch, k, timesteps, objective, jax.random.fold_in(key, 1))

    def term(target):
        return (objective.l2_weight * jnp.mean(jnp.square(images - target))
                + objective.perceptual_weight * perceptual_distance(system.autoencoder, images, target))

    if objective.stage == "ddgi_mapping":
        return term(batch["image"])
    return term(batch["diffusion_image"]) + objective.ground_truth_weight * term(batch["image"])


def ddgi_train_steps(heads_graphdef, frozen_heads, state: TrainState, batches: dict, frozen: tuple, timesteps,
                     key: jax.Array, tx: optax.GradientTransformation,
                     objective: DDGIObjective) -> tuple[TrainState, StepMetrics]:
    """One Adam step of the stage's head per leading entry of `batches`; `frozen` is ((system graphdef, state),
    (generator graphdef, state)). The randomness of step n is fold_in(key, n)."""
    (system_graphdef, system_state), (gan_graphdef, gan_state) = frozen
    return _ddgi_train_steps(heads_graphdef, frozen_heads, state, batches, system_graphdef, system_state,
                             gan_graphdef, gan_state, timesteps, key, tx, objective, loop_policy())


@jax.jit(static_argnames=("heads_graphdef", "system_graphdef", "gan_graphdef", "tx", "objective", "policy"),
         donate_argnames=("state",))
def _ddgi_train_steps(heads_graphdef, frozen_heads, state, batches, system_graphdef, system_state, gan_graphdef,
                      gan_state, timesteps, key, tx, objective, policy: LoopPolicy):
    system = nnx.merge(system_graphdef, system_state)
    generator = nnx.merge(gan_graphdef, gan_state)

    def loss_fn(params, batch, step_key):
        heads = nnx.merge(heads_graphdef, params, frozen_heads)
        return ddgi_loss(heads, system, generator, batch, step_key, timesteps, objective)

    def one_step(state: TrainState, batch):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, jax.random.fold_in(key, state.step))
        return apply_gradients(state, loss, grads, tx)

    state, (loss, grad_norm), applied = run_steps(one_step, state, batches, policy)
    return state, StepMetrics(loss=loss, grad_norm=grad_norm, finite=applied)

"""DDGI's two training stages, one compiled step each (the system, the GAN and the frozen head frozen):

  stage 1 ("mapping"): M alone (T is the identity), G(w^m_t) against the ground-truth image;
  stage 2 ("modulation"): T with M frozen, G(w_t) against I^d_0, the diffusion model's own sample, plus the
  ground truth weighted by `ground_truth_weight`.

Each example of a batch is read at one of its cached steps, drawn per example and per step, so the heads
learn from the whole trajectory. Each target term is `l2_weight` * mean squared error + `perceptual_weight`
* a perceptual distance + `identity_weight` * pSp's ID loss (1 - the mean cosine of ArcFace IR-SE50 embeddings,
the images pooled to 256x256, face-cropped and pooled to 112x112 as pSp does). The paper publishes no weights;
pSp's are L2 1.0, LPIPS 0.8, identity 0.1.

The perceptual distance is a choice (`perceptual`) because real and toy faces need different ones. A real-face
run uses pSp's networks; it sets the TrainConfig fields ddgi_perceptual="lpips" with perceptual_weights=PATH
(LPIPS weights: an LDM autoencoder checkpoint holds them) and ddgi_identity_weight=0.1 with
ddgi_arcface_weights=PATH (pSp's model_ir_se50.pth); L2 1.0 and perceptual 0.8 are the defaults. The toy world
(the defaults: "autoencoder", identity 0) has no VGG or identity weights that fit it, and its own judges must not
be trained against, so the distance is the mean squared difference of the frozen autoencoder's posterior means
(a network trained on the same images that judges nothing) and there is no identity term. LPIPS and ArcFace
enter the compiled step as (graphdef, state) arguments, like the system and the GAN.

A tri-plane GAN may render at a lower `resolution` while training (a quarter of the rays at half the size), the
targets then coming area-averaged to it (stages.py); every term compares those smaller images. The autoencoder's
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
from cdiff_jax.nn.arcface import IDLOSS_IMAGE_SIZE, adaptive_pool_matrix, identity_similarity
from cdiff_jax.optimization import LoopPolicy, loop_policy, run_steps
from cdiff_jax.train.config import DDGI_PERCEPTUAL
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
    perceptual: str = "autoencoder"  # the perceptual distance: "autoencoder" (the stand-in) or "lpips"
    identity_weight: float = 0.0  # pSp's ID loss (ArcFace); 0: off, no identity network needed

    def __post_init__(self):
        if self.stage not in DDGI_STAGES:
            raise ValueError(f"DDGI stage {self.stage!r}: expected one of {sorted(DDGI_STAGES)}")
        if self.perceptual not in DDGI_PERCEPTUAL:
            raise ValueError(f"perceptual distance {self.perceptual!r}: expected one of {', '.join(DDGI_PERCEPTUAL)}")

    @property
    def uses_lpips(self) -> bool:
        return self.perceptual == "lpips" and self.perceptual_weight > 0


def perceptual_distance(autoencoder, a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean squared difference of the autoencoder's posterior means of two image batches in [-1, 1]."""
    return jnp.mean(jnp.square(autoencoder.encode(a)[0] - autoencoder.encode(b)[0]))


def idloss_images(images: jax.Array) -> jax.Array:
    """Images at the 256x256 pSp's IDLoss reads: adaptive-average-pooled to it, as pSp's face_pool does to its
    generator's output (unchanged if they are 256x256)."""
    size = images.shape[1:3]
    if size == (IDLOSS_IMAGE_SIZE, IDLOSS_IMAGE_SIZE):
        return images
    rows, cols = (adaptive_pool_matrix(n, IDLOSS_IMAGE_SIZE) for n in size)
    summed = jnp.einsum("ph,qw,nhwc->npqc", rows, cols, images, precision="highest")
    return summed / (rows.sum(1)[:, None] * cols.sum(1)[None, :])[None, :, :, None]


def identity_loss(arcface, images: jax.Array, targets: jax.Array) -> jax.Array:
    """pSp's ID loss: 1 - the mean cosine of the ArcFace embeddings of each image and its target."""
    return 1 - jnp.mean(
        identity_similarity(arcface, idloss_images(images), jax.lax.stop_gradient(idloss_images(targets)))
    )


def ddgi_images(
    heads,
    system,
    generator,
    batch: dict,
    k: jax.Array,
    timesteps: jax.Array,
    objective: DDGIObjective,
    key: jax.Array | None = None,
) -> jax.Array:
    """G's images of the W+ codes the heads read from example i at its cached step k[i] ([B] indices into the
    kept steps, whose timesteps are `timesteps`); EG3D renders them at its training camera and the objective's
    resolution, its renderer's uniforms drawn from `key`."""
    x_t = batch["x_t"]  # [B, K, h, w, c]
    b = x_t.shape[0]
    conditions = {name: batch[kind_entry(system.cfg.modalities[name].kind).batch_key] for name in objective.experts}
    features = jax.lax.stop_gradient(
        read_features(system, x_t[jnp.arange(b), k], timesteps[k], conditions, objective.experts)
    )
    codes = heads(features.middle, features.decoder, features.attention, features.content, generator.mapping.w_avg[...])
    w = codes.mapped if objective.stage == "ddgi_mapping" else codes.w
    return gan_images(generator, w, key, resolution=objective.resolution)


def ddgi_loss(
    heads,
    system,
    generator,
    batch: dict,
    key: jax.Array,
    timesteps: jax.Array,
    objective: DDGIObjective,
    lpips=None,
    arcface=None,
) -> jax.Array:
    """The stage's loss; `lpips` (LPIPS) and `arcface` (ArcFace) are needed when the objective uses them."""
    if (objective.uses_lpips and lpips is None) or (objective.identity_weight > 0 and arcface is None):
        raise ValueError("the objective uses LPIPS or the identity term: pass the network it needs")
    k = jax.random.randint(key, (batch["x_t"].shape[0],), 0, batch["x_t"].shape[1])
    images = ddgi_images(heads, system, generator, batch, k, timesteps, objective, jax.random.fold_in(key, 1))

    def term(target):
        loss = objective.l2_weight * jnp.mean(jnp.square(images - target))
        if objective.perceptual == "autoencoder":
            loss = loss + objective.perceptual_weight * perceptual_distance(system.autoencoder, images, target)
        elif objective.uses_lpips:
            loss = loss + objective.perceptual_weight * jnp.mean(lpips(images, target))
        if objective.identity_weight > 0:
            loss = loss + objective.identity_weight * identity_loss(arcface, images, target)
        return loss

    if objective.stage == "ddgi_mapping":
        return term(batch["image"])
    return term(batch["diffusion_image"]) + objective.ground_truth_weight * term(batch["image"])


def ddgi_train_steps(
    heads_graphdef,
    frozen_heads,
    state: TrainState,
    batches: dict,
    frozen: tuple,
    timesteps,
    key: jax.Array,
    tx: optax.GradientTransformation,
    objective: DDGIObjective,
    judges: tuple = (None, None),
) -> tuple[TrainState, StepMetrics]:
    """One Adam step of the stage's head per leading entry of `batches`; `frozen` is ((system graphdef, state),
    (generator graphdef, state)), `judges` (LPIPS, ArcFace), each (graphdef, state) or None where the objective
    does not use it. The randomness of step n is fold_in(key, n)."""
    (system_graphdef, system_state), (gan_graphdef, gan_state) = frozen
    (lpips_graphdef, lpips_state), (arcface_graphdef, arcface_state) = (judge or (None, None) for judge in judges)
    return _ddgi_train_steps(
        heads_graphdef,
        frozen_heads,
        state,
        batches,
        system_graphdef,
        system_state,
        gan_graphdef,
        gan_state,
        lpips_graphdef,
        lpips_state,
        arcface_graphdef,
        arcface_state,
        timesteps,
        key,
        tx,
        objective,
        loop_policy(),
    )


@jax.jit(
    static_argnames=(
        "heads_graphdef",
        "system_graphdef",
        "gan_graphdef",
        "lpips_graphdef",
        "arcface_graphdef",
        "tx",
        "objective",
        "policy",
    ),
    donate_argnames=("state",),
)
def _ddgi_train_steps(
    heads_graphdef,
    frozen_heads,
    state,
    batches,
    system_graphdef,
    system_state,
    gan_graphdef,
    gan_state,
    lpips_graphdef,
    lpips_state,
    arcface_graphdef,
    arcface_state,
    timesteps,
    key,
    tx,
    objective,
    policy: LoopPolicy,
):
    system = nnx.merge(system_graphdef, system_state)
    generator = nnx.merge(gan_graphdef, gan_state)
    lpips = None if lpips_graphdef is None else nnx.merge(lpips_graphdef, lpips_state)
    arcface = None if arcface_graphdef is None else nnx.merge(arcface_graphdef, arcface_state)

    def loss_fn(params, batch, step_key):
        heads = nnx.merge(heads_graphdef, params, frozen_heads)
        return ddgi_loss(heads, system, generator, batch, step_key, timesteps, objective, lpips, arcface)

    def one_step(state: TrainState, batch):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, jax.random.fold_in(key, state.step))
        return apply_gradients(state, loss, grads, tx)

    state, (loss, grad_norm), applied = run_steps(one_step, state, batches, policy)
    return state, StepMetrics(loss=loss, grad_norm=grad_norm, finite=applied)

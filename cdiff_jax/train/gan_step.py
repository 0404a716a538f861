"""StyleGAN2's training iteration, as stylegan2-ada-pytorch's `StyleGAN2Loss` and training loop run it
(without augmentation and without path-length regularisation):

  G main: non-saturating loss softplus(-D(G(z))), style mixing, random noise; w_avg tracked
  D main: softplus(D(G(z))) + softplus(-D(x))
  D reg:  lazy R1, (gamma / 2) * |grad_x D(x)|^2 * interval, every `r1_interval` iterations, with D's
          Adam rate and betas scaled by interval / (interval + 1)
  G_ema:  parameters averaged with a half-life of `ema_kimg` thousand images (ramped up early);
          buffers (w_avg, constant noise) copied

Path-length regularisation is left out (a documented deviation): it smooths W for projection and editing,
which DDGI does not do. An R1 iteration is always the first of a device call, chosen on the host, so
the double backward is compiled only into the calls that run it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from cdiff_jax.noise import normals
from cdiff_jax.optimization import LoopPolicy, adam, loop_policy, run_steps

ADAM_BETAS = (0.0, 0.99)


@struct.dataclass
class GANState:
    step: jax.Array  # int32 scalar: iterations done
    g_params: nnx.State
    g_buffers: nnx.State  # w_avg (tracked during training) and the constant noise
    d_params: nnx.State
    g_opt: optax.OptState
    d_opt: optax.OptState
    g_ema: nnx.State  # the average of g_params that samples and the exported generator use

    @property
    def export_params(self) -> tuple[nnx.State, nnx.State]:
        """(G_ema's parameters, the buffers): merge both with the generator's graphdef."""
        return self.g_ema, self.g_buffers


@dataclasses.dataclass(frozen=True)
class GANObjective:
    """Static settings of the compiled iteration (stylegan2-ada-pytorch's names in brackets)."""

    batch: int  # global batch [batch_size]
    r1_gamma: float  # [r1_gamma]
    r1_interval: int  # [D_reg_interval]
    style_mixing: float  # probability [style_mixing_prob]
    ema_kimg: float  # [ema_kimg]
    ema_rampup: float | None  # [ema_rampup]
    w_avg_beta: float  # the generator's [w_avg_beta]


@struct.dataclass
class GANMetrics:
    loss: jax.Array  # [k] G's loss
    grad_norm: jax.Array  # [k] G's gradient norm
    finite: jax.Array  # [k] bool: the iteration was applied
    terms: dict  # [k] each: D's loss and gradient norm, mean logits, the R1 penalty (nan where not run)


def optimizers(learning_rate: float, r1_interval: int) -> tuple[optax.GradientTransformation, ...]:
    """(G's Adam, D's Adam): D runs lazy R1, so its rate and betas are scaled by interval / (interval + 1)."""
    ratio = r1_interval / (r1_interval + 1)
    return (
        adam(learning_rate, betas=ADAM_BETAS),
        adam(learning_rate * ratio, betas=tuple(b**ratio for b in ADAM_BETAS)),
    )


def init_gan_state(g_params, g_buffers, d_params, g_tx, d_tx) -> GANState:
    return GANState(
        step=jnp.zeros((), jnp.int32),
        g_params=g_params,
        g_buffers=g_buffers,
        d_params=d_params,
        g_opt=g_tx.init(g_params),
        d_opt=d_tx.init(d_params),
        g_ema=jax.tree.map(jnp.copy, g_params),
    )


def ema_beta(objective: GANObjective, images_seen: jax.Array) -> jax.Array:
    """The official G_ema decay after `images_seen` images: 0.5 ** (batch / ema_nimg), with ema_nimg capped
    at images_seen * rampup, so the average starts as a copy and lengthens as training goes on."""
    ema_nimg = jnp.asarray(objective.ema_kimg * 1000.0, jnp.float32)
    if objective.ema_rampup is not None:
        ema_nimg = jnp.minimum(ema_nimg, images_seen.astype(jnp.float32) * objective.ema_rampup)
    return 0.5 ** (objective.batch / jnp.maximum(ema_nimg, 1e-8))


def mixed_ws(mapping, key: jax.Array, z: jax.Array, z_mix: jax.Array, num_ws: int, style_mixing: float):
    """(ws [B, num_ws, w_dim], the batch mean of the unmixed w): w of `z` in every row, the rows from a random
    cutoff in 1..num_ws-1 on replaced by the w of `z_mix` with probability `style_mixing` (one cutoff for the
    batch, as the official code)."""
    w = mapping(z)
    ws = jnp.broadcast_to(w[:, None], (z.shape[0], num_ws, w.shape[-1]))
    if style_mixing > 0:
        u = jax.random.uniform(key, (2,))
        cutoff = 1 + jnp.floor(u[0] * (num_ws - 1)).astype(jnp.int32)
        cutoff = jnp.where(u[1] < style_mixing, cutoff, num_ws)
        ws = jnp.where((jnp.arange(num_ws) >= cutoff)[None, :, None], mapping(z_mix)[:, None], ws)
    return ws, jnp.mean(w, axis=0)


def generate_for_training(generator, key: jax.Array, batch: int, style_mixing: float):
    """(images, the batch mean of the unmixed w): mixed W+ codes rendered with random noise. Every normal
    draw of the call (two z, one noise image per layer) comes from one flat draw."""
    cfg = generator.cfg
    k_normal, k_mix = jax.random.split(key)
    layers = generator.synthesis.noise_layers
    shapes = [(batch, cfg.z_dim)] * 2 + [(batch, *layer.noise_const.shape) for layer in layers]
    z, z_mix, *noise = normals(k_normal, shapes)
    ws, w_mean = mixed_ws(generator.mapping, k_mix, z, z_mix, cfg.num_ws, style_mixing)
    return generator.synthesis(ws, noise), w_mean


def _tracked(buffers: nnx.State, w_mean: jax.Array, beta: float) -> nnx.State:
    """Buffers with w_avg <- lerp(w_mean, w_avg, beta), as the mapping network does in training mode."""
    flat = dict(nnx.to_flat_state(buffers))
    path = ("mapping", "w_avg")
    old = flat[path].get_value()
    flat[path] = flat[path].replace(w_mean + beta * (old - w_mean))
    return nnx.from_flat_state(flat)


def gan_train_steps(
    g_graphdef,
    d_graphdef,
    state: GANState,
    batches: dict,
    key: jax.Array,
    g_tx,
    d_tx,
    objective: GANObjective,
    with_r1: bool,
) -> tuple[GANState, GANMetrics]:
    """One iteration per leading entry of `batches` ({"image": [k, B, R, R, C]}); with `with_r1`, the
    first iteration also runs D's lazy R1 step. The randomness of iteration n is fold_in(key, n)."""
    return _gan_train_steps(g_graphdef, d_graphdef, state, batches, key, g_tx, d_tx, objective, with_r1, loop_policy())


@jax.jit(
    static_argnames=("g_graphdef", "d_graphdef", "g_tx", "d_tx", "objective", "with_r1", "policy"),
    donate_argnames=("state",),
)
def _gan_train_steps(g_graphdef, d_graphdef, state, batches, key, g_tx, d_tx, objective, with_r1, policy: LoopPolicy):
    b = objective.batch

    def logits(d_params, images):
        return nnx.merge(d_graphdef, d_params)(images)[:, 0]

    def g_loss(g_params, buffers, d_params, k):
        images, w_mean = generate_for_training(nnx.merge(g_graphdef, g_params, buffers), k, b, objective.style_mixing)
        fake = logits(d_params, images)
        return jnp.mean(jax.nn.softplus(-fake)), w_mean

    def d_loss(d_params, fake_images, real_images):
        fake, real = logits(d_params, fake_images), logits(d_params, real_images)
        loss = jnp.mean(jax.nn.softplus(fake)) + jnp.mean(jax.nn.softplus(-real))
        return loss, (jnp.mean(fake), jnp.mean(real))

    def r1_loss(d_params, real_images):
        grads = jax.grad(lambda x: jnp.sum(logits(d_params, x)))(real_images)
        penalty = jnp.mean(jnp.sum(jnp.square(grads), axis=(1, 2, 3)))
        return penalty * (objective.r1_gamma / 2) * objective.r1_interval, penalty

    def iteration(state: GANState, batch, r1: bool):
        k_g, k_d = jax.random.split(jax.random.fold_in(key, state.step))
        # G main.
        (loss_g, w_mean), grads = jax.value_and_grad(g_loss, has_aux=True)(
            state.g_params, state.g_buffers, state.d_params, k_g
        )
        g_norm = optax.tree.norm(grads)
        updates, g_opt = g_tx.update(grads, state.g_opt, state.g_params)
        g_params = optax.apply_updates(state.g_params, updates)
        buffers = _tracked(state.g_buffers, w_mean, objective.w_avg_beta)
        # D main, on images of the updated generator.
        fake_images, w_mean = generate_for_training(
            nnx.merge(g_graphdef, g_params, buffers), k_d, b, objective.style_mixing
        )
        buffers = _tracked(buffers, w_mean, objective.w_avg_beta)
        real_images = batch["image"]
        (loss_d, (fake_logit, real_logit)), grads = jax.value_and_grad(d_loss, has_aux=True)(
            state.d_params, jax.lax.stop_gradient(fake_images), real_images
        )
        d_norm = optax.tree.norm(grads)
        updates, d_opt = d_tx.update(grads, state.d_opt, state.d_params)
        d_params = optax.apply_updates(state.d_params, updates)
        penalty = jnp.full((), jnp.nan)
        if r1:  # D reg: a second Adam step of D's optimizer
            (_, penalty), grads = jax.value_and_grad(r1_loss, has_aux=True)(d_params, real_images)
            updates, d_opt = d_tx.update(grads, d_opt, d_params)
            d_params = optax.apply_updates(d_params, updates)
        beta = ema_beta(objective, state.step * b)
        g_ema = jax.tree.map(lambda e, p: p + beta * (e - p), state.g_ema, g_params)
        new = GANState(
            step=state.step + 1,
            g_params=g_params,
            g_buffers=buffers,
            d_params=d_params,
            g_opt=g_opt,
            d_opt=d_opt,
            g_ema=g_ema,
        )
        terms = {
            "d_loss": loss_d,
            "d_grad_norm": d_norm,
            "fake_logit": fake_logit,
            "real_logit": real_logit,
            "r1_penalty": penalty,
        }
        watched = (loss_g, g_norm, loss_d, d_norm) + ((penalty,) if r1 else ())
        return new, (loss_g, g_norm, terms), watched

    if not with_r1:
        state, (loss, norm, terms), applied = run_steps(lambda s, x: iteration(s, x, False), state, batches, policy)
        return state, GANMetrics(loss=loss, grad_norm=norm, finite=applied, terms=terms)
    first = jax.tree.map(lambda x: x[:1], batches)
    rest = jax.tree.map(lambda x: x[1:], batches)
    state, metrics0, applied0 = run_steps(lambda s, x: iteration(s, x, True), state, first, policy)
    state, metrics1, applied1 = run_steps(
        lambda s, x: iteration(s, x, False), state, rest, policy, healthy=applied0[-1]
    )
    (loss, norm, terms) = jax.tree.map(lambda a, c: jnp.concatenate([a, c]), metrics0, metrics1)
    return state, GANMetrics(loss=loss, grad_norm=norm, finite=jnp.concatenate([applied0, applied1]), terms=terms)

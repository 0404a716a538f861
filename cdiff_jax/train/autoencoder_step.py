"""The autoencoder stage's training step: LDM's `LPIPSWithDiscriminator` objective.

Each optimizer step is the reference's pair of updates on one batch:
1. autoencoder: sum|x - x_rec| / B (+ perceptual_weight * LPIPS per pixel, when LPIPS is given)
   + kl_weight * KL / B + d_weight * g_loss once the discriminator is on, where
   g_loss = -mean(D(x_rec)) and d_weight = |grad nll| / (|grad g_loss| + 1e-4) (clipped to
   [0, 1e4], times disc_weight), both gradients taken at the decoder's last kernel;
2. discriminator: hinge loss on the inputs and a fresh reconstruction by the updated autoencoder.
Both use Adam with betas (0.5, 0.9). Before `disc_start` the discriminator's terms are exactly
zero in the reference; here they are left out of the compiled program (the host picks the program
by step: `lax.cond` around gradients is far off XLA:CPU's fast path), and the discriminator's Adam
still counts the step, as torch's does. LDM's learnable `loss.logvar` is never given to an optimizer
there, so it stays 0 and is left out. The pair is one step of the package's optimisation loop
(`cdiff_jax.optimization`): a non-finite loss or gradient of either network leaves both unchanged.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from cdiff_jax.nn.autoencoder import posterior_sample
from cdiff_jax.noise import normal
from cdiff_jax.optimization import LoopPolicy, loop_policy, run_steps

ADAPTIVE_WEIGHT_EPS = 1e-4
ADAPTIVE_WEIGHT_MAX = 1e4
ADAM_BETAS = (0.5, 0.9)  # LDM's autoencoder and discriminator optimizers: torch.optim.Adam with these betas


@dataclasses.dataclass(frozen=True)
class AutoencoderObjective:
    """LDM's defaults for the released KL autoencoders (configs/*_vae.yaml)."""

    kl_weight: float = 1e-6
    perceptual_weight: float = 1.0
    disc_start: int = 50_001
    disc_weight: float = 0.5
    disc_factor: float = 1.0
    # Lightning's accumulate_grad_batches, as the official 512 recipe uses it: each network's gradient is the mean of
    # its micro-batches' (each autoencoder micro-batch with its own adaptive weight); the discriminator's micro-batches
    # before the last see the autoencoder before its update, the last one after it.
    accumulation: int = 1


@struct.dataclass
class AutoencoderTrainState:
    step: jax.Array
    params: nnx.State  # the autoencoder's parameters
    opt_state: optax.OptState
    disc_params: nnx.State
    disc_opt_state: optax.OptState

    @property
    def export_params(self) -> nnx.State:
        return self.params


@struct.dataclass
class AutoencoderMetrics:
    loss: jax.Array  # [k] the autoencoder's total loss
    grad_norm: jax.Array
    finite: jax.Array
    terms: dict[str, jax.Array]  # rec_loss, kl_loss, g_loss, d_weight, disc_loss, logits_real, logits_fake


def init_autoencoder_state(params, tx, disc_params, disc_tx) -> AutoencoderTrainState:
    return AutoencoderTrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        disc_params=disc_params,
        disc_opt_state=disc_tx.init(disc_params),
    )


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(q(z|x) || N(0, I)) per example, summed over the latent."""
    return 0.5 * jnp.sum(mean**2 + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3))


def reconstruction_terms(x, recon, lpips, perceptual_weight):
    """Per-pixel |x - x_rec| plus the per-example LPIPS broadcast over pixels, as LDM's `rec_loss`."""
    rec = jnp.abs(x - recon)
    if lpips is not None and perceptual_weight > 0:
        rec = rec + perceptual_weight * nnx.merge(*lpips)(x, recon)[:, None, None, None]
    return rec


def autoencoder_train_steps(
    graphdef,
    frozen,
    state,
    batches,
    key,
    tx,
    disc_graphdef,
    disc_tx,
    lpips,
    objective: AutoencoderObjective = AutoencoderObjective(),
):
    """One optimizer step pair per leading entry of `batches["image"]` ([k, B, H, W, 3]).

    `lpips` is `(graphdef, state)` of a loaded LPIPS, or None when perceptual_weight is 0.
    Randomness of step n is fold_in(key, n), so resumed runs draw what uninterrupted ones would.
    Whether the discriminator is on is decided here, on the host, so each compiled program has
    it fixed; a call that crosses `disc_start` runs as two.
    """
    images = batches["image"]
    policy = loop_policy()
    run = lambda state, images, adversarial: _autoencoder_train_steps(  # noqa: E731
        graphdef, frozen, state, images, key, tx, disc_graphdef, disc_tx, lpips, objective, adversarial, policy
    )
    step = int(state.step)
    split = objective.disc_start - step
    if 0 < split < images.shape[0]:
        state, before = run(state, images[:split], False)
        if not bool(before.finite.all()):  # the guard rejected a step: the rest of the call is not applied
            rest = images.shape[0] - split
            return state, jax.tree.map(lambda a: jnp.concatenate([a, jnp.zeros((rest, *a.shape[1:]), a.dtype)]), before)
        state, after = run(state, images[split:], True)
        return state, jax.tree.map(lambda a, b: jnp.concatenate([a, b]), before, after)
    return run(state, images, step >= objective.disc_start)


@jax.jit(
    static_argnames=("graphdef", "tx", "disc_graphdef", "disc_tx", "objective", "adversarial", "policy"),
    donate_argnames=("state",),
)
def _autoencoder_train_steps(
    graphdef,
    frozen,
    state,
    images,
    key,
    tx,
    disc_graphdef,
    disc_tx,
    lpips,
    objective,
    adversarial: bool,
    policy: LoopPolicy,
):
    def discriminate(disc_params, x):
        return nnx.merge(disc_graphdef, disc_params)(x)

    def forward(params, x, noise_key):
        ae = nnx.merge(graphdef, params, frozen).autoencoder
        mean, logvar = ae.encode(x)
        z = posterior_sample(mean, logvar, normal(noise_key, mean.shape, mean.dtype))
        features = ae.decoder.features(ae.post_quant_conv(z))
        return ae.decoder.conv_out(features), jnp.sum(kl_divergence(mean, logvar)) / x.shape[0], features

    def autoencoder_grads(state: AutoencoderTrainState, x, noise_key):
        """One (micro-)batch's autoencoder loss, gradient and terms, its adaptive weight its own."""
        zero = jnp.zeros((), x.dtype)
        (recon, kl, features), pull_back = jax.vjp(lambda p: forward(p, x, noise_key), state.params)

        def nll_fn(r):
            rec = reconstruction_terms(x, r, lpips, objective.perceptual_weight)
            return jnp.sum(rec) / x.shape[0], rec

        (nll, rec), c_nll = jax.value_and_grad(nll_fn, has_aux=True)(recon)
        cotangent, g_loss, d_weight = c_nll, zero, zero
        if adversarial:
            kernel = nnx.merge(graphdef, state.params, frozen).autoencoder.decoder.conv_out.kernel.get_value()

            def kernel_grad(c):  # the gradient at the decoder's last kernel (bias aside), as the reference takes it
                conv = lambda k: jax.lax.conv_general_dilated(  # noqa: E731
                    features, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
                )
                return jax.vjp(conv, kernel)[1](c)[0]

            g_loss, c_g = jax.value_and_grad(lambda r: -jnp.mean(discriminate(state.disc_params, r)))(recon)
            d_weight = jnp.linalg.norm(kernel_grad(c_nll)) / (jnp.linalg.norm(kernel_grad(c_g)) + ADAPTIVE_WEIGHT_EPS)
            d_weight = jnp.clip(d_weight, 0.0, ADAPTIVE_WEIGHT_MAX) * objective.disc_weight
            cotangent = c_nll + objective.disc_factor * d_weight * c_g
        loss = nll + objective.kl_weight * kl + objective.disc_factor * d_weight * g_loss
        grads = pull_back((cotangent, jnp.asarray(objective.kl_weight, kl.dtype), jnp.zeros_like(features)))[0]
        return grads, (loss, {"rec_loss": jnp.mean(rec), "kl_loss": kl, "g_loss": g_loss, "d_weight": d_weight})

    def discriminator_grads(disc_params, params, x, noise_key):
        """One (micro-)batch's hinge loss on x and a fresh reconstruction by `params`, its gradient and logits."""
        fresh = jax.lax.stop_gradient(forward(params, x, noise_key)[0])

        def hinge(dp):
            real, fake = discriminate(dp, x), discriminate(dp, fresh)
            loss = 0.5 * (jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake)))
            return objective.disc_factor * loss, (jnp.mean(real), jnp.mean(fake))

        (d_loss, (logits_real, logits_fake)), d_grads = jax.value_and_grad(hinge, has_aux=True)(disc_params)
        return d_grads, {"disc_loss": d_loss, "logits_real": logits_real, "logits_fake": logits_fake}

    def mean_over_micro_batches(fn, x, key):
        """fn(micro-batch i, key_i) averaged over the micro-batches (the whole batch and `key` itself without
        accumulation); fn may take i to know which one it is."""
        count = objective.accumulation
        if count == 1:
            return fn(0, x, key)
        parts = [fn(i, micro, jax.random.fold_in(key, i)) for i, micro in enumerate(x.reshape(count, -1, *x.shape[1:]))]
        return jax.tree.map(lambda *values: sum(values) / count, *parts)

    def one_step(state: AutoencoderTrainState, x):
        k_gen, k_disc = jax.random.split(jax.random.fold_in(key, state.step))
        zero = jnp.zeros((), x.dtype)
        grads, (loss, terms) = mean_over_micro_batches(lambda i, m, k: autoencoder_grads(state, m, k), x, k_gen)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        d_terms = {"disc_loss": zero, "logits_real": zero, "logits_fake": zero}
        d_grads = jax.tree.map(jnp.zeros_like, state.disc_params)  # torch's Adam still counts the step
        if adversarial:
            last = objective.accumulation - 1
            d_grads, d_terms = mean_over_micro_batches(
                lambda i, m, k: discriminator_grads(state.disc_params, params if i == last else state.params, m, k),
                x,
                k_disc,
            )
        d_updates, disc_opt_state = disc_tx.update(d_grads, state.disc_opt_state, state.disc_params)
        disc_params = optax.apply_updates(state.disc_params, d_updates)

        grad_norm = optax.tree.norm(grads)
        new_state = AutoencoderTrainState(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            disc_params=disc_params,
            disc_opt_state=disc_opt_state,
        )
        return (
            new_state,
            (loss, grad_norm, {**terms, **d_terms}),
            (loss, grad_norm, d_terms["disc_loss"], optax.tree.norm(d_grads)),
        )

    state, (loss, grad_norm, terms), applied = run_steps(one_step, state, images, policy)
    return state, AutoencoderMetrics(loss=loss, grad_norm=grad_norm, finite=applied, terms=terms)


def reconstruction_loss(system, x, key, lpips, perceptual_weight) -> jax.Array:
    """Validation metric, LDM's `val/rec_loss`: the mean of the per-pixel reconstruction term."""
    mean, logvar = system.autoencoder.encode(x)
    recon = system.autoencoder.decode(posterior_sample(mean, logvar, normal(key, mean.shape, mean.dtype)))
    return jnp.mean(reconstruction_terms(x, recon, lpips, perceptual_weight))

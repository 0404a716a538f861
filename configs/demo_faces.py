"""The demo system: small models for the 64x64 toy faces, trained on a CPU and shipped with the package.

`get_config()` is the collaborative system (what `python sample.py` runs); `get_config("text")` and
`get_config("mask")` are the uni-modal systems the expert stage trains. configs/train_demo.py trains
every part; the autoencoder's scale_factor below is a placeholder: training measures the trained
autoencoder's latent scale_factor and latent_shift, and the expert and collab stages adopt both
through `init_from`.

The noise schedule is Stable Diffusion's (betas 0.00085..0.012, abar_T = 0.0047), not the released
models' (0.0015..0.0195, abar_T = 1.4e-4): the released one magnifies eps errors at the noisiest
steps 1/sqrt(abar_t), about 80x, into pred_x0, more than experts of this size can afford
(docs/research_log.md, "Measurement history moved from the code").
"""

from cdiff_jax.config import (
    AutoencoderConfig,
    MaskEncoderConfig,
    ModalityConfig,
    ScheduleConfig,
    SystemConfig,
    TextEncoderConfig,
    UNetConfig,
)

CONTEXT = 64
EXPERT = UNetConfig(
    model_channels=32,
    channel_mult=(1, 2, 2),
    num_res_blocks=1,
    attention_resolutions=(2, 4),
    num_heads=4,
    context_dim=CONTEXT,
)
DIFFUSER = UNetConfig(
    out_channels=1,
    model_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(2,),
    num_heads=2,
    context_dim=CONTEXT,
)
SCHEDULE = ScheduleConfig(linear_start=0.00085, linear_end=0.012)
AUTOENCODER = AutoencoderConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, resolution=64, scale_factor=1.0)


def get_config(arg: str = "") -> SystemConfig:
    """The collaborative demo system; `arg` "text" or "mask" keeps that expert alone, without a diffuser."""
    modalities = {
        "mask": ModalityConfig("mask", MaskEncoderConfig(context_dim=CONTEXT), EXPERT, DIFFUSER),
        "text": ModalityConfig("text", TextEncoderConfig(width=CONTEXT, depth=2), EXPERT, DIFFUSER),
    }
    if arg:
        only = modalities[arg]
        modalities = {arg: ModalityConfig(only.kind, only.encoder, only.expert, None)}
    return SystemConfig(autoencoder=AUTOENCODER, modalities=modalities, latent_size=16, schedule=SCHEDULE)

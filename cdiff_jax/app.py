"""The interactive page: draw or upload a face-parsing mask, type a caption, sample, and watch each modality's
influence map over the steps (`cdiff demo`, `python -m cdiff_jax.app`; needs the `demo` extra, gradio).

Every request goes through `sample.py`'s own parser and checks (`commands.sample.parse_args` / `validate`), so the
page accepts and refuses what the command line does, in the same words; only the drawn mask is prepared first. A
brush may blend its strokes' edges slightly off the palette, so colours within `masks.SNAP_DISTANCE` of a class
colour count as that class, and white (the editor's cleared canvas) and transparent pixels as background; any other
colour is refused by name, as `sample.py` does.
The checkpoint is loaded once and kept, so each sampler setting compiles once per server.

    cdiff demo                                   # the shipped demo models on http://127.0.0.1:7860
    cdiff demo --checkpoint checkpoints/512_codiff --host 0.0.0.0 --port 8080
"""

from __future__ import annotations

import argparse
import contextvars
import dataclasses
import html
import os
import pathlib
import sys
import tempfile

import numpy as np

from cdiff_jax import requests, viz
from cdiff_jax.checkpoint import NotACheckpointError, load_system
from cdiff_jax.commands import sample as sample_command
from cdiff_jax.data.masks import CLASS_NAMES, PALETTE, SNAP_DISTANCE, snap_to_palette
from cdiff_jax.diffusion.collaboration import MODES
from cdiff_jax.progress import configure_logging, log
from cdiff_jax.requests import UsageError
from cdiff_jax.sampling import NonFiniteSamples

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no version check, no telemetry
try:
    import gradio as gr
except ImportError:
    sys.exit("error: the page needs gradio; install the demo extra: pip install 'cdiff_jax[demo]'")

MASK_FILE = "mask.png"  # the drawn mask as sample.py reads it; messages name it so
ALONE = " alone"  # the mode choice "NAME alone": only that condition is given, its expert samples by itself
SHOWN = 128  # influence pictures show smaller samples enlarged to at least this side, so their labels fit


def mask_file(drawn: dict | None, folder: pathlib.Path) -> pathlib.Path | None:
    """The editor's composite (RGBA) as an RGB PNG for `--mask`: white (a cleared canvas) and transparent pixels are
    background (black, so a half-transparent stroke edge darkens towards it), near-palette colours are snapped;
    None when nothing is drawn."""
    composite = None if drawn is None else drawn.get("composite")
    if composite is None:
        return None
    pixels = np.asarray(composite, np.float64)  # [H, W, 4]: the editor's image_mode is RGBA
    rgb = pixels[..., :3] * pixels[..., 3:] / 255.0
    rgb[(pixels[..., :3] == 255).all(axis=-1)] = 0
    path = folder / MASK_FILE
    viz.save_png(path, snap_to_palette(rgb.round().astype(np.uint8)))
    return path


def command_line(
    checkpoint: str,
    mask: pathlib.Path | None,
    caption: str,
    mode: str,
    steps,
    sampler: str,
    seed,
    batch,
    folder: pathlib.Path,
) -> list[str]:
    """The page's inputs as `sample.py` arguments. Refuses only what a command line cannot hold: an empty number
    field, or no mask for a mode that needs one."""
    for name, value in (("steps", steps), ("seed", seed), ("batch", batch)):
        if value is None:
            raise UsageError(f"{name} is empty; give a whole number")
    alone = mode.removesuffix(ALONE) if mode.endswith(ALONE) else None
    argv = [
        "--checkpoint",
        checkpoint,
        "--steps",
        str(int(steps)),
        "--sampler",
        sampler,
        "--seed",
        str(int(seed)),
        "--batch",
        str(int(batch)),
        "--mode",
        "released" if alone else mode,
        "--save-influence",
        "--out",
        str(folder / "out"),
    ]  # never written: the page shows the results instead
    if alone in (None, "mask"):
        if mask is None:
            raise UsageError("no mask: draw or upload one (or pick the example), or choose 'text alone'")
        argv += ["--mask", str(mask)]
    if alone in (None, "text"):
        argv += ["--text", caption or ""]
    return argv


def influence_at(samples: np.ndarray, maps: np.ndarray, name: str, when: str, column: str) -> np.ndarray:
    """One modality's influence at one step (or their mean): per sample the sample, the map laid over it and the
    map, with the colour scale. `samples` uint8 [B, H, W, 3]; `maps` weights [B, h, w] in [0, 1]."""
    factor = max(1, SHOWN // samples.shape[1])
    samples = samples.repeat(factor, axis=1).repeat(factor, axis=2)
    size = samples.shape[1]
    coloured = viz.heatmap(viz.enlarge(maps, size))
    rows = np.stack([samples, viz.blend(samples, coloured, alpha=0.5), coloured], axis=1)
    picture = viz.grid(rows, col_labels=["sample", "overlay", column])
    return viz.titled(
        picture,
        f"influence of the {name} expert, {when}; the weights sum to 1 over the modalities",
        right=viz.colour_scale(min(picture.shape[0] - 20, 4 * size)),
    )


@dataclasses.dataclass(frozen=True)
class Influence:
    """A request's learned influence maps, kept in the browser session for the step slider, which draws one step's
    pictures at a time (drawing all 2 x 51 of a default request up front added 1.5 s to its 4 s)."""

    samples: np.ndarray  # uint8 [B, H, W, 3]
    weights: np.ndarray  # [steps, M, B, h, w], the softmax weights in [0, 1]
    timesteps: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def of(cls, samples: np.ndarray, result, names) -> Influence | None:
        """None without learned maps: one expert alone, or equal weights."""
        trajectory = result.trajectory
        if trajectory is None or trajectory.logits is None:
            return None
        return cls(
            samples,
            np.asarray(trajectory.weights[..., 0]),
            tuple(np.asarray(trajectory.timesteps).tolist()),
            tuple(names),
        )

    def picture(self, name: str, step: int) -> np.ndarray | None:
        """`name`'s picture at `step` (1-based; 0 is the mean over the steps), None for a modality not sampled."""
        if name not in self.names:
            return None
        m, steps = self.names.index(name), len(self.timesteps)
        if step == 0:
            return influence_at(
                self.samples, self.weights[:, m].mean(axis=0), name, f"mean over the {steps} steps", "mean"
            )
        t = self.timesteps[step - 1]
        return influence_at(self.samples, self.weights[step - 1, m], name, f"step {step} of {steps} (t={t})", f"t={t}")


class Page:
    """The loaded system and what one request does with it."""

    def __init__(self, checkpoint: str):
        self.checkpoint = checkpoint
        self.system = load_system(checkpoint)
        self.names = list(self.system.cfg.modalities)

    def sample(self, drawn, caption, mode, steps, sampler, seed, batch, progress=gr.Progress()):  # noqa: B008 (gradio finds its progress bar by this default)
        """One request: (status, samples, the step slider, its Influence, then each modality's mean influence
        picture). Bad input raises gr.Error with `sample.py`'s message."""
        with tempfile.TemporaryDirectory(prefix="cdiff_page_") as tmp:
            folder = pathlib.Path(tmp)
            try:
                argv = command_line(
                    self.checkpoint, mask_file(drawn, folder), caption, mode, steps, sampler, seed, batch, folder
                )
                request = sample_command.validate(sample_command.parse_args(argv))
            except UsageError as err:
                raise gr.Error(
                    html.escape(str(err).replace(f"{folder}{os.sep}", ""), quote=False), print_exception=False
                ) from None
        for name in request.truncated:
            gr.Warning(
                f"the caption is longer than the text encoder's {request.conditions[name].shape[-1]} tokens "
                "and was truncated"
            )
        context = contextvars.copy_context()  # the steps report from JAX's thread, gradio's progress reads context

        def on_step(done, total):
            context.copy().run(progress, (done, total), desc="sampling")

        try:
            result, seconds = sample_command.generate(self.system, request, on_step=on_step)
        except NonFiniteSamples as err:
            raise gr.Error(html.escape(str(err), quote=False), print_exception=False) from None
        samples = viz.to_uint8(np.asarray(result.images))
        influence = Influence.of(samples, result, request.conditions)
        status = f"{len(samples)} samples in {seconds:.1f} s ({sample_command.describe(request)})"
        if influence is None:
            status += "; no influence maps: " + (
                "one expert samples alone"
                if len(request.conditions) == 1
                else "equal weights are fixed, 1/M at every pixel"
            )
        slider = gr.Slider(
            maximum=len(influence.timesteps) if influence else 1, value=0, interactive=influence is not None
        )
        return status, list(samples), slider, influence, *self.show_step(influence, 0)

    def show_step(self, influence: Influence | None, step):
        """Each modality's influence picture at the slider's step (0: the mean over the steps)."""
        return tuple(None if influence is None else influence.picture(name, int(step or 0)) for name in self.names)


def legend() -> str:
    """The brush palette with the class names, as HTML swatches."""
    items = "".join(
        f'<span style="display:inline-block;margin:2px 8px 2px 0;white-space:nowrap">'
        f'<span style="display:inline-block;width:14px;height:14px;vertical-align:middle;border:1px solid #888;'
        f'background:rgb({r},{g},{b})"></span> {i} {name}</span>'
        for i, (name, (r, g, b)) in enumerate(zip(CLASS_NAMES, PALETTE.tolist()))
    )
    return f"<div style='font-size:0.85em'>{items}</div>"


def build(checkpoint: str) -> gr.Blocks:
    """The page for `checkpoint` (loaded now and kept); `launch()` serves it."""
    page = Page(checkpoint)
    alone = [name + ALONE for name in page.names if name in ("mask", "text")]
    modes = (list(MODES) if len(page.names) > 1 else []) + alone
    colours = [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in PALETTE.tolist()]
    defaults = sample_command.parse_args([])
    with gr.Blocks(title="Collaborative Diffusion", analytics_enabled=False, delete_cache=(3600, 3600)) as blocks:
        gr.Markdown(
            f"### Collaborative Diffusion: a face from a mask and a caption\nCheckpoint `{checkpoint}`. "
            "Paint with the class colours below (white and transparent are background); a colour within "
            f"{SNAP_DISTANCE} (RGB distance) of a class colour counts as that class, other colours are "
            "refused."
        )
        with gr.Row():
            with gr.Column():
                brush = gr.Brush(default_size=3, colors=colours, default_color=colours[13], color_mode="fixed")
                mask = gr.ImageEditor(
                    value=str(requests.DEMO_MASK),
                    label="mask",
                    type="numpy",
                    image_mode="RGBA",
                    format="png",
                    sources=("upload", "clipboard"),
                    layers=False,
                    brush=brush,
                    canvas_size=(256, 256),  # a cleared one's: big enough to paint on
                    elem_id="mask",
                )
                gr.HTML(legend())
                caption = gr.Textbox(value=requests.DEMO_CAPTION, label="caption", elem_id="caption")
                gr.Examples(
                    [[str(requests.DEMO_MASK), requests.DEMO_CAPTION]],
                    [mask, caption],
                    label="shipped example (mask and caption)",
                )
                mode = gr.Radio(
                    modes,
                    value=defaults.mode if defaults.mode in modes else modes[0],
                    label="mode (NAME alone: only that condition is given)",
                )
                with gr.Row():
                    steps = gr.Number(value=defaults.steps, precision=0, label="steps")
                    sampler = gr.Dropdown(list(requests.SAMPLER_NAMES), value=defaults.sampler, label="sampler")
                    seed = gr.Number(value=defaults.seed, precision=0, label="seed")
                    batch = gr.Number(value=defaults.batch, precision=0, label="batch")
                run = gr.Button("Sample", variant="primary", elem_id="run")
            with gr.Column():
                status = gr.Markdown(label="status", elem_id="status")
                samples = gr.Gallery(label="samples", columns=4, format="png", elem_id="samples")
                step = gr.Slider(
                    minimum=0,
                    maximum=50,
                    value=0,
                    step=1,
                    interactive=False,
                    label="step (0: the mean over the steps)",
                    elem_id="step",
                )
                influence = gr.State()
                maps = [
                    gr.Image(label=f"{name} influence", format="png", elem_id=f"influence_{name}")
                    for name in page.names
                ]
        run.click(
            page.sample,
            [mask, caption, mode, steps, sampler, seed, batch],
            [status, samples, step, influence, *maps],
            api_name="sample",
        )
        step.change(page.show_step, [influence, step], maps, api_name="show_step", show_progress="hidden")
    return blocks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="cdiff demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", help="a cdiff_jax checkpoint directory (default: the shipped demo models)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    args = p.parse_args(argv)
    configure_logging()
    checkpoint = args.checkpoint or str(requests.DEMO_CHECKPOINT)
    try:
        requests.checkpoint_config(checkpoint)
        blocks = build(checkpoint)
    except (UsageError, NotACheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("serving %s on http://%s:%d (Ctrl+C stops)", checkpoint, args.host, args.port)
    blocks.launch(server_name=args.host, server_port=args.port, share=False, ssr_mode=False, quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

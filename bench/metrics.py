"""Throughput of the evaluation's metric networks at their real sizes on 512x512 faces (random weights:
the cost does not depend on the values), with each network's achieved FLOP/s against a float32 matmul
measured in the same run.

    python bench/metrics.py [--batch 8]

Each figure is the network's own forward pass as the evaluation calls it (Inception from 512 to 299,
the parser at 512, CLIP at 224, ArcFace on IDLoss's 112 crop of 256, LPIPS and SSIM on 512 pairs).
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from timing import best_time, matmul_flops_per_second, peak_rss_gb

from cdiff_jax.evaluation.ssim import ssim
from cdiff_jax.nn.arcface import ArcFace, idloss_faces
from cdiff_jax.nn.clip import CLIP, CLIPConfig
from cdiff_jax.nn.face_parser import FaceParser
from cdiff_jax.nn.inception import InceptionV3
from cdiff_jax.nn.lpips import LPIPS

SIDE = 512
# OpenAI's ViT-B/32, as build_model reads it off the released state dict.
VIT_B_32 = CLIPConfig(
    embed_dim=512,
    image_resolution=224,
    vision_layers=12,
    vision_width=768,
    vision_patch_size=32,
    context_length=77,
    vocab_size=49408,
    transformer_width=512,
    transformer_heads=8,
    transformer_layers=12,
    vision_heads=12,
)


def networks(batch: int):
    """(name, module, method, inputs) for every metric, inputs as the evaluation gives them."""
    rng = np.random.default_rng(0)
    faces = rng.uniform(-1, 1, (batch, SIDE, SIDE, 3)).astype(np.float32)
    rngs = nnx.Rngs(0)
    clip = CLIP(VIT_B_32, rngs=rngs)
    tokens = rng.integers(1, 49000, (batch, 77)).astype(np.int32)
    return [
        ("InceptionV3 (pytorch-fid)", InceptionV3(rngs=rngs), "pool3", ((faces + 1) / 2,)),
        ("BiSeNet face parser", FaceParser(rngs=rngs), "__call__", (faces,)),
        (
            "CLIP ViT-B/32 image + text",
            clip,
            "outputs",
            (jax.image.resize(faces, (batch, 224, 224, 3), "linear"), tokens),
        ),
        (
            "ArcFace IR-SE50",
            ArcFace(rngs=rngs),
            "__call__",
            (idloss_faces(jax.image.resize(faces, (batch, 256, 256, 3), "linear")),),
        ),
        ("LPIPS (VGG16)", LPIPS(rngs=rngs), "__call__", (faces, faces[::-1])),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    baseline = matmul_flops_per_second()
    print(f"matmul baseline: {baseline / 1e9:.1f} GFLOP/s; batch {args.batch}, devices {jax.device_count()}")
    print("| network | images/s | GFLOP per image | fraction of matmul FLOP/s |")
    print("|---|---|---|---|")
    for name, module, method, inputs in networks(args.batch):
        graphdef, state = nnx.split(module)
        fn = jax.jit(
            lambda state, *x, graphdef=graphdef, method=method: getattr(nnx.merge(graphdef, state), method)(*x)
        )
        flops = fn.lower(state, *inputs).compile().cost_analysis()["flops"]
        seconds = best_time(fn, state, *inputs)
        rate = flops / seconds / baseline
        print(f"| {name} | {args.batch / seconds:.2f} | {flops / args.batch / 1e9:.1f} | {rate:.2f} |")
    faces = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (args.batch, SIDE, SIDE, 3)), jnp.float32)
    seconds = best_time(ssim, faces, faces[::-1])
    print(f"| SSIM | {args.batch / seconds:.2f} | - | - |")
    print(f"peak RSS {peak_rss_gb():.1f} GB")


if __name__ == "__main__":
    main()

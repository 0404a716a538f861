"""The official EG3D code's cost for what bench/eg3d.py times, on the same machine.

Not part of the package and not run by the tests: it needs torch and a checkout of NVlabs/eg3d
(its `eg3d/` folder, which holds `training/`, `torch_utils/` and `dnnlib/`), in a separate Python
3.11 environment:

    python3.11 -m venv .venv-reference
    .venv-reference/bin/pip install torch==2.13.0 numpy scipy   # scipy: its super-resolution module imports it
    .venv-reference/bin/python bench/reference_eg3d_torch.py --source ../eg3d/eg3d [--resolution 128]

Builds the FFHQ-512 TriPlaneGenerator (train.py --cfg=ffhq --gen_pose_cond=True) with random
weights (float32, eval, no_grad, 2 threads; on CPU the official ops take their reference paths)
and times the backbone, the volume rendering and the super-resolution of one view.
"""

import argparse
import os
import sys
import time

RENDERING = {  # train.py --cfg=ffhq, as the released ffhq512 pickles record it
    "image_resolution": 512,
    "disparity_space_sampling": False,
    "clamp_mode": "softplus",
    "superresolution_module": "training.superresolution.SuperresolutionHybrid8XDC",
    "c_gen_conditioning_zero": False,
    "gpc_reg_prob": 0.5,
    "c_scale": 1.0,
    "superresolution_noise_mode": "none",
    "density_reg": 0.25,
    "density_reg_p_dist": 0.004,
    "reg_type": "l1",
    "decoder_lr_mul": 1.0,
    "sr_antialias": True,
    "depth_resolution": 48,
    "depth_resolution_importance": 48,
    "ray_start": 2.25,
    "ray_end": 3.3,
    "box_warp": 1,
    "avg_camera_radius": 2.7,
    "avg_camera_pivot": [0, 0, 0.2],
}


def best_time(fn, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="the eg3d/ folder of a checkout of NVlabs/eg3d")
    p.add_argument("--resolution", type=int, default=128, help="neural rendering resolution (default 128)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    sys.path.insert(0, args.source)

    import torch
    from camera_utils import FOV_to_intrinsics, LookAtPoseSampler
    from training.triplane import TriPlaneGenerator

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    g = TriPlaneGenerator(
        z_dim=512,
        w_dim=512,
        mapping_kwargs={"num_layers": 2},
        channel_base=32768,
        channel_max=512,
        fused_modconv_default="inference_only",
        rendering_kwargs=RENDERING,
        num_fp16_res=0,
        sr_num_fp16_res=4,
        sr_kwargs={"channel_base": 32768, "channel_max": 512, "fused_modconv_default": "inference_only"},
        conv_clamp=None,
        c_dim=25,
        img_resolution=512,
        img_channels=3,
    ).eval()
    g.neural_rendering_resolution = args.resolution
    pivot = torch.tensor([0, 0, 0.2])
    cam2world = LookAtPoseSampler.sample(3.14159 / 2 + 0.3, 3.14159 / 2 + 0.1, pivot, radius=2.7)
    c = torch.cat([cam2world.reshape(-1, 16), FOV_to_intrinsics(18.837).reshape(-1, 9)], 1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()}")
    with torch.no_grad():
        ws = g.mapping(torch.randn(1, 512), c)
        planes = g.backbone.synthesis(ws, noise_mode="const")
        grid = planes.view(1, 3, 32, planes.shape[-2], planes.shape[-1])
        origins, directions = g.ray_sampler(c[:, :16].view(-1, 4, 4), c[:, 16:].view(-1, 3, 3), args.resolution)
        features, _, _ = g.renderer(grid, g.decoder, origins, directions, g.rendering_kwargs)
        image = features.permute(0, 2, 1).reshape(1, -1, args.resolution, args.resolution)
        times = {
            "backbone (tri-planes)": best_time(lambda: g.backbone.synthesis(ws, noise_mode="const"), args.repeats),
            "volume rendering": best_time(
                lambda: g.renderer(grid, g.decoder, origins, directions, g.rendering_kwargs), args.repeats
            ),
            "super-resolution": best_time(
                lambda: g.superresolution(image[:, :3], image, ws, noise_mode="none"), args.repeats
            ),
            "one view, planes reused": best_time(
                lambda: g.synthesis(ws, c, use_cached_backbone=True, cache_backbone=True, noise_mode="const"),
                args.repeats,
            ),
        }
    for name, seconds in times.items():
        print(f"{name:26s} {seconds:7.3f} s")


if __name__ == "__main__":
    main()

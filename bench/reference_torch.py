"""The official PyTorch code's cost for what bench/sample_512.py times, on the same machine.

Not part of the package and not run by the tests: it needs torch and a checkout of the official
repository (ziqihuangg/Collaborative-Diffusion), in a separate Python 3.11 environment:

    python3.11 -m venv .venv-reference
    .venv-reference/bin/pip install torch==2.13.0 numpy einops omegaconf pillow
    .venv-reference/bin/python bench/reference_torch.py --source ../Collaborative-Diffusion --what step
    .venv-reference/bin/python bench/reference_torch.py --source ../Collaborative-Diffusion --what decode

Builds the released 512 networks from the official YAML files with random weights (float32,
eval, no_grad, 2 threads) and times one collaborative step (both experts, both dynamic
diffusers, the softmax over the two maps and the weighted sum, as the released composed UNet
does with `confidence_input: x_t`) or one decode of a 64x64 latent to 512x512. Only the
official UNet and decoder modules are imported, so neither Lightning nor taming is needed.
A 50-step image costs 50 steps plus one decode (the DDIM update itself is negligible).
"""

import argparse
import os
import resource
import sys
import time


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="checkout of the official repository")
    p.add_argument("--what", choices=["step", "decode"], default="step")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    sys.path.insert(0, args.source)

    import torch
    from ldm.modules.diffusionmodules.model import Decoder
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from omegaconf import OmegaConf

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    configs = os.path.join(args.source, "configs")
    codiff = OmegaConf.load(os.path.join(configs, "512_codiff_mask_text.yaml")).model.params
    experts = {
        name: OmegaConf.load(os.path.join(args.source, path)).model.params
        for name, path in (("mask", codiff.seg_mask_ldm_config_path), ("text", codiff.text_ldm_config_path))
    }
    vae = OmegaConf.load(os.path.join(configs, "512_vae.yaml")).model.params
    latent = torch.randn(1, codiff.channels, codiff.image_size, codiff.image_size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()}")

    if args.what == "decode":
        post_quant_conv = torch.nn.Conv2d(vae.embed_dim, vae.ddconfig.z_channels, 1).eval()
        decoder = Decoder(**OmegaConf.to_container(vae.ddconfig)).eval()

        def run():
            return decoder(post_quant_conv(latent / codiff.scale_factor))
    else:
        diffuser_cfg = OmegaConf.to_container(codiff.compose_unet_config.params.confidence_map_predictor_config.params)
        assert codiff.compose_unet_config.params.confidence_input == "x_t"
        nets = {
            name: (UNetModel(**OmegaConf.to_container(cfg.unet_config.params)).eval(), UNetModel(**diffuser_cfg).eval())
            for name, cfg in experts.items()
        }
        t = torch.full((1,), 501, dtype=torch.long)
        # the condition encoders run once per sample, so contexts of their output shapes suffice
        contexts = {
            "mask": torch.randn(1, 19, experts["mask"].cond_stage_config.params.context_dim),
            "text": torch.randn(1, 77, experts["text"].cond_stage_config.params.n_embed),
        }

        def run():
            eps = {n: expert(latent, t, context=contexts[n]) for n, (expert, _) in nets.items()}
            maps = torch.cat([diffuser(latent, t, context=contexts[n]) for n, (_, diffuser) in nets.items()], 1)
            weights = torch.softmax(maps, dim=1)
            return sum(eps[n] * weights[:, i : i + 1] for i, n in enumerate(nets))

    with torch.no_grad():
        run()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    print(
        f"{args.what}: best {min(times):.3f} s, mean {sum(times) / len(times):.3f} s over {args.repeats} "
        f"(after one warm-up), peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB"
    )


if __name__ == "__main__":
    main()

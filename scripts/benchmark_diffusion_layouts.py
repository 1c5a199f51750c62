#!/usr/bin/env python
"""Seconds per frame of the diffusion deblurrer's networks for candidate VAE / UNet layouts (random weights).

    python scripts/benchmark_diffusion_layouts.py                       # 320x240, 8 frames, 2 threads
    python scripts/benchmark_diffusion_layouts.py --size 640x480 --threads 1

For each layout: VAE encode and decode of `--frames` frames in one call, one UNet step over them, and the totals
for 1 and 4 DDIM steps (encode + decode + steps x UNet), as in docs/diffusion.md, "Speed at 320x240". The networks'
time only: the pipeline adds the blur encoder, the guard and the video I/O.
"""

from __future__ import annotations

import argparse
import time

F4, F2 = (32, 64, 64), (32, 64)  # VAE block_out_channels: factor 4 (the shipped VAE's) and factor 2
LAYOUTS = {  # name: (latent channels, VAE mid-block attention, UNet config name in pipelines.small, VAE blocks)
    "shipped: VAE f4c8 + attention / SMALL_UNET_CONFIG": (8, True, "SMALL_UNET_CONFIG", F4),
    "VAE f4c16 + attention / SMALL_UNET_CONFIG": (16, True, "SMALL_UNET_CONFIG", F4),
    "VAE f4c16 no attention / SMALL_UNET_CONFIG": (16, False, "SMALL_UNET_CONFIG", F4),
    "VAE f4c16 no attention / SMALL_UNET_CONFIG_LOW_ATTENTION": (16, False, "SMALL_UNET_CONFIG_LOW_ATTENTION", F4),
    "VAE f2c8 no attention / SMALL_UNET_CONFIG_LOW_ATTENTION": (8, False, "SMALL_UNET_CONFIG_LOW_ATTENTION", F2),
    "VAE f2c8 no attention / SMALL_UNET_CONFIG_MID_ATTENTION": (8, False, "SMALL_UNET_CONFIG_MID_ATTENTION", F2),
}


def _per_frame(fn, frames: int, repeat: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat / frames


def measure(width: int, height: int, frames: int, repeat: int = 2, layouts=None) -> list[dict]:
    import torch
    from diffusers import AutoencoderKL, UNet3DConditionModel

    from vdiffdeblur.pipelines import small
    from vdiffdeblur.trainer.vae import VAETrainConfig

    rows = []
    x = torch.rand(frames, 3, height, width) * 2 - 1
    for name in layouts or LAYOUTS:
        channels, attention, unet_name, blocks = LAYOUTS[name]
        vae_cfg = VAETrainConfig(block_out_channels=blocks, latent_channels=channels,
                                 mid_block_attention=attention).vae_config()
        torch.manual_seed(0)
        vae = AutoencoderKL(**vae_cfg).eval()
        ucfg = getattr(small, unet_name)
        unet = UNet3DConditionModel(**ucfg, in_channels=2 * channels, out_channels=channels).eval()
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
            lat = torch.randn(1, 2 * channels, frames, *z.shape[-2:])
            tokens = torch.randn(1, 4, ucfg["cross_attention_dim"])
            enc = _per_frame(lambda: vae.encode(x), frames, repeat)
            dec = _per_frame(lambda: vae.decode(z), frames, repeat)
            step = _per_frame(lambda: unet(lat, 500, encoder_hidden_states=tokens), frames, max(1, repeat // 2))
        rows.append({"layout": name, "encode": enc, "decode": dec, "unet_step": step,
                     "steps_1": enc + dec + step, "steps_4": enc + dec + 4 * step})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="320x240", help="WIDTHxHEIGHT (default: %(default)s)")
    p.add_argument("--frames", type=int, default=8, help="frames per call (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=2, help="timed calls per part (default: %(default)s)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.lower().split("x"))
    print(f"| layout ({w}x{h}, {args.threads} threads, s/frame) | encode | decode | UNet step | 1 step | 4 steps |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in measure(w, h, args.frames, args.repeat):
        print(f"| {r['layout']} | {r['encode']:.2f} | {r['decode']:.2f} | {r['unet_step']:.2f} | {r['steps_1']:.2f} "
              f"| {r['steps_4']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

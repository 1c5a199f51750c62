"""DDIM inference with a DeblurVideoPipeline folder: deblur one video file (or frame folder), streaming it
window by window from the reader into the writer.

    python scripts/ddim_inference.py --model MODEL_DIR --input blurry.mp4 --output sharp.mp4 \
        [--steps 50 --guidance 3 --seed 0 --window 16 --overlap 4 --color-fix none --prior transfer|dtb|none \
         --device auto --dtype auto]

A model that refines a fast method's output (its `prior_method`) gets that method's output computed on the fly.

A user error (missing file, unreadable video, bad model folder, bad option) prints one line `error: ...` and
exits with status 2, leaving nothing under --output. An existing --output is refused unless --overwrite.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    from vdiffdeblur.argtypes import device_name, float_from, int_in
    from vdiffdeblur.methods.options import COLOR_FIX_CHOICES, PRIOR_CHOICES

    p = argparse.ArgumentParser(description="Deblur a video with a DeblurVideoPipeline (DDIM sampling).")
    p.add_argument("--model", required=True, help="DeblurVideoPipeline folder (save_pretrained layout)")
    p.add_argument("--input", required=True, help="blurry video file or frame folder")
    p.add_argument("--output", required=True, help="output video (.mp4, .mkv, ...) or a folder path for PNGs")
    p.add_argument("--steps", type=int_in(1), default=None,
                   help="DDIM steps (default: the pipeline's, 50 unless saved otherwise)")
    p.add_argument("--guidance", type=float_from(0), default=None,
                   help="classifier-free guidance scale (default: the pipeline's)")
    p.add_argument("--eta", type=float_from(0), default=0.0, help="DDIM eta (default 0: deterministic)")
    p.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0)
    p.add_argument("--window", type=int_in(1), default=None,
                   help="frames per temporal window (default 16; 4 above 1920x1088 pixels)")
    p.add_argument("--overlap", type=int_in(0), default=None,
                   help="frames shared by consecutive windows (default 4; 1 above 1920x1088)")
    p.add_argument("--tile-size", type=int_in(1), default=None,
                   help="denoise frames in spatial tiles of this many pixels (default: 256 above 512x384 pixels)")
    p.add_argument("--decode-chunk-size", type=int_in(1), default=None,
                   help="frames per VAE call (default: 8, 1 above 512x384 pixels)")
    p.add_argument("--color-fix", choices=COLOR_FIX_CHOICES, default="none",
                   help="take the output's colours from the input: wavelet (low frequencies) or adain (per-channel "
                        "mean and spread), frame by frame (default: none)")
    p.add_argument("--prior", choices=PRIOR_CHOICES, default=None,
                   help="the fast method whose output the model refines (its defaults), must match the model "
                        "(default: what the model was trained with)")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--dtype", default="auto", help="auto, float32, float16, bfloat16")
    p.add_argument("--cpu-offload", action="store_true", help="keep models on the CPU until they run (small GPUs)")
    p.add_argument("--vae-slicing", action="store_true", help="decode one frame at a time")
    p.add_argument("--vae-tiling", action="store_true",
                   help="VAE-code frames in tiles of 256 pixels (on by itself above 512x384)")
    p.add_argument("--lossless", action="store_true", help="write the output losslessly")
    p.add_argument("--crf", type=int_in(0, 51), default=18, help="H.264 quality of the output (lower is better)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (never the input)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging and full tracebacks")
    return p


def main(argv=None) -> int:
    from vdiffdeblur.methods.diffusion import check_job, deblur_video_file, load_pipeline, resolve_prior
    from vdiffdeblur.video import VideoError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        t0 = time.perf_counter()
        check_job(args.input, args.output, overwrite=args.overwrite)
        resolve_prior(args.model, args.prior)  # a mismatch fails before the model loads
        pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype, cpu_offload=args.cpu_offload,
                             vae_slicing=args.vae_slicing, vae_tiling=args.vae_tiling)
        pipe.set_progress_bar_config(disable=True)
        info = deblur_video_file(
            pipe, args.input, args.output, num_inference_steps=args.steps, guidance_scale=args.guidance,
            seed=args.seed, window_size=args.window, window_overlap=args.overlap, tile_size=args.tile_size,
            decode_chunk_size=args.decode_chunk_size, eta=args.eta, color_fix=args.color_fix,
            lossless=args.lossless, crf=args.crf,
            quiet=args.quiet, overwrite=args.overwrite, prior=args.prior, prior_device=args.device,
        )
    except (VideoError, ValueError, FileNotFoundError, OSError) as e:
        if args.verbose:
            raise
        print(f"error: {' '.join(str(e).split()) or e.__class__.__name__}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {info.num_frames} frames {info.width}x{info.height} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

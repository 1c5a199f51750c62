"""Assemble a DeblurVideoPipeline from a local text-to-video checkpoint and a CLIP vision tower.

    python scripts/convert_t2v_to_deblur.py --t2v text-to-video-ms-1.7b --clip i2vgen-xl/image_encoder \
        --out deblur-ms-1.7b [--num-tokens 4]
    python scripts/convert_t2v_to_deblur.py --t2v text-to-video-ms-1.7b \
        --clip open_clip_pytorch_model.safetensors --open-clip-model ViT-H-14 --out deblur-ms-1.7b

`--t2v`: a diffusers-format folder (unet/ vae/ scheduler/; text_encoder/ and tokenizer/ are ignored).
`--clip`: a transformers CLIP vision folder, or with `--open-clip-model NAME` an open_clip checkpoint file.
`--prior transfer|dtb`: a pipeline that refines that method's output (conv_in also takes the prior's latents).
The result is written with safetensors, to a temporary folder renamed to --out when complete.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Text-to-video checkpoint + CLIP vision tower -> DeblurVideoPipeline.")
    p.add_argument("--t2v", required=True, help="text-to-video folder in diffusers format")
    p.add_argument("--clip", required=True, help="CLIP vision folder (transformers) or open_clip checkpoint file")
    p.add_argument("--open-clip-model", default=None,
                   help="open_clip architecture of --clip (e.g. ViT-H-14, or local-dir:PATH)")
    p.add_argument("--open-clip-config", default=None,
                   help="a JSON model config registered with open_clip first (for custom architectures)")
    p.add_argument("--out", required=True, help="output pipeline folder")
    p.add_argument("--num-tokens", type=int, default=4, help="cross-attention tokens per conditioning frame")
    p.add_argument("--num-cond-frames", type=int, default=1, help="1: the central frame; K: K evenly spaced")
    p.add_argument("--prediction-type", choices=["epsilon", "v_prediction"], default=None,
                   help="override the base scheduler's prediction type (only if the UNet was trained so)")
    p.add_argument("--variant", default=None, help="weights variant of the base, e.g. fp16")
    p.add_argument("--seed", type=int, default=0, help="seed of the projector's initialisation")
    p.add_argument("--prior", choices=["none", "transfer", "dtb"], default="none",
                   help="make a pipeline that refines this method's output (conv_in widened again, zero init)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--verbose", "-v", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from vdiffdeblur.pipelines.convert_t2v import convert_text_to_video
    from vdiffdeblur.video import writing_atomically

    out = Path(args.out)
    try:
        if out.exists() and not args.overwrite:
            raise ValueError(f"{out} exists (use --overwrite to replace it)")
        if args.open_clip_config:
            import open_clip

            if not Path(args.open_clip_config).is_file():
                raise FileNotFoundError(f"{args.open_clip_config}: no such open_clip config file")
            open_clip.add_model_config(args.open_clip_config)
        pipe = convert_text_to_video(
            args.t2v, args.clip, open_clip_model=args.open_clip_model, num_tokens=args.num_tokens,
            num_cond_frames=args.num_cond_frames, prediction_type=args.prediction_type, seed=args.seed,
            variant=args.variant, prior_method=None if args.prior == "none" else args.prior,
        )
        with writing_atomically(out) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
    except (ValueError, FileNotFoundError, OSError) as e:
        if args.verbose:
            raise
        print(f"error: {' '.join(str(e).split()) or e.__class__.__name__}", file=sys.stderr)
        return 2
    u, enc = pipe.unet.config, pipe.blur_encoder.config
    print(f"wrote {out}: unet conv_in {u.in_channels} channels, {enc.num_tokens} tokens x {enc.cross_attention_dim}, "
          f"DDIM {pipe.scheduler.config.prediction_type}, prior {pipe.config.prior_method or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

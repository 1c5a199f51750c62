"""Ship the small diffusion deblurrer: copy a trained pipeline into vdiffdeblur/checkpoints/diffusion/ with its
training records, measure it on held-out built-in clips (EVAL photos) and write the model card.

    python scripts/ship_diffusion_model.py --model outputs/diffusion_stage2 \
        [--steps 2 --guidance 1] [--out vdiffdeblur/checkpoints/diffusion]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "vdiffdeblur" / "checkpoints" / "diffusion"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Ship a trained small DeblurVideoPipeline with its model card.")
    p.add_argument("--model", default="outputs/diffusion_stage2", help="the stage-2 output folder")
    p.add_argument("--vae-dir", default="outputs/diffusion_vae", help="training/train_vae.py's output_dir")
    p.add_argument("--stage1-dir", default="outputs/diffusion_stage1")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--steps", type=int, default=None, help="saved default DDIM steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="saved default guidance (default: the model's)")
    p.add_argument("--frames", type=int, default=40, help="frames per held-out clip")
    p.add_argument("--size", default="256x192", help="held-out clip size WxH")
    p.add_argument("--timings", default=None, help="JSON file of wall times to print in the card")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--recipe", default="diffusion", help="the recipe the card names (training/recipes/NAME.yaml)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from vdiffdeblur.pipelines import DeblurVideoPipeline
    from vdiffdeblur.trainer.quality import evaluate_pipeline, quality_clips, quality_table
    from vdiffdeblur.trainer.ship import copy_pipeline, set_sampling_defaults, stage_records, write_card

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
        records = stage_records(Path(args.vae_dir), {"stage1": Path(args.stage1_dir), "stage2": Path(args.model)})
        copy_pipeline(Path(args.model), out, records)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    set_sampling_defaults(out, default_num_inference_steps=args.steps, default_guidance_scale=args.guidance)
    pipe = DeblurVideoPipeline.from_pretrained(out, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    report = evaluate_pipeline(pipe, quality_clips(num_frames=args.frames, size=(w, h)))
    vae_summary_path = Path(args.vae_dir) / "summary.json"
    vae_summary = json.loads(vae_summary_path.read_text()) if vae_summary_path.is_file() else {}
    timings = json.loads(Path(args.timings).read_text()) if args.timings else {}
    # the recipe, not this run's paths: the card says how the model is made
    commands = [f"python scripts/reproduce.py {args.recipe}   # training/recipes/{args.recipe}.yaml; --dry-run prints "
                "each step"]
    table = quality_table(report)
    write_card(out, report, table, vae_summary, commands, timings)
    print(table)
    print(f"shipped to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

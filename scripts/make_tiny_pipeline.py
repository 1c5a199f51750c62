"""Write a tiny random DeblurVideoPipeline (the tests' configs, `vdiffdeblur.pipelines.tiny`) to a folder.

    python scripts/make_tiny_pipeline.py --out tiny-pipeline [--seed 0] [--prediction-type v_prediction]

It deblurs nothing (random weights): it is for trying the commands, the docs and smoke tests.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write a tiny random DeblurVideoPipeline.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prediction-type", choices=["epsilon", "v_prediction"], default="epsilon")
    p.add_argument("--num-tokens", type=int, default=4)
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    args = p.parse_args(argv)

    from vdiffdeblur.pipelines.tiny import make_tiny_pipeline
    from vdiffdeblur.video import writing_atomically

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"error: {out} exists (use --overwrite)", file=sys.stderr)
        return 2
    pipe = make_tiny_pipeline(seed=args.seed, prediction_type=args.prediction_type, num_tokens=args.num_tokens)
    with writing_atomically(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    print(f"wrote a tiny DeblurVideoPipeline to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``vdiffdeblur`` command line: synth, eval, info, deblur.

A user error prints one line ``error: ...`` on stderr and exits with status 2 (a traceback only with
``--verbose``); nothing is left under the output name.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("vdiffdeblur")


class UsageError(ValueError):
    """A mistake in how the command was called."""


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 320x240, got {text!r}") from None
    return w, h


# --------------------------------------------------------------------------------------- synth
def cmd_synth(args) -> int:
    from .data.synthetic import ShakeConfig, synthesize_shake
    from .video import VideoWriter, atomic_replace, temp_sibling, remove_path

    out = Path(args.output)
    w, h = args.size
    cfg = ShakeConfig(num_frames=args.frames, width=w, height=h, fps=args.fps)
    clip = synthesize_shake(args.photo, cfg, seed=args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    tmp.mkdir()
    try:
        for name, frames in (("blur", clip.blurry), ("sharp", clip.sharp)):
            with VideoWriter(tmp / name, fps=clip.fps) as wr:
                wr.write(frames)
        with VideoWriter(tmp / "blur.mkv", fps=clip.fps, lossless=True) as wr:
            wr.write(clip.blurry)
        meta = clip.metadata()
        meta["source"] = str(args.photo)
        meta["seed"] = args.seed
        (tmp / "meta.json").write_text(json.dumps(meta))
        atomic_replace(tmp, out)
    except BaseException:
        remove_path(tmp)
        raise
    print(f"wrote {out}/blur/, {out}/sharp/, {out}/blur.mkv ({len(clip.blurry)} frames {w}x{h}); "
          f"blur extent {clip.blur_extent.min():.1f}-{clip.blur_extent.max():.1f} px")
    return 0


# --------------------------------------------------------------------------------------- eval
def _blur_extent_near(gt: Path) -> np.ndarray | None:
    for meta in (gt / "meta.json", gt.parent / "meta.json"):
        if meta.is_file():
            try:
                return np.asarray(json.loads(meta.read_text())["blur_extent"], dtype=np.float64)
            except (ValueError, KeyError):
                return None
    return None


def cmd_eval(args) -> int:
    from .evaluation import score
    from .video import read_video

    res = read_video(args.result).frames
    gt = read_video(args.gt).frames
    if res.shape != gt.shape:
        raise UsageError(f"{args.result} ({len(res)} frames {res.shape[2]}x{res.shape[1]}) and {args.gt} "
                         f"({len(gt)} frames {gt.shape[2]}x{gt.shape[1]}) differ in frame count or size")
    blurry = read_video(args.input).frames if args.input else None
    extent = _blur_extent_near(Path(args.gt))
    if extent is not None and len(extent) != len(gt):
        extent = None
    s = score(res, gt, blurry=blurry, blur_score=extent, with_ewarp=not args.no_ewarp)
    print(f"{'frame':>5} {'PSNR':>8} {'SSIM':>7}" + (f" {'in PSNR':>8}" if blurry is not None else ""))
    for i in range(len(s.psnr)):
        line = f"{i:5d} {s.psnr[i]:8.3f} {s.ssim[i]:7.4f}"
        if blurry is not None:
            line += f" {s.input_psnr[i]:8.3f}"
        print(line)
    print(f"mean  PSNR {s.mean_psnr:.3f} dB  SSIM {s.mean_ssim:.4f}" +
          (f"  E_warp {s.ewarp:.6f}" if s.ewarp is not None else ""))
    if s.hard is not None:
        print(f"blurriest third ({len(s.hard)} frames): PSNR {s.hard_psnr:.3f} dB  SSIM {s.hard_ssim:.4f}")
    if blurry is not None:
        print(f"gain: {s.gain('all'):+.3f} dB all, {s.gain('hard'):+.3f} dB blurriest third; "
              f"frames made worse by > 0.3 dB: {s.frames_worse()}")
    if args.json:
        Path(args.json).write_text(json.dumps(s.as_dict(), indent=1))
    return 0


# --------------------------------------------------------------------------------------- info
def cmd_info(args) -> int:
    from .video import probe

    info = probe(args.video)
    print(f"{info.source}: {info.width}x{info.height}, {info.num_frames} frames, {info.fps:g} fps, "
          f"codec {info.codec or 'unknown'}")
    return 0


# --------------------------------------------------------------------------------------- deblur
def cmd_deblur(args) -> int:
    from .methods.runner import deblur_file
    from .video import same_file

    if same_file(args.input, args.output):
        raise UsageError(f"output {args.output} is the input: refusing to overwrite it")
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    info = deblur_file(args.input, args.output, method=args.method, options=vars(args))
    dt = time.perf_counter() - t0
    print(f"wrote {args.output}: {info.num_frames} frames {info.width}x{info.height} in {dt:.1f} s "
          f"({args.method}{', guard' if args.guard else ''}{', transfer' if args.transfer else ''})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vdiffdeblur", description="Remove motion blur from videos.")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging and full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="make a blurry camera-shake clip with ground truth from a sharp photo")
    s.add_argument("photo", help="an image path or builtin:NAME (a scikit-image photo, e.g. builtin:coffee)")
    s.add_argument("-o", "--output", required=True, help="output folder (GoPro layout: blur/, sharp/, blur.mkv)")
    s.add_argument("--frames", type=int, default=40)
    s.add_argument("--size", type=_size, default=(320, 240), help="WIDTHxHEIGHT (default 320x240)")
    s.add_argument("--fps", type=float, default=30.0)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_synth)

    e = sub.add_parser("eval", help="PSNR, SSIM and E_warp of a result against ground truth")
    e.add_argument("result", help="video file or frame folder")
    e.add_argument("gt", help="ground-truth video file or frame folder")
    e.add_argument("--input", help="the blurry input too: report gains and frames made worse")
    e.add_argument("--json", help="also write the scores to this JSON file")
    e.add_argument("--no-ewarp", action="store_true", help="skip the (slower) warping error")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help="size, fps, frame count and codec of a video")
    i.add_argument("video")
    i.set_defaults(func=cmd_info)

    d = sub.add_parser("deblur", help="deblur a video file or frame folder")
    d.add_argument("input")
    d.add_argument("-o", "--output", required=True,
                   help="output video (.mp4, .mkv, ...) or a path without suffix for a PNG folder")
    d.add_argument("--method", choices=["diffusion", "fit", "dtb", "transfer"], default="transfer")
    d.add_argument("--model", help="model folder or file for the method (diffusion: a pipeline folder; dtb: a "
                   "DTBNet folder); default: the shipped model")
    d.add_argument("--transfer", action="store_true", help="run sharp-frame transfer after the method")
    d.add_argument("--no-guard", dest="guard", action="store_false",
                   help="keep the method's output as it is (the do-no-harm guard is on by default)")
    d.add_argument("--lossless", action="store_true", help="write the output losslessly")
    d.add_argument("--crf", type=int, default=18, help="H.264 quality of the output (lower is better)")
    d.add_argument("--window", type=int, default=None, help="frames per window (methods that stream)")
    d.add_argument("--overlap", type=int, default=None, help="overlap between windows")
    d.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=None,
                   help="CPU threads for PyTorch (default: PyTorch's choice; 1 is often fastest on a busy shared CPU)")
    # dtb
    d.add_argument("--compile", action="store_true",
                   help="dtb: torch.compile the network (about 30 s to compile per frame size, then faster)")
    # diffusion
    d.add_argument("--steps", type=int, default=None, help="diffusion: DDIM steps; fit: fitting steps")
    d.add_argument("--guidance", type=float, default=None, help="diffusion: classifier-free guidance scale")
    d.add_argument("--dtype", default="auto", help="diffusion: float32, float16, bfloat16 or auto")
    # fit
    d.add_argument("--init", default="maml", help="fit: maml, random or a FitUNet folder")
    d.add_argument("--vgg-weights", help="fit: local VGG-19 weights (torchvision .pth or MatConvNet .mat)")
    d.add_argument("--learning-rate", type=float, default=None,
                   help="fit: Adam's peak learning rate (default: 3e-4 from a learned init, 6e-4 from random)")
    d.set_defaults(func=cmd_deblur)
    return p


def main(argv=None) -> int:
    from .video import VideoError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (VideoError, UsageError, ValueError, FileNotFoundError, NotImplementedError, OSError) as e:
        if args.verbose:
            raise
        msg = " ".join(str(e).split()) or e.__class__.__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

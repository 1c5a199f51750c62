"""``vdiffdeblur`` command line: synth, eval, info, deblur.

A user error prints one line ``error: ...`` on stderr and exits with status 2 (a traceback only with
``--verbose``); nothing is left under the output name.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from .argtypes import float_from, int_in
from .methods.options import add_arguments as add_method_arguments

logger = logging.getLogger("vdiffdeblur")


class UsageError(ValueError):
    """A mistake in how the command was called."""


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 320x240, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {w}x{h}")
    return w, h


class _Note(logging.Formatter):
    """A warning reads ``note: ...`` (one line, no logger name): it is about the user's video, not the code."""

    def format(self, record):
        word = "note" if record.levelno == logging.WARNING else record.levelname.lower()
        return f"{word}: {' '.join(record.getMessage().split())}"


class _Parser(argparse.ArgumentParser):
    """Reports a bad command line as one ``error: ...`` line (via :class:`UsageError`), like every other user error."""

    def error(self, message):
        # "argument --crf: must be ..." reads "--crf must be ..."; argparse's other messages keep "--crf: ..."
        message = re.sub(r"^argument (\S+): (?=must )", r"\1 ", message)
        raise UsageError(re.sub(r"^argument ([^:]+): ", r"\1: ", message))


def _check_args(args) -> None:
    """Checks that span several options, after parsing and before any work."""
    window, overlap = getattr(args, "window", None), getattr(args, "overlap", None)
    if window is not None and overlap is not None and overlap >= window:
        raise UsageError(f"--overlap must be less than --window ({window}), got {overlap}")


def error_message(e: BaseException) -> str:
    """The one line a user error prints: an OSError with a path as ``PATH: reason``, anything else its message."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        where = os.fsdecode(e.filename) if isinstance(e.filename, (str, bytes, os.PathLike)) else str(e.filename)
        if e.filename2 is not None:
            where += f" -> {os.fsdecode(e.filename2)}"
        msg = f"{where}: {e.strerror}"
    else:
        msg = str(e)
    return " ".join(msg.split()) or e.__class__.__name__


# --------------------------------------------------------------------------------------- synth
def cmd_synth(args) -> int:
    from .data.synthetic import ShakeConfig, synthesize_shake
    from .outputs import check_output, writing_atomically
    from .video import VideoWriter

    out = Path(args.output)
    check_output(out, overwrite=args.overwrite, kind="synth")
    w, h = args.size
    if args.motion in ("layered", "objects"):
        from .data.layered import LayeredConfig, synthesize_layered

        cfg = LayeredConfig(num_frames=args.frames, width=w, height=h, fps=args.fps)
        cfg = cfg.steady_camera() if args.motion == "objects" else cfg
        clip = synthesize_layered([args.photo], cfg, seed=args.seed, progress=True)
    else:
        clip = synthesize_shake(args.photo, ShakeConfig(num_frames=args.frames, width=w, height=h, fps=args.fps),
                                seed=args.seed)
    with writing_atomically(out) as tmp:
        tmp.mkdir()
        for name, frames in (("blur", clip.blurry), ("sharp", clip.sharp)):
            with VideoWriter(tmp / name, fps=clip.fps) as wr:
                wr.write(frames)
        with VideoWriter(tmp / "blur.mkv", fps=clip.fps, lossless=True) as wr:
            wr.write(clip.blurry)
        meta = clip.metadata()
        meta["source"] = str(args.photo)
        meta["seed"] = args.seed
        (tmp / "meta.json").write_text(json.dumps(meta))
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
    extra = [info.pix_fmt] if info.pix_fmt else []
    extra += [f"{info.duration:.3f} s"] if info.duration else []
    extra += ["variable frame rate"] if info.variable_rate else []
    extra += [f"first frame at {info.start:.3f} s"] if info.start else []
    extra += [f"rotation {info.rotation:g}"] if info.rotation else []
    extra += [f"colour {info.colour.describe()}"] if info.colour else []
    extra += list(info.streams)
    print(f"{info.source}: {info.width}x{info.height}, {info.num_frames} frames, {info.fps:g} fps, "
          f"codec {info.codec or 'unknown'}" + "".join(f", {e}" for e in extra))
    return 0


# --------------------------------------------------------------------------------------- deblur
def deblur_options(args) -> dict:
    """The method options of a parsed ``deblur`` command line, as :func:`~vdiffdeblur.methods.runner.deblur_file`
    takes them."""
    from .methods.options import known_keys

    return {k: v for k, v in vars(args).items() if k in known_keys()}


def _check_deblur_args(args) -> None:
    if args.model and args.method not in ("dtb", "diffusion"):
        hint = "; fit takes its start with --init" if args.method == "fit" else ""
        raise UsageError(f"--model is for --method dtb or diffusion, not {args.method}{hint}")
    if args.init is not None and args.method != "fit":
        raise UsageError(f"--init is for --method fit, not {args.method}")
    if args.suffix is not None and len(args.inputs) == 1:
        raise UsageError("--suffix is for several inputs (with one, -o names its output)")


def cmd_deblur(args) -> int:
    from .methods.runner import deblur_file
    from .outputs import check_output
    from .threads import set_threads, world_size

    if len(args.inputs) > 1:
        return _deblur_many(args)
    args.input = args.inputs[0]
    check_output(args.output, inputs=[args.input], overwrite=args.overwrite)
    _check_deblur_args(args)
    if world_size() > 1 and int(os.environ.get("RANK", "0")) != 0:
        return 0  # one video under a launcher: the main process does it
    set_threads(args.threads)
    t0 = time.perf_counter()
    info = deblur_file(args.input, args.output, method=args.method, options=deblur_options(args),
                       overwrite=args.overwrite)
    dt = time.perf_counter() - t0
    print(f"wrote {args.output}: {info.num_frames} frames {info.width}x{info.height} in {dt:.1f} s "
          f"({args.method}{', guard' if args.guard else ''}{', transfer' if args.transfer else ''})")
    return 0


def _deblur_many(args) -> int:
    """Several inputs: ``-o`` is a folder; one output each (see :mod:`vdiffdeblur.methods.batch`)."""
    from .methods.batch import SUMMARY, deblur_many
    from .threads import set_threads

    _check_deblur_args(args)
    set_threads(args.threads)

    def failed(record, error):
        print(f"error: {error_message(error)}", file=sys.stderr)

    records = deblur_many(args.inputs, args.output, method=args.method, options=deblur_options(args),
                          overwrite=args.overwrite, suffix=args.suffix, on_error=failed)
    count = {s: sum(r.status == s for r in records) for s in ("done", "skipped", "failed")}
    frames = sum(r.frames for r in records if r.status == "done")
    if os.environ.get("RANK", "0") != "0":  # the main process reports for every process
        return 2 if count["failed"] else 0
    print(f"{args.output}: {count['done']} deblurred ({frames} frames), {count['skipped']} already done, "
          f"{count['failed']} failed; summary in {Path(args.output) / SUMMARY} "
          f"({args.method}{', guard' if args.guard else ''}{', transfer' if args.transfer else ''})")
    return 2 if count["failed"] else 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vdiffdeblur", description="Remove motion blur from videos.")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging and full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    seed = int_in(0, 2**32 - 1)

    s = sub.add_parser("synth", help="make a blurry camera-shake clip with ground truth from a sharp photo")
    s.add_argument("photo", help="an image path or builtin:NAME (a scikit-image photo, e.g. builtin:coffee)")
    s.add_argument("-o", "--output", required=True, help="output folder (GoPro layout: blur/, sharp/, blur.mkv)")
    s.add_argument("--frames", type=int_in(1), default=40, help="number of frames, at least 1 (default: %(default)s)")
    s.add_argument("--size", type=_size, default=(320, 240), help="WIDTHxHEIGHT, at least 8x8 (default: 320x240)")
    s.add_argument("--fps", type=float_from(0, inclusive=False), default=30.0,
                   help="frame rate, > 0 (default: %(default)g)")
    s.add_argument("--seed", type=seed, default=0, help="random seed, 0 to 2^32-1 (default: %(default)s)")
    s.add_argument("--motion", choices=["shake", "layered", "objects"], default="shake",
                   help="shake: camera shake of the photo; layered: objects cut from it (and procedural ones) "
                        "moving on their own over it, with occlusion, the camera shaking in most clips; objects: "
                        "the same with a camera that only pans (default: %(default)s)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace an existing output folder, if it holds only what synth writes")
    s.set_defaults(func=cmd_synth)

    e = sub.add_parser("eval", help="PSNR, SSIM and E_warp of a result against ground truth")
    e.add_argument("result", help="video file or frame folder")
    e.add_argument("gt", help="ground-truth video file or frame folder")
    e.add_argument("--input", help="the blurry input too: report gains and frames made worse (default: none)")
    e.add_argument("--json", help="also write the scores to this JSON file (default: none)")
    e.add_argument("--no-ewarp", action="store_true", help="skip the (slower) warping error")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help="size, fps, frame count and codec of a video")
    i.add_argument("video", help="video file or frame folder")
    i.set_defaults(func=cmd_info)

    d = sub.add_parser("deblur", help="deblur video files or frame folders")
    d.add_argument("inputs", nargs="+", metavar="input",
                   help="video file or frame folder; several: one output each in the folder -o")
    d.add_argument("-o", "--output", required=True,
                   help="output video (.mp4, .mkv, ...) or a path without suffix for a PNG folder; with several "
                        "inputs, a folder: each output takes its input's name, finished ones are skipped, and "
                        "deblur_summary.json records every video")
    d.add_argument("--suffix", help="with several inputs: the outputs' suffix (.mp4, .mkv, ...) or 'folder' for PNG "
                                    "folders (default: each input's own; a frame folder gives a PNG folder)")
    d.add_argument("--method", choices=["diffusion", "fit", "dtb", "transfer"], default="transfer",
                   help="how to deblur (default: %(default)s, sharp-frame transfer)")
    d.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (never the input, a folder holding it, or a folder holding "
                        "anything but this tool's frames); default: refuse")
    add_method_arguments(d)
    d.set_defaults(func=cmd_deblur)
    return p


def main(argv=None) -> int:
    from .outputs import Terminated, signals_unwind
    from .video import VideoError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _check_args(args)
    except UsageError as e:
        print(f"error: {error_message(e)}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s") if args.verbose else _Note())
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, handlers=[handler])
    try:
        with signals_unwind():
            return args.func(args)
    except Terminated as e:
        print(f"error: {e}", file=sys.stderr)
        return 128 + e.signum
    except (VideoError, UsageError, ValueError, FileNotFoundError, NotImplementedError, OSError) as e:
        if args.verbose:
            raise
        print(f"error: {error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

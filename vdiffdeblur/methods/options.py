"""Every option of ``vdiffdeblur deblur``, typed: what every run shares, then one dataclass per method.

Each dataclass contributes its argparse group (so ``--help`` lists every option with its default), and
:func:`split_options` turns a plain dict (the CLI's namespace, or a caller's) into them, refusing keys no
method knows. A flag two methods share (``--model``, ``--steps``, ``--dtype``) is one option whose help names both.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields

from ..argtypes import device_name, float_from, int_in

DTYPES = ("auto", "float32", "float16", "bfloat16")
#: vdiffdeblur.colour_fix.COLOR_FIXES plus "none" (kept here so building the parser imports no torch)
COLOR_FIX_CHOICES = ("none", "wavelet", "adain")
#: the pipeline's PRIOR_METHODS plus "none" (kept here so building the parser imports no torch)
PRIOR_CHOICES = ("none", "transfer", "dtb")


def _opt(default, help: str, type=None, action: str | None = None, flag: str | None = None, choices=None):
    return field(default=default, metadata={"help": help, "type": type, "action": action, "flag": flag,
                                            "choices": choices})


@dataclass(frozen=True)
class RunOptions:
    """What every run shares."""

    device: str = _opt("auto", "auto, cpu, cuda, cuda:N or mps (auto: cuda if available, else cpu)",
                       type=device_name)
    seed: int = _opt(0, "random seed, 0 to 2^32-1", type=int_in(0, 2**32 - 1))
    threads: int | None = _opt(None, "CPU threads for PyTorch and OpenCV, at least 1 (default: OMP_NUM_THREADS if set, "
                                     "else the cores this process may use, shared among the processes of an "
                                     "accelerate launch; 1 is often fastest on a busy shared CPU)", type=int_in(1))
    transfer: bool = _opt(False, "run sharp-frame transfer after the method", action="store_true")
    guard: bool = _opt(True, "keep the method's output as it is (the do-no-harm guard is on by default)",
                       action="store_false", flag="--no-guard")
    lossless: bool = _opt(False, "write the output losslessly (default: H.264 at --crf)", action="store_true")
    crf: int = _opt(18, "H.264 quality of the output, 0 to 51, lower is better", type=int_in(0, 51))
    preset: str = _opt("veryfast", "x264 preset of the output: slower presets give a little more quality per byte for "
                                   "more CPU (docs/architecture.md, 'Decode and encode')",
                       choices=("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                                "veryslow"))
    quiet: bool = _opt(False, "no progress bars", action="store_true")


@dataclass(frozen=True)
class TransferOptions:
    """transfer (``--method transfer``, or ``--transfer`` after another method)."""

    transfer_radius: int = _opt(5, "neighbours considered on each side of a frame, at least 1", type=int_in(1))


@dataclass(frozen=True)
class DTBOptions:
    """dtb."""

    model: str | None = _opt(None, "a DTBNet folder (default: the shipped model)")
    dtype: str = _opt("auto", "float32, bfloat16 or float16 (GPUs) (auto: see vdiffdeblur.devices.resolve_precision)",
                      choices=DTYPES)
    compile: bool = _opt(False, "torch.compile the network (about 30 s per frame size, then faster)",
                         action="store_true")
    tile_size: int | None = _opt(None, "run the network on tiles of this many pixels a side, same output up to "
                                       "rounding, at least 1 (default: 1024 above 1920x1088, else whole frames)",
                                 type=int_in(1))


@dataclass(frozen=True)
class FitOptions:
    """fit."""

    init: str | None = _opt(None, "maml (the shipped initialisation), random or a FitUNet folder (default: maml)")
    steps: int | None = _opt(None, "fitting steps, at least 1 (default: 1000)", type=int_in(1))
    learning_rate: float | None = _opt(None, "Adam's peak learning rate, > 0 (default: 3e-4 from a learned init, "
                                             "6e-4 from random)", type=float_from(0, inclusive=False))
    vgg_weights: str | None = _opt(None, "local VGG-19 weights (torchvision .pth or MatConvNet .mat; default: none, "
                                         "a pixel loss instead of the perceptual loss)")
    tile_size: int | None = _opt(None, "deblur in tiles of this many pixels a side, at least 1 (default: 1024 above "
                                       "1920x1088, else whole frames)", type=int_in(1))


@dataclass(frozen=True)
class DiffusionOptions:
    """diffusion."""

    model: str | None = _opt(None, "a DeblurVideoPipeline folder (default: the shipped model)")
    steps: int | None = _opt(None, "DDIM steps, at least 1 (default: the pipeline's)", type=int_in(1))
    dtype: str = _opt("auto", "float32, float16 or bfloat16 (auto: see vdiffdeblur.devices.resolve_precision)",
                      choices=DTYPES)
    guidance: float | None = _opt(None, "classifier-free guidance scale, >= 0; 1 or less runs without guidance "
                                        "(default: the pipeline's)", type=float_from(0))
    window: int | None = _opt(None, "frames per window, at least 1 (default: the pipeline's, 16; 4 above 1920x1088 "
                                    "pixels)", type=int_in(1))
    overlap: int | None = _opt(None, "frames shared by consecutive windows, less than --window (default: the "
                                     "pipeline's, 4; 1 above 1920x1088 pixels)", type=int_in(0))
    tile_size: int | None = _opt(None, "denoise frames in spatial tiles of this many pixels (default: 256 above "
                                       "512x384 pixels, with VAE tiling, else whole frames)",
                                 type=int_in(1))
    decode_chunk_size: int | None = _opt(None, "frames per VAE call, at least 1 (default: 8, 1 above 512x384 pixels)",
                                         type=int_in(1))
    cpu_offload: bool = _opt(False, "keep the models on the CPU until they run (small GPUs)", action="store_true")
    vae_slicing: bool = _opt(False, "VAE-decode one frame at a time", action="store_true")
    vae_tiling: bool = _opt(False, "VAE-code frames in tiles of 256 pixels (on by itself above 512x384)",
                             action="store_true")
    color_fix: str = _opt("none", "take the output's colours from the input: wavelet (its low frequencies) or adain "
                                  "(its per-channel mean and spread), frame by frame", choices=COLOR_FIX_CHOICES)
    prior: str | None = _opt(None, "the fast method whose output the model refines, run with its defaults: transfer, "
                                   "dtb or none; must match the model (default: what the model was trained with)",
                             choices=PRIOR_CHOICES)


METHOD_OPTIONS = {"transfer": TransferOptions, "dtb": DTBOptions, "fit": FitOptions, "diffusion": DiffusionOptions}
_ALL = (RunOptions, *METHOD_OPTIONS.values())


def _flag(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One argparse group for what runs share and one per method; a shared option's help names each method."""
    seen: dict[str, list] = {}
    for cls in _ALL:
        for f in fields(cls):
            seen.setdefault(f.name, []).append((cls, f))
    added = set()
    for cls in _ALL:
        name = "common" if cls is RunOptions else _method_of(cls)
        group = parser.add_argument_group(f"{name} options", cls.__doc__)
        for f in fields(cls):
            if f.name in added:
                continue
            added.add(f.name)
            owners = seen[f.name]
            meta = f.metadata
            text = meta["help"] if len(owners) == 1 else "; ".join(
                f"{_method_of(c)}: {g.metadata['help']}" for c, g in owners)
            default = None if f.default is MISSING else f.default
            if meta["action"] is None and default is not None and "default:" not in text:
                text += f" (default: {default})"
            kwargs = {"dest": f.name, "default": default, "help": text}
            if meta["action"]:
                kwargs["action"] = meta["action"]
            else:
                if meta["type"] is not None:
                    kwargs["type"] = meta["type"]
                if meta["choices"]:
                    kwargs["choices"] = meta["choices"]
            group.add_argument(_flag(f), **kwargs)


def _method_of(cls) -> str:
    return next(m for m, c in METHOD_OPTIONS.items() if c is cls)


def known_keys() -> set[str]:
    return {f.name for cls in _ALL for f in fields(cls)}


def split_options(options: dict | None, method: str, ignore=()) -> tuple[RunOptions, object]:
    """``(RunOptions, the method's options)`` from a plain dict; a key no method knows is a ValueError (keys in
    ``ignore``, such as the CLI's own, are left out)."""
    if method not in METHOD_OPTIONS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHOD_OPTIONS)}")
    options = {k: v for k, v in (options or {}).items() if k not in ignore}
    unknown = sorted(set(options) - known_keys())
    if unknown:
        raise ValueError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(known_keys()))}")

    return options_of(RunOptions, options), options_of(METHOD_OPTIONS[method], options)


def options_of(cls, options: dict | None):
    """One options dataclass from a plain dict (keys of other dataclasses are ignored)."""
    options = options or {}
    return cls(**{f.name: options[f.name] for f in fields(cls) if options.get(f.name) is not None})

"""Online (streaming) deblurring with a :class:`~vdiffdeblur.models.dtb.DTBNet`.

:class:`OnlineDeblurrer` takes frames one at a time and returns each sharp frame as soon as its ``m``
look-ahead frames have arrived; it holds only the last ``2m+1`` frames and the network's recurrent state,
so memory does not grow with the length of the video. Edge frames are completed by reflection, exactly
as :meth:`DTBNet.forward` does on a whole clip, and the two give identical output.

``make_stream`` is the ``--method dtb`` factory of the CLI runner.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from pathlib import Path

import numpy as np
import torch

from ..devices import resolve_device, resolve_precision
from ..frames import NonFiniteOutputError, as_frames_tensor, check_finite, crop_to, pad_to_multiple, to_uint8_frames
from ..model_folders import require_kind
from ..models.dtb import DTBNet, DTBState, reflect_index, step_tiled
from ..tiles import check_tile, resolve_tile
from .stream import OneByOne, run

logger = logging.getLogger(__name__)

#: the checkpoint shipped with the package (trained on the built-in training photos only)
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "dtb"


def load_dtb_model(path=None, device="cpu") -> DTBNet:
    """A saved DTBNet folder (config.json + safetensors), by default the shipped checkpoint."""
    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no DTBNet model folder here (expected config.json and "
                                "diffusion_pytorch_model.safetensors)")
    require_kind(path, "DTBNet", "a DTB model folder")
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"{path}: incomplete DTBNet model folder, no .safetensors weights")
    model = DTBNet.from_pretrained(path, use_safetensors=True)
    return model.to(device).eval()


class OnlineDeblurrer(OneByOne):
    """Deblur a stream frame by frame with a DTBNet.

    ``push(frames)`` takes uint8 (H, W, 3) frames (or float (3, H, W) in [0, 1]) and returns the sharp frames
    now ready, each ``m`` frames behind the newest input (same type as the input; none while the look-ahead
    fills); ``flush()`` returns the last ``m`` frames. ``precision="auto"`` runs the convolutions in bfloat16
    where the device supports it (float32 otherwise; float16 on request, for GPUs); ``channels_last`` and an
    optional ``torch.compile`` speed it up. ``tile`` (pixels a side; "auto": :func:`~vdiffdeblur.tiles.auto_tile`;
    None: whole frames) runs large frames in tiles with the same output up to rounding
    (:func:`~vdiffdeblur.models.dtb.step_tiled`), which keeps 4K within a few GB. The stream is
    reusable: ``reset()`` (called by ``flush``) starts a new video. ``name`` is how errors name the model (a
    model whose output is not finite raises :class:`~vdiffdeblur.frames.NonFiniteOutputError`).
    """

    def __init__(self, model: DTBNet, device=None, precision: str = "auto", channels_last: bool = True,
                 compile: bool = False, name: str = "the dtb model", tile: int | str | None = "auto"):
        self.name = name
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.precision = resolve_precision(precision, self.device, "dtb")
        self.tile = check_tile(tile)
        # the fused convolutions' ReLU can turn a NaN weight's output into zeros, so check the weights themselves
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise NonFiniteOutputError(f"{name} has non-finite weights (NaN/inf); the model folder may be corrupt")
        self.model = model.to(self.device).eval()
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._step = torch.compile(self.model.step, dynamic=False) if compile else self.model.step
        self.m = model.config.num_neighbors
        self.reset()

    # ------------------------------------------------------------------------------------- state
    def reset(self) -> None:
        self._frames: deque = deque(maxlen=2 * self.m + 1)  # (index, padded float tensor (3, H', W'))
        self._count = 0  # frames pushed
        self._next = 0  # next output index
        self._state: DTBState | None = None
        self._size: tuple[int, int] | None = None
        self._as_uint8 = True

    def autocast(self):
        if self.precision in ("bfloat16", "float16"):
            return torch.autocast(self.device.type, dtype=getattr(torch, self.precision))
        return contextlib.nullcontext()

    # ------------------------------------------------------------------------------------- streaming
    def _prepare(self, frame) -> torch.Tensor:
        if isinstance(frame, np.ndarray) or (isinstance(frame, torch.Tensor) and frame.dtype == torch.uint8):
            self._as_uint8 = True
            if frame.ndim != 3 or frame.shape[-1] != 3:
                raise ValueError(f"expected a uint8 frame (H, W, 3), got shape {tuple(frame.shape)}")
        else:
            self._as_uint8 = False
            if not isinstance(frame, torch.Tensor) or frame.ndim != 3 or frame.shape[0] != 3:
                raise ValueError(f"expected a float frame (3, H, W), got {getattr(frame, 'shape', type(frame))}")
        x = as_frames_tensor(frame, device=self.device)  # (1, 3, H, W) float32
        size = tuple(x.shape[-2:])
        if self._size is None:
            self._size = size
        elif size != self._size:
            raise ValueError(f"frame {self._count} is {size[1]}x{size[0]}, but the stream started at "
                             f"{self._size[1]}x{self._size[0]}")
        x, _ = pad_to_multiple(x, self.model.size_multiple)
        return x[0]

    def _window(self, n: int, total: int) -> torch.Tensor:
        frames = dict(self._frames)
        idx = [reflect_index(n + d, total) for d in range(-self.m, self.m + 1)]
        missing = [i for i in idx if i not in frames]
        if missing:  # cannot happen with the look-ahead logic; guards against misuse
            raise RuntimeError(f"frames {missing} are no longer held for output frame {n}")
        win = torch.stack([frames[i] for i in idx])[None]  # (1, 2m+1, 3, H, W)
        return win

    def _run(self, n: int, total: int):
        win = self._window(n, total)
        tile = resolve_tile(self.tile, *win.shape[-2:])
        with torch.inference_mode(), self.autocast():
            if tile is None:
                out, self._state = self._step(win, self._state)
            else:
                out, self._state = step_tiled(self.model, win, self._state, tile)
        out = check_finite(crop_to(out, self._size), self.name)
        self._next = n + 1
        if self._as_uint8:
            return to_uint8_frames(out)[0]
        return out[0].clamp(0, 1)

    def _push_one(self, frame) -> list:
        self._frames.append((self._count, self._prepare(frame)))
        self._count += 1
        n = self._count - 1 - self.m
        if n < 0:
            return []
        # the length is not known yet: reflection at the start only needs frames already held (n+d >= 0 for n >= m)
        return [self._run(n, total=max(self._count, n + self.m + 1))]

    def flush(self) -> list:
        """No more frames: return the remaining (up to ``m``) sharp frames, and reset for a new stream."""
        total = self._count
        outs = [self._run(n, total) for n in range(self._next, total)]
        self.reset()
        return outs

    def deblur(self, frames) -> np.ndarray:
        """Convenience: a whole uint8 clip (F, H, W, 3) through the stream -> uint8 (F, H, W, 3)."""
        self.reset()
        return run(self, frames)


def make_stream(source, info, run, opts) -> OnlineDeblurrer:
    """``--method dtb``: ``opts`` is a :class:`~vdiffdeblur.methods.options.DTBOptions` (the shipped checkpoint
    unless ``opts.model``)."""
    device = resolve_device(run.device)
    model = load_dtb_model(opts.model, device=device)
    deblurrer = OnlineDeblurrer(model, device=device, precision=opts.dtype, compile=opts.compile,
                                name=f"{opts.model or DEFAULT_CHECKPOINT}: the dtb model",
                                tile="auto" if opts.tile_size is None else opts.tile_size)
    logger.info("dtb: %s model (%s, %d channels), %s on %s", opts.model or "shipped",
                model.config.variant, model.config.channels, deblurrer.precision, device)
    return deblurrer

"""The diffusion deblurrer end to end: load a pipeline folder, and stream a video through it window by window
from the reader into the writer (the CLI's `--method diffusion` and `scripts/ddim_inference.py`).

Memory stays flat in the video's length: the stream holds one temporal window of frames and the trajectory of
its overlap (see `DeblurVideoStream`), and frames go to the writer as soon as they are final.
"""

from __future__ import annotations

import logging
import warnings
from collections import deque
from pathlib import Path

import numpy as np
import torch

from ..devices import resolve_device, resolve_precision
from ..model_folders import require_kind
from ..outputs import check_output, remove_path
from ..video import VideoInfo, probe
from .stream import frame_list

logger = logging.getLogger(__name__)

def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The torch dtype of ``name`` for the pipeline on ``device`` (``auto``: see ``devices.resolve_precision``)."""
    return getattr(torch, resolve_precision(name, device, "diffusion"))


#: frames with more pixels than this go through the UNet and the VAE in tiles of LARGE_FRAME_TILE pixels, and through
#: the VAE one frame at a time, unless told otherwise: both networks attend over every latent position at once, so
#: a whole 1080p frame costs minutes and gigabytes (docs/diffusion.md, "Large frames")
LARGE_FRAME_ABOVE = 512 * 384
LARGE_FRAME_TILE = 256
#: frames with more pixels than this (1080p, padded) are also denoised in windows of HUGE_FRAME_WINDOW frames
#: overlapping by one: a window's latents and the model's outputs grow with its frames (4K within 4 GB)
HUGE_FRAME_ABOVE = 1920 * 1088
HUGE_FRAME_WINDOW = 4
DECODE_CHUNK_SIZE = 8


def enable_vae_tiles(vae, tile: int = LARGE_FRAME_TILE) -> None:
    """VAE encoding and decoding in tiles of at least `tile` pixels: diffusers tiles at the config's
    `sample_size`, 64 for the shipped VAE, which makes thousands of tiles of a 4K frame."""
    vae.enable_tiling()
    size = vae.tile_sample_min_size
    size = max(int(size[0] if isinstance(size, (list, tuple)) else size), tile)
    vae.tile_sample_min_size = size
    vae.tile_latent_min_size = size // 2 ** (len(vae.config.block_out_channels) - 1)


def frame_size_defaults(pipe, height: int, width: int, tile_size: int | None = None,
                        decode_chunk_size: int | None = None, window_size: int | None = None,
                        window_overlap: int | None = None) -> dict:
    """The stream's tile size, VAE chunk and window for frames of `height` x `width`: what is given, else whole
    frames, `DECODE_CHUNK_SIZE` frames per VAE call and the pipeline's window; above `LARGE_FRAME_ABOVE` pixels
    `LARGE_FRAME_TILE`-pixel tiles (VAE tiling switched on) and one frame per VAE call, above `HUGE_FRAME_ABOVE`
    also windows of `HUGE_FRAME_WINDOW` frames overlapping by one."""
    large, huge = height * width > LARGE_FRAME_ABOVE, height * width > HUGE_FRAME_ABOVE
    if large and not getattr(pipe.vae, "use_tiling", False):
        enable_vae_tiles(pipe.vae)
    if large and tile_size is None:
        m = pipe.spatial_multiple
        tile_size = max(m, LARGE_FRAME_TILE // m * m)
    if decode_chunk_size is None:
        decode_chunk_size = 1 if large else DECODE_CHUNK_SIZE
    if huge and window_size is None:
        window_size, window_overlap = HUGE_FRAME_WINDOW, 1 if window_overlap is None else window_overlap
    if large:
        logger.info("%dx%d frames: UNet tiles of %d pixels, VAE tiles of %d, %d frame(s) per VAE call, windows of "
                    "%s frames", width, height, tile_size, pipe.vae.tile_sample_min_size, decode_chunk_size,
                    window_size or "the pipeline's")
    return dict(tile_size=tile_size, decode_chunk_size=decode_chunk_size, window_size=window_size,
                window_overlap=window_overlap)


#: the small pipeline shipped with the package (training/configs/small*.yaml; docs/diffusion.md)
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "checkpoints" / "diffusion"


def load_pipeline(model=None, device: str | None = "auto", dtype: str | None = "auto", cpu_offload: bool = False,
                  vae_slicing: bool = False, vae_tiling: bool = False):
    """A `DeblurVideoPipeline` from a local folder (default: the shipped small model, `DEFAULT_MODEL`), on `device`
    in `dtype` (both may be `auto`).

    `cpu_offload` keeps each model on the CPU until it runs (`enable_model_cpu_offload`, for small GPUs);
    `vae_slicing` / `vae_tiling` cut the VAE's memory. Raises `FileNotFoundError` / `ModelFolderError` (a
    `ValueError`) naming what is wrong with the folder.
    """
    from vdiffdeblur.pipelines import DeblurVideoPipeline

    if not model:
        if not (DEFAULT_MODEL / "model_index.json").is_file():
            raise ValueError("the diffusion method needs a model: --model DIR (a DeblurVideoPipeline folder; make one "
                             "with scripts/convert_t2v_to_deblur.py or scripts/make_tiny_pipeline.py); the shipped "
                             f"model {DEFAULT_MODEL} is missing")
        model = DEFAULT_MODEL
    require_kind(model, "DeblurVideoPipeline", "a diffusion model folder", file="model_index.json")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    with warnings.catch_warnings():
        # newer diffusers call it `dtype`; `torch_dtype` works in every supported version
        warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
        pipe = DeblurVideoPipeline.from_pretrained(str(model), torch_dtype=torch_dtype)
    if cpu_offload and dev.type != "cpu":
        pipe.enable_model_cpu_offload(device=dev)
    else:
        pipe.to(dev)
    if vae_slicing:
        pipe.vae.enable_slicing()
    if vae_tiling:
        enable_vae_tiles(pipe.vae)
    logger.info("loaded %s on %s in %s", model, dev, torch_dtype)
    return pipe


def make_generator(seed: int | None) -> torch.Generator | None:
    """A seeded generator on the CPU: initial noise is then the same on every device."""
    if seed is None:
        return None
    return torch.Generator(device="cpu").manual_seed(int(seed))


def model_prior_method(model=None) -> str | None:
    """The `prior_method` a pipeline folder's model_index.json records (default folder: `DEFAULT_MODEL`), read
    without loading the model; None when it records none or the file is missing or unreadable (loading then
    names the problem)."""
    import json

    index = Path(model or DEFAULT_MODEL) / "model_index.json"
    try:
        return json.loads(index.read_text()).get("prior_method")
    except (OSError, ValueError, AttributeError):
        return None


def resolve_prior(pipe_or_model, prior: str | None) -> str | None:
    """The prior method a run uses: `prior` (`"transfer"`, `"dtb"`, `"none"`) checked against what the model
    (a loaded pipeline, or a folder: `model_prior_method`) was trained with, or that when `prior` is None. Raises
    `ValueError` naming the model folder on a mismatch."""
    if hasattr(pipe_or_model, "config"):
        expected = pipe_or_model.config.get("prior_method")
        folder = getattr(pipe_or_model, "name_or_path", None)
    else:
        expected, folder = model_prior_method(pipe_or_model), pipe_or_model or DEFAULT_MODEL
    if prior is None:
        return expected
    wanted = None if prior == "none" else prior
    if wanted != expected:
        folder = folder or "the diffusion model"
        trained = f"refines {expected} output" if expected else "takes no prior"
        raise ValueError(f"--prior {prior}: {folder} {trained} (use --prior {expected or 'none'}, or a model "
                         f"trained with --prior {prior})")
    return wanted


def make_prior_stream(method: str, source, info: VideoInfo, device: str | None = "auto"):
    """The FrameStream of the fast method (`"transfer"` / `"dtb"`, its defaults) whose output a pipeline refines."""
    from .options import METHOD_OPTIONS, RunOptions
    from .runner import load_factory

    return load_factory(method)(source, info, RunOptions(device=device or "auto"), METHOD_OPTIONS[method]())


def prior_frames(method: str, frames: np.ndarray, device: str | None = "cpu") -> np.ndarray:
    """`method`'s output (its defaults) for a whole clip, uint8 `(F, H, W, 3)` -> the same shape: the prior
    training pairs with each clip, as inference computes it over the video."""
    from .stream import run

    return run(make_prior_stream(method, None, None, device=device), frames)


class DiffusionFrameStream:
    """The diffusion method as a FrameStream over the pipeline's tensor stream: uint8 `(H, W, 3)` frames in, uint8
    frames out, in order.

    Frames come out in bursts of one window (minus the overlap) as soon as a window is denoised. With
    `prior_stream` (the fast method whose output the pipeline refines) every frame also goes through that stream,
    and each blurry frame waits until its prior frame is out (a prior with look-ahead emits later), so the
    pipeline gets both aligned.
    """

    def __init__(self, pipe, height: int, width: int, *, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, seed: int | None = 0, window_size: int | None = None,
                 window_overlap: int | None = None, tile_size: int | None = None, decode_chunk_size: int | None = None,
                 eta: float = 0.0, color_fix: str | None = None, prior_stream=None):
        folder = getattr(pipe, "name_or_path", None)
        expected = pipe.config.get("prior_method")
        if (prior_stream is None) != (expected is None):
            raise ValueError(f"{folder or 'the diffusion model'}: "
                             + (f"refines {expected} output but no prior stream was given" if expected
                                else "takes no prior but a prior stream was given"))
        self.prior_stream = prior_stream
        self._waiting: deque = deque()  # blurry frames whose prior frame is not out yet
        sizes = frame_size_defaults(pipe, height, width, tile_size, decode_chunk_size, window_size, window_overlap)
        kwargs = dict(num_inference_steps=num_inference_steps, eta=eta, generator=make_generator(seed),
                      window_size=sizes["window_size"], tile_size=sizes["tile_size"],
                      decode_chunk_size=sizes["decode_chunk_size"], color_fix=color_fix)
        if guidance_scale is not None:
            kwargs["guidance_scale"] = guidance_scale
        if sizes["window_overlap"] is not None:
            kwargs["window_overlap"] = sizes["window_overlap"]
        self.session = pipe.open_stream(height, width, batch_size=1, **kwargs)

    def push(self, frames) -> list[np.ndarray]:
        frames = frame_list(frames)
        if not frames:
            return []
        frames = np.stack([np.asarray(f) for f in frames])
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
            raise ValueError(f"expected uint8 (H, W, 3) frames, got {frames.dtype} {frames.shape[1:]}")
        if self.prior_stream is None:
            return self._push_pairs(frames, None)
        self._waiting.extend(frames)
        return self._push_pairs(*self._pair(self.prior_stream.push(list(frames))))

    def flush(self) -> list[np.ndarray]:
        out = []
        if self.prior_stream is not None:
            out = self._push_pairs(*self._pair(self.prior_stream.flush()))
            if self._waiting:  # a bug in the prior stream, not a user error
                raise RuntimeError(f"the {self.pipe_prior} prior gave {len(self._waiting)} frames too few")
        with torch.no_grad():
            return out + self._to_frames(self.session.flush())

    @property
    def pipe_prior(self) -> str | None:
        return self.session.prior_method

    def _pair(self, prior_frames) -> tuple:
        prior_frames = frame_list(prior_frames) if len(prior_frames) else []
        if len(prior_frames) > len(self._waiting):
            raise RuntimeError(f"the {self.pipe_prior} prior gave more frames than went in")
        blurry = [self._waiting.popleft() for _ in prior_frames]
        if not blurry:
            return None, None
        return np.stack(blurry), np.stack([np.asarray(p) for p in prior_frames])

    @staticmethod
    def _tensor(frames: np.ndarray) -> torch.Tensor:
        # uint8 in: the stream keeps its window as uint8 and hands back uint8 (a quarter of float32 at 4K)
        return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None]

    def _push_pairs(self, frames, prior) -> list[np.ndarray]:
        if frames is None:
            return []
        with torch.no_grad():  # (1, 3, F, H, W) each
            return self._to_frames(self.session.push(self._tensor(frames),
                                                     None if prior is None else self._tensor(prior)))

    def _to_frames(self, pieces) -> list[np.ndarray]:
        out = []
        for p in pieces:  # (1, 3, m, H, W) uint8
            out.extend(p[0].permute(1, 2, 3, 0).cpu().numpy())
        return out


def make_stream(source, info: VideoInfo, run, opts) -> DiffusionFrameStream:
    """``--method diffusion``: ``opts`` is a :class:`~vdiffdeblur.methods.options.DiffusionOptions`."""
    resolve_prior(opts.model, opts.prior)  # a mismatch fails before the model loads
    pipe = load_pipeline(opts.model, device=run.device, dtype=opts.dtype, cpu_offload=opts.cpu_offload,
                         vae_slicing=opts.vae_slicing, vae_tiling=opts.vae_tiling)
    pipe.set_progress_bar_config(disable=True)  # the caller shows progress per frame
    prior = resolve_prior(pipe, opts.prior)
    prior_stream = make_prior_stream(prior, source, info, device=run.device) if prior else None
    return DiffusionFrameStream(
        pipe, info.height, info.width, num_inference_steps=opts.steps, guidance_scale=opts.guidance, seed=run.seed,
        window_size=opts.window, window_overlap=opts.overlap, tile_size=opts.tile_size,
        decode_chunk_size=opts.decode_chunk_size, color_fix=opts.color_fix, prior_stream=prior_stream,
    )


def check_job(source, output, overwrite: bool = False) -> VideoInfo:
    """Fail fast, before loading any model: the input must be a readable video and the output writable
    (see :func:`vdiffdeblur.outputs.check_output`)."""
    check_output(output, inputs=[source], overwrite=overwrite)
    return probe(source)


def deblur_video_file(pipe, source, output, *, num_inference_steps: int | None = None,
                      guidance_scale: float | None = None,
                      seed: int | None = 0, window_size: int | None = None, window_overlap: int | None = None,
                      tile_size: int | None = None, decode_chunk_size: int | None = None, eta: float = 0.0,
                      color_fix: str | None = None, lossless: bool = False, crf: int = 18, quiet: bool = False,
                      overwrite: bool = False, prior: str | None = None,
                      prior_device: str | None = "auto") -> VideoInfo:
    """Deblur a video file / frame folder into `output` (video file, or a PNG folder for a path without suffix),
    streaming from the reader to the writer (:func:`vdiffdeblur.methods.runner.stream_file`: frame count, size,
    timestamps, rotation, colour and audio are kept; on error nothing is left under `output`). `prior`: see
    `resolve_prior` (None: what the model was trained with); the prior method runs on `prior_device`."""
    from .runner import stream_file

    prior = resolve_prior(pipe, prior)
    info = check_job(source, output, overwrite=overwrite)
    prior_stream = make_prior_stream(prior, source, info, device=prior_device) if prior else None
    stream = DiffusionFrameStream(
        pipe, info.height, info.width, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
        seed=seed, window_size=window_size, window_overlap=window_overlap, tile_size=tile_size,
        decode_chunk_size=decode_chunk_size, eta=eta, color_fix=color_fix, prior_stream=prior_stream,
    )
    return stream_file(source, output, stream, info, desc="deblur (diffusion)", lossless=lossless, crf=crf,
                       quiet=quiet)


# --------------------------------------------------------------------------------------- measuring
def current_rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """Context manager sampling this process's resident memory every `interval` s in a thread: `.peak` bytes."""

    def __init__(self, interval: float = 0.002):
        import threading

        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = current_rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes())


def measure_deblur_file(pipe, source, output, warmup_source=None, repeat: int = 1, **kwargs) -> dict:
    """Run `deblur_video_file` `repeat` times and report frames, wall and CPU (process) seconds per frame (the
    fastest run: the steadiest figure on a shared machine), resident memory (after loading; peak over the runs)
    and, on CUDA, peak allocated GPU memory. `warmup_source` (a short clip) is deblurred first, untimed, so
    one-off initialisation does not count."""
    import time

    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    kwargs.setdefault("quiet", True)
    if warmup_source is not None:
        warm_out = Path(output).with_name(f".warmup-{Path(output).name}")
        deblur_video_file(pipe, warmup_source, warm_out, **{**kwargs, "overwrite": True})
        remove_path(warm_out)
    cuda = pipe._execution_device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = current_rss_bytes()
    seconds = cpu_seconds = float("inf")
    with PeakRSS() as peak:
        for _ in range(repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            info = deblur_video_file(pipe, source, output, **{**kwargs, "overwrite": True})
            if cuda:
                torch.cuda.synchronize()
            seconds = min(seconds, time.perf_counter() - t0)
            cpu_seconds = min(cpu_seconds, time.process_time() - c0)
    result = {
        "frames": info.num_frames, "size": f"{info.width}x{info.height}", "seconds": seconds,
        "seconds_per_frame": seconds / info.num_frames, "cpu_seconds_per_frame": cpu_seconds / info.num_frames,
        "rss_baseline_mb": baseline / 2**20,
        "rss_peak_mb": peak.peak / 2**20, "rss_increase_mb": (peak.peak - baseline) / 2**20,
    }
    if cuda:
        result["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result

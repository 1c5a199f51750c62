"""Many videos in one run: one output per input in a folder, resumable, a summary JSON, split across processes.

Output names: the input's stem plus ``suffix`` (default: the input's own suffix when it is a video suffix; a frame
folder gives a PNG folder; any other file, such as an image, ``.mp4``). A finished output (its final name exists:
outputs are renamed only when complete) is skipped; a partial one (a hidden temporary left by a killed run) is
removed and redone. Under ``accelerate launch`` (or torchrun) the videos are split between the processes with
Accelerate's ``PartialState().split_between_processes``, one GPU per process when there are GPUs; the main process
writes the summary with every video and the process that did it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..outputs import OutputError, check_output, same_file, writing_atomically
from ..threads import world_size
from ..video import WRITE_SUFFIXES, probe
from .options import split_options

logger = logging.getLogger(__name__)

SUMMARY = "deblur_summary.json"
FOLDER = "folder"  # the --suffix that asks for PNG folders


@dataclass
class VideoRecord:
    input: str
    output: str
    status: str = "pending"  # done, skipped (finished by an earlier run) or failed
    frames: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    process: int = 0
    error: str = ""
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d | self.extra


def output_name(source, suffix: str | None = None) -> tuple[str, str]:
    """The output's stem and suffix in the folder (see the module's rule)."""
    src = Path(source)
    if src.is_dir():
        stem, own = src.name, ""
    else:
        stem, own = src.stem, (src.suffix if src.suffix.lower() in WRITE_SUFFIXES else ".mp4")
    if suffix is None:
        return stem, own
    return stem, "" if suffix == FOLDER else suffix


def check_suffix(suffix: str | None) -> str | None:
    if suffix is None or suffix == FOLDER:
        return suffix
    s = suffix if suffix.startswith(".") else "." + suffix
    if s.lower() not in WRITE_SUFFIXES:
        raise ValueError(f"--suffix must be {FOLDER} (PNG folders) or a video suffix "
                         f"({', '.join(sorted(WRITE_SUFFIXES))}), got {suffix!r}")
    return s


def plan(inputs, out_dir, suffix: str | None = None, overwrite: bool = False) -> list[VideoRecord]:
    """One record per input, checked before any work: inputs whose outputs would share a name, an ``out_dir`` that
    is a file or has a video suffix, an output that is an input, an existing output this run may not replace
    (see :func:`vdiffdeblur.outputs.check_output`) are ValueErrors. An existing output is ``skipped`` unless
    ``overwrite``."""
    out_dir = Path(out_dir)
    suffix = check_suffix(suffix)
    if out_dir.suffix.lower() in WRITE_SUFFIXES or (out_dir.exists() and not out_dir.is_dir()):
        raise OutputError(out_dir, "with several inputs -o names a folder for their outputs")
    by_stem: dict[str, Path] = {}
    records = []
    for src in map(Path, inputs):
        if not src.exists():
            raise FileNotFoundError(2, "No such file or directory", str(src))
        stem, ext = output_name(src, suffix)
        if stem in by_stem:
            other = by_stem[stem]
            what = "are the same input" if same_file(other, src) else f"have the same name {stem!r}"
            raise ValueError(f"{other} and {src} {what}: their outputs in {out_dir} would clash (give each "
                             "once; rename one or deblur it in another run)")
        by_stem[stem] = src
        out = out_dir / (stem + ext)
        exists = out.exists() or out.is_symlink()
        # an existing output is checked as if it were to be replaced, so that what is skipped is this tool's kind
        check_output(out, inputs=inputs, overwrite=True)
        records.append(VideoRecord(str(src), str(out), status="skipped" if exists and not overwrite else "pending"))
    return records


# --------------------------------------------------------------------------------------- processes
class _Processes:
    """This process's share of the work: everything when alone, Accelerate's split under a launcher."""

    def __init__(self):
        self.state = None
        self.index, self.count = 0, 1
        if world_size() > 1:
            import torch
            from accelerate import PartialState
            from accelerate.utils import parse_flag_from_env

            # PartialState, unlike Accelerator, reads no ACCELERATE_USE_CPU; without it a CPU launch stays one process
            cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
            self.state = PartialState(cpu=cpu)
            self.index, self.count = self.state.process_index, self.state.num_processes

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def split(self, items: list) -> list:
        if self.state is None:
            return list(items)
        with self.state.split_between_processes(list(items)) as mine:
            return list(mine)

    def device(self, requested: str | None) -> str | None:
        """One GPU per process: ``auto`` or ``cuda`` becomes this process's own CUDA device."""
        if self.state is None or self.state.device.type != "cuda":
            return requested
        if requested in (None, "auto", "cuda"):
            return str(self.state.device)
        return requested

    def gather(self, records: list) -> list:
        if self.state is None:
            return records
        from accelerate.utils import gather_object

        return gather_object(records)

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


# --------------------------------------------------------------------------------------- the run
def _previous(summary: Path) -> dict:
    """Records of an earlier run's summary, by output path (figures for the outputs this run skips)."""
    try:
        data = json.loads(summary.read_text())
        return {v["output"]: v for v in data["videos"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def write_summary(out_dir, records: list[VideoRecord], method: str, options: dict, seconds: float,
                  processes: int) -> Path:
    path = Path(out_dir) / SUMMARY
    done = [r for r in records if r.status == "done"]
    frames = sum(r.frames for r in done)
    busy = sum(r.seconds for r in done)
    data = {"tool": "vdiffdeblur deblur", "method": method, "processes": processes,
            "options": {k: v for k, v in sorted(options.items()) if v is not None},
            "videos": [r.as_dict() for r in records],
            "done": len(done), "skipped": sum(r.status == "skipped" for r in records),
            "failed": sum(r.status == "failed" for r in records),
            "frames": frames, "seconds": round(seconds, 3), "fps": round(frames / seconds, 4) if seconds else 0.0,
            "video_seconds": round(busy, 3)}
    with writing_atomically(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
    return path


def deblur_many(inputs, out_dir, method: str = "transfer", options: dict | None = None, overwrite: bool = False,
                suffix: str | None = None, on_error=None) -> list[VideoRecord]:
    """Deblur every input into ``out_dir`` (one output each, see :func:`plan`), this process's share of them under
    a launcher; returns every record (all processes') and writes :data:`SUMMARY` (main process).

    A video that fails with a user error (unreadable, corrupt, ...) is recorded as failed and ``on_error(record,
    error)`` is called; the others go on. Anything else propagates.
    """
    from ..video import VideoError
    from .runner import deblur_file

    options = dict(options or {})
    run, opts = split_options(options, method)
    records = plan(inputs, out_dir, suffix=suffix, overwrite=overwrite)
    procs = _Processes()
    options["device"] = procs.device(options.get("device"))
    previous = _previous(Path(out_dir) / SUMMARY)
    t0 = time.perf_counter()
    mine = procs.split(records)
    for r in mine:
        r.process = procs.index
        if r.status == "skipped":
            old = previous.get(r.output, {})
            r.frames, r.seconds, r.fps = old.get("frames", 0), old.get("seconds", 0.0), old.get("fps", 0.0)
            logger.info("%s: exists, skipped (--overwrite redoes it)", r.output)
    todo = [r for r in mine if r.status == "pending"]
    total = 0
    for r in todo:
        try:
            total += probe(r.input).num_frames
        except VideoError:
            pass  # reported when its turn comes
    where = f" (process {procs.index + 1}/{procs.count})" if procs.count > 1 else ""
    with tqdm(total=total, desc=f"all videos{where}", unit="frame", disable=run.quiet, position=0) as overall:
        for k, r in enumerate(todo):
            overall.set_postfix_str(f"video {k + 1}/{len(todo)}")
            start = time.perf_counter()
            try:
                info = deblur_file(r.input, r.output, method=method, options=options, overwrite=overwrite,
                                   overall=overall, desc=Path(r.input).name)
            except (VideoError, ValueError, FileNotFoundError, NotImplementedError, OSError) as e:
                r.status, r.error = "failed", " ".join(str(e).split())
                if on_error is not None:
                    on_error(r, e)
                continue
            r.seconds = round(time.perf_counter() - start, 3)
            r.status, r.frames = "done", info.num_frames
            r.fps = round(r.frames / r.seconds, 4) if r.seconds else 0.0
    every = procs.gather(mine)
    if procs.is_main:
        order = {r.input: i for i, r in enumerate(records)}
        every.sort(key=lambda r: order[r.input])
        write_summary(out_dir, every, method, asdict(run) | asdict(opts), time.perf_counter() - t0, procs.count)
    procs.wait()
    return every

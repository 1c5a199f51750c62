"""Where a run writes: temporary siblings renamed when complete, and the rules that keep a user's files safe.

A run deletes or replaces nothing it did not create. An existing output is refused unless ``overwrite`` is given,
and even then the input, a folder that holds the input and a folder holding anything but this tool's own frame
files are never removed. A temporary output is named ``.NAME.partial-PID-RANDOM``; one left by a killed run (its
process is gone) is removed by the next run on the same output. SIGTERM and SIGHUP end a run the way Ctrl-C does,
so the temporary output is removed on the way out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

FOLDER_META = ".vdiffdeblur.json"  # a PNG folder written here remembers its fps and timestamps in this hidden file
FRAME_FILE = re.compile(r"^\d{5}\.png$")  # the names VideoWriter gives the frames of a PNG folder
SYNTH_ENTRIES = {"blur", "sharp", "blur.mkv", "meta.json"}  # what `vdiffdeblur synth` writes into its folder
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)-[0-9a-f]{8}(?P<suffix>\.[^.]*)?$")


class OutputError(ValueError):
    """An output path this run may not write; the message names the path and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        super().__init__(f"{path}: {reason}")


class Terminated(BaseException):
    """The process received SIGTERM or SIGHUP: unwinds like KeyboardInterrupt, so temporary outputs are removed."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"terminated by signal {signal.Signals(signum).name}")


# --------------------------------------------------------------------------------------- temporary siblings
def temp_sibling(path) -> Path:
    """A hidden name beside ``path``, unique to this process, for writing ``path`` before renaming it."""
    path = Path(path)
    return path.with_name(f".{path.stem}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_leftovers(path) -> list[Path]:
    """Remove temporary siblings of ``path`` left by runs whose process is gone; returns what was removed."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return []
    removed = []
    for entry in parent.iterdir():
        m = _PARTIAL.match(entry.name)
        if not m or m["name"] != path.stem or (m["suffix"] or "") != path.suffix or _alive(int(m["pid"])):
            continue
        remove_path(entry)
        removed.append(entry)
        logger.info("removed %s, left by an interrupted run", entry)
    return removed


def remove_path(path) -> None:
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


# --------------------------------------------------------------------------------------- what may be replaced
def same_file(a, b) -> bool:
    """True when two paths name the same file or folder."""
    try:
        return Path(a).resolve() == Path(b).resolve() or (Path(b).exists() and Path(a).exists()
                                                          and os.path.samefile(a, b))
    except OSError:
        return False


def _inside(child, folder) -> bool:
    try:
        Path(child).resolve().relative_to(Path(folder).resolve())
        return True
    except ValueError:
        return False


def is_frame_folder(folder) -> bool:
    """A folder VideoWriter wrote: its hidden meta file and numbered PNGs, nothing else (numbered PNGs alone may be
    anyone's export)."""
    entries = list(Path(folder).iterdir())
    if not entries:  # an empty folder holds nothing to lose
        return True
    return any(e.name == FOLDER_META and e.is_file() for e in entries) and all(
        e.is_file() and (FRAME_FILE.match(e.name) or e.name == FOLDER_META) for e in entries)


def is_synth_folder(folder) -> bool:
    """A folder holding only what ``vdiffdeblur synth`` writes."""
    for e in Path(folder).iterdir():
        if e.name not in SYNTH_ENTRIES:
            return False
        if e.is_dir() and not is_frame_folder(e):
            return False
    return True


def check_output(output, inputs=(), overwrite: bool = False, kind: str = "auto") -> None:
    """Refuse, before any work, an output this run may not write.

    ``kind``: "file" (a video file), "frames" (a PNG folder), "synth" (a synth folder) or "auto" (by suffix: none
    means a PNG folder). Raises :class:`OutputError` naming the path and the reason.
    """
    out = Path(output)
    if kind == "auto":
        kind = "frames" if out.suffix == "" else "file"
    for src in inputs:
        if same_file(src, out):
            raise OutputError(out, "is the input: refusing to overwrite it")
        if out.is_dir() and _inside(src, out):
            raise OutputError(out, f"holds the input {src}: refusing to replace it")
    parent = _existing_parent(out)
    if not parent.is_dir():
        raise OutputError(out, f"{parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(out, f"cannot write into {parent} (permission denied)")
    if not (out.exists() or out.is_symlink()):
        return
    if out.is_symlink():
        raise OutputError(out, "is a symbolic link: refusing to replace it (give the path it points to)")
    if kind == "file":
        if out.is_dir():
            raise OutputError(out, "is a folder; a video file cannot replace it (choose another name)")
    elif not out.is_dir():
        raise OutputError(out, "is a file; a frame-folder output needs a folder path (or give a video suffix)")
    if not overwrite:
        raise OutputError(out, "already exists (use --overwrite to replace it)")
    if not os.access(out, os.W_OK):
        raise OutputError(out, "cannot be replaced (permission denied)")
    if kind == "frames" and not is_frame_folder(out):
        raise OutputError(out, "holds files this tool did not write: refusing to replace it")
    if kind == "synth" and not is_synth_folder(out):
        raise OutputError(out, "holds files synth did not write: refusing to replace it")


def _existing_parent(path: Path) -> Path:
    """The nearest folder above ``path`` that exists (where a run would create the missing ones)."""
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def atomic_replace(tmp, final) -> None:
    """Move ``tmp`` to ``final``; an earlier folder under ``final`` is removed only once ``tmp`` has taken its name."""
    tmp, final = Path(tmp), Path(final)
    try:
        if final.is_dir() and not final.is_symlink():
            old = final.with_name(f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except OSError as e:  # name the output, not the hidden temporary
        raise OutputError(final, f"cannot be written ({e.strerror or e})") from None


@contextlib.contextmanager
def writing_atomically(final):
    """Yield a temporary sibling path to write ``final`` into; on success it replaces ``final`` (file or folder) in
    one rename, on any error (or SIGINT/SIGTERM/SIGHUP under :func:`signals_unwind`) it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(final)
    tmp = temp_sibling(final)
    try:
        yield tmp
        atomic_replace(tmp, final)
    except BaseException:
        remove_path(tmp)
        raise


@contextlib.contextmanager
def signals_unwind():
    """Within this block SIGTERM and SIGHUP raise :class:`Terminated` (main thread only), so cleanup code runs."""
    def handler(signum, frame):
        raise Terminated(signum)

    previous = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is None:
            continue
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave the handlers alone
            pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

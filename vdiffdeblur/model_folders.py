"""What kind of saved model a folder holds, so that a method given another method's model says which kind it
expected and which it found, instead of failing later while loading weights."""

from __future__ import annotations

import json
from pathlib import Path

#: the model each method loads, and the method each kind belongs to (named in errors)
METHOD_OF = {"DTBNet": "--method dtb", "FitUNet": "--method fit --init", "DeblurVideoPipeline": "--method diffusion"}


class ModelKindError(ValueError):
    """A model path that holds another kind of model than the method needs; the message names both kinds."""


def saved_class(path, file: str) -> str | None:
    """``_class_name`` of ``path/file`` (a diffusers config.json or model_index.json); None if absent or unreadable."""
    f = Path(path) / file
    try:
        name = json.loads(f.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def describe(path) -> str:
    """What ``path`` holds, in words: "a DTBNet folder, for --method dtb", "a file", "no config.json", ..."""
    path = Path(path)
    if not path.exists():
        return "nothing (no such file or folder)"
    if not path.is_dir():
        return "a file"
    for file in ("model_index.json", "config.json"):
        name = saved_class(path, file)
        if name:
            return f"a {name} folder" + (f", for {METHOD_OF[name]}" if name in METHOD_OF else "")
    return "no config.json or model_index.json"


def require_kind(path, class_name: str, what: str, file: str = "config.json") -> None:
    """Raise :class:`ModelKindError` unless the existing ``path`` is a folder whose ``file`` was saved by
    ``class_name`` (``what`` names the kind, e.g. "a DTB model folder"). A ``file`` that names no class is let
    through for the loader to judge; a path that does not exist is the caller's to report."""
    path = Path(path)
    if not path.exists():
        return
    if path.is_dir() and (path / file).is_file():
        found = saved_class(path, file)
        if found is None or found == class_name:
            return
    raise ModelKindError(f"{path}: not {what} (expected {file} of {class_name}; found {describe(path)})")

"""Reproduction recipes: how each shipped model was trained, as data (``training/recipes/<name>.yaml``).

A recipe lists stages, run in order, each one a script writing one output folder:

* ``name``: the stage's name; its output is ``<work>/<model>/<name>`` and its records ship as ``<name>_<file>``;
* ``script``: a trainer (``training/*.py``, options through `options.config_cli`) or another script;
* ``config`` (a file in ``training/configs``, or an absolute path) and ``overrides`` (option: value, given as
  ``--option value``);
* ``from``: the earlier stage whose output it starts from (the trainer's `Trainer.start` option);
* ``records``: the files of its output that ship (default: none), ``done``: the files that mark it complete
  (default: its records); ``launch``: ``python`` (default) or ``accelerate`` (``accelerate launch``);
* ``args``: a script that is not a trainer gets these arguments instead, ``{out}`` and ``{<stage>}`` standing
  for output folders.

``defaults`` gives any stage key for every stage; ``models`` names the shipped models the same stages make
(``ship_to``: a folder under vdiffdeblur/checkpoints, ``overrides``: options for all its stages); ``ship``
gives the network ``files`` copied from the last stage's output, or a ``command`` that ships the model itself.
``scripts/reproduce.py`` runs a recipe; tests/test_recipes.py checks the shipped records against it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "training" / "recipes"
CONFIGS = ROOT / "training" / "configs"
SHIPPED = ROOT / "vdiffdeblur" / "checkpoints"
NAMES = ("dtb", "fit", "diffusion")

#: where a run wrote its output and whether it was resumed: a record may differ from the recipe there
PATH_OPTIONS = ("output_dir", "resume_from_checkpoint")
#: what a record holds besides the options (DTB: the trained network's config)
RECORD_ONLY = ("model_config",)
#: the arguments `accelerate launch` gets (one process, no prompt for a config); the device is Accelerate's choice
ACCELERATE_ARGS = ("--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")


@dataclass(frozen=True)
class Trainer:
    """What a recipe needs to know about a training script."""

    cli: object  # () -> options.ConfigCLI
    start: str | None  # the option a stage's ``from`` sets
    record: str  # the record holding the run's options
    record_key: str | None = None  # ... under this key


def trainers() -> dict[str, Trainer]:
    """The training scripts a recipe may name, by path from the repository root."""
    from .config import stage_cli
    from .dtb import dtb_cli
    from .maml import maml_cli
    from .vae import vae_cli

    return {"training/train_dtb.py": Trainer(dtb_cli, "init_from", "training_config.json"),
            "training/meta_train.py": Trainer(maml_cli, "init", "meta_train.json", "config"),
            "training/train_vae.py": Trainer(vae_cli, None, "training_config.json"),
            "training/stage1.py": Trainer(lambda: stage_cli(1), "pretrained", "training_config.json"),
            "training/stage2.py": Trainer(lambda: stage_cli(2), "pretrained", "training_config.json")}


class RecipeError(ValueError):
    """A recipe that cannot be run as written (one line)."""


@dataclass
class Stage:
    name: str
    script: str
    config: str | None = None
    overrides: dict = field(default_factory=dict)
    start: str | None = None  # the recipe's ``from``
    records: tuple = ()
    done: tuple = ()
    launch: str = "python"
    args: tuple = ()
    carried: str | None = None  # a committed checkpoint (+ its log) that a stage with none of its own starts from


@dataclass
class Model:
    name: str
    ship_to: str
    overrides: dict = field(default_factory=dict)


@dataclass
class Recipe:
    name: str
    path: Path
    models: list[Model]
    stages: list[Stage]
    ship_files: tuple = ()
    ship_command: tuple = ()

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


_STAGE_KEYS = {"name", "script", "config", "overrides", "from", "records", "done", "launch", "args", "carried"}


def load_recipe(name_or_path) -> Recipe:
    """A recipe by name (``dtb``, ``fit``, ``diffusion``: training/recipes/<name>.yaml) or path; its mistakes
    (unknown keys, a ``from`` naming no earlier stage, a trainer given ``args``...) are a `RecipeError`."""
    import yaml

    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = RECIPES / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} not found (recipes: {', '.join(NAMES)})")
    data = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(data) - {"defaults", "models", "ship", "stages"})
    if unknown:
        raise RecipeError(f"{path}: unknown key(s) {', '.join(unknown)}")
    defaults = data.get("defaults") or {}
    known = trainers()
    stages: list[Stage] = []
    for raw in data.get("stages") or []:
        s = {**defaults, **raw}
        bad = sorted(set(s) - _STAGE_KEYS)
        if bad or "name" not in s or "script" not in s:
            raise RecipeError(f"{path}: stage {s.get('name', '?')}: unknown key(s) {', '.join(bad)}" if bad else
                              f"{path}: every stage needs a name and a script")
        stage = Stage(name=str(s["name"]), script=s["script"], config=s.get("config"),
                      overrides=dict(s.get("overrides") or {}), start=s.get("from"),
                      records=tuple(s.get("records") or ()), launch=s.get("launch", "python"),
                      args=tuple(str(a) for a in s.get("args") or ()), carried=s.get("carried"))
        stage.done = tuple(s.get("done") or stage.records)
        where = f"{path}: stage {stage.name}"
        if stage.name in {t.name for t in stages}:
            raise RecipeError(f"{where}: named twice")
        if stage.start is not None and stage.start not in {t.name for t in stages}:
            raise RecipeError(f"{where}: from {stage.start}, which is no earlier stage")
        if stage.launch not in ("python", "accelerate"):
            raise RecipeError(f"{where}: launch must be python or accelerate, got {stage.launch}")
        if not (ROOT / stage.script).is_file():
            raise RecipeError(f"{where}: script {stage.script} not found")
        if stage.script in known:
            trainer = known[stage.script]
            if stage.args:
                raise RecipeError(f"{where}: a trainer takes a config and overrides, not args")
            if stage.start is not None and trainer.start is None:
                raise RecipeError(f"{where}: {stage.script} starts from nothing (no from)")
            if stage.config is not None and not (CONFIGS / stage.config).is_file():
                raise RecipeError(f"{where}: config {stage.config} not found in {CONFIGS}")
        elif stage.config or stage.overrides or stage.start or stage.carried:
            raise RecipeError(f"{where}: {stage.script} is not a trainer; give it args")
        if stage.carried is not None and carried_checkpoint(stage) is None:
            raise RecipeError(f"{where}: carried {stage.carried} holds no checkpoint-<step>/ folder")
        if not stage.done:
            raise RecipeError(f"{where}: nothing marks it complete (give records or done)")
        stages.append(stage)
    if not stages:
        raise RecipeError(f"{path}: no stages")
    models = [Model(name, str(m["ship_to"]), dict(m.get("overrides") or {}))
              for name, m in (data.get("models") or {}).items()]
    if not models:
        raise RecipeError(f"{path}: no models")
    ship = data.get("ship") or {}
    return Recipe(path.stem, path, models, stages, tuple(ship.get("files") or ()),
                  tuple(str(a) for a in ship.get("command") or ()))


def carried_checkpoint(stage: Stage) -> Path | None:
    """The newest complete checkpoint in the stage's `carried` folder (relative to the repository root)."""
    from .checkpoints import list_checkpoints, verify_checkpoint

    if stage.carried is None:
        return None
    found = [c for c in list_checkpoints(ROOT / stage.carried) if verify_checkpoint(c) is None]
    return found[-1] if found else None


def start_from_carried(stage: Stage, out: Path) -> Path | None:
    """Copy the stage's carried checkpoint and its `training_log.json` into `out` (a stage output with no
    checkpoint of its own), so that a long run goes on where an earlier session stopped; returns the copy."""
    from .checkpoints import checkpoint_step, list_checkpoints, temp_checkpoint_dir

    src = carried_checkpoint(stage)
    if src is None or list_checkpoints(out):
        return None
    out.mkdir(parents=True, exist_ok=True)
    tmp = temp_checkpoint_dir(out, checkpoint_step(src))  # the checkpoints' own temporary name: never a user's
    shutil.rmtree(tmp, ignore_errors=True)  # a copy a killed run left half-done
    shutil.copytree(src, tmp)
    log = src.parent / "training_log.json"
    if log.is_file() and not (out / log.name).exists():
        shutil.copy2(log, out / log.name)
    os.rename(tmp, out / src.name)  # only a complete copy gets the checkpoint's name
    return out / src.name


def to_argv(options: dict) -> list[str]:
    """``{name: value}`` as a trainer's command line: ``--name value``, lists as several values, None as none."""
    argv = []
    for name, value in options.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        words = ["none" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for v in values]
        argv += [f"--{name}", *words]
    return argv


def stage_dir(work: Path, model: Model, stage: Stage) -> Path:
    return Path(work) / model.name / stage.name


def trainer_argv(recipe: Recipe, model: Model, stage: Stage, work: Path, resume: bool = False) -> list[str]:
    """A trainer stage's own arguments (after the script): config, stage then model overrides, then the output
    folder and the folder it starts from."""
    trainer = trainers()[stage.script]
    argv = ["--config", _short(str(CONFIGS / stage.config))] if stage.config else []
    argv += to_argv({**stage.overrides, **model.overrides})
    argv += ["--output_dir", str(stage_dir(work, model, stage))]
    if stage.start is not None:
        argv += [f"--{trainer.start}", str(stage_dir(work, model, recipe.stage(stage.start)))]
    if resume:
        argv += ["--resume_from_checkpoint", "latest"]
    return argv


def _fill(words, recipe: Recipe, model: Model, work: Path, ship_root: Path, out: Path | None = None) -> list[str]:
    places = {s.name: str(stage_dir(work, model, s)) for s in recipe.stages}
    places["ship_to"] = str(Path(ship_root) / model.ship_to)
    if out is not None:
        places["out"] = str(out)
    try:
        return [w.format_map(places) for w in words]
    except KeyError as e:
        raise RecipeError(f"{recipe.path}: {{{e.args[0]}}} names no stage") from None


def command(recipe: Recipe, model: Model, stage: Stage, work: Path, ship_root: Path = SHIPPED,
            resume: bool = False, launch: str | None = None, python: str = sys.executable,
            accelerate_args=ACCELERATE_ARGS) -> list[str]:
    """The command line that runs ``stage`` for ``model`` (run from the repository root); ``launch``
    overrides the stage's own (``accelerate``: every trainer through ``accelerate launch``)."""
    known = trainers()
    if stage.script in known:
        args = trainer_argv(recipe, model, stage, work, resume)
    else:
        args = _fill(stage.args, recipe, model, work, ship_root, stage_dir(work, model, stage))
    how = stage.launch if launch is None or stage.script not in known else launch
    if how == "accelerate":
        accelerate = Path(python).with_name("accelerate")  # the one installed next to this Python, else PATH's
        return [str(accelerate) if accelerate.is_file() else "accelerate", "launch", *accelerate_args, stage.script,
                *args]
    return [python, stage.script, *args]


def ship_command(recipe: Recipe, model: Model, work: Path, ship_root: Path = SHIPPED,
                 python: str = sys.executable) -> list[str] | None:
    if not recipe.ship_command:
        return None
    script, *args = _fill(recipe.ship_command, recipe, model, work, ship_root)
    return [python, script, *args]


def shipped_names(recipe: Recipe) -> dict[str, tuple[str, str]]:
    """What a model's ship folder receives: name there -> (stage, file in that stage's output)."""
    last = recipe.stages[-1].name
    names = {f: (last, f) for f in recipe.ship_files}
    for s in recipe.stages:
        names.update({f"{s.name}_{r}": (s.name, r) for r in s.records})
    return names


def _short(word: str) -> str:
    """A path under the repository root relative to it (where the stages run); anything else as it is."""
    if os.path.isabs(word) and Path(word).is_relative_to(ROOT):
        return os.path.relpath(word, ROOT)
    return word


def shell(cmd: list[str]) -> str:
    """``cmd`` as one shell line, paths under the repository root made relative to it."""
    return " ".join(shlex.quote(_short(w)) for w in cmd)


# ------------------------------------------------------------------------------------------- records
def _json(value):
    return json.loads(json.dumps(value, default=list))


def expected_options(recipe: Recipe, model: Model, stage: Stage, work: Path = Path("outputs/checkpoints")) -> dict:
    """The options ``stage`` trains ``model`` with: its command line parsed by the trainer's own `config_cli`,
    as JSON (what the trainer records)."""
    cli = trainers()[stage.script].cli()
    return _json(asdict(cli.parse(trainer_argv(recipe, model, stage, work))))


def recorded_options(stage: Stage, folder: Path, name: str | None = None) -> dict:
    """The options a trainer recorded in ``folder`` (its record file, or ``name`` there)."""
    trainer = trainers()[stage.script]
    data = json.loads((Path(folder) / (name or trainer.record)).read_text())
    return data[trainer.record_key] if trainer.record_key else data


def differences(stage: Stage, expected: dict, recorded: dict) -> dict:
    """{option: (recipe's value, record's value)} where a record disagrees with the recipe. An option the record
    predates counts as its default; `PATH_OPTIONS` and `RECORD_ONLY` are left out, and of the start option only
    whether it is set counts (where a stage started from moved since: shipped, copied)."""
    trainer = trainers()[stage.script]
    defaults = _json(asdict(trainer.cli().parse([])))

    def full(d: dict) -> dict:
        out = {**defaults, **d}
        for k, v in defaults.items():  # a nested dataclass (MAML's meta) takes its missing keys too
            if isinstance(v, dict) and isinstance(d.get(k), dict):
                out[k] = {**v, **d[k]}
        for k in (*PATH_OPTIONS, *RECORD_ONLY):
            out.pop(k, None)
        if trainer.start:
            out[trainer.start] = "set" if out.get(trainer.start) is not None else None
        return out

    a, b = full(expected), full(recorded)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}

#!/usr/bin/env python
"""Reproduce shipped models from their recipes (training/recipes/*.yaml; docs/training.md, "Reproduction recipes").

    python scripts/reproduce.py dtb|fit|diffusion|all [--dry-run] [--work outputs/checkpoints]
    python scripts/reproduce.py dtb --launch accelerate      # every trainer through `accelerate launch` (a GPU)

Each stage runs as its own process (OMP_NUM_THREADS=1) into ``<work>/<model>/<stage>``. A stage whose output is
complete is skipped (an error if its record disagrees with the recipe), one with a checkpoint resumes from it; a
stage with none of its own but a ``carried`` checkpoint in the repository (a long run an earlier session stopped)
starts from a copy of that.
Then the network files and every stage's records are copied into ``vdiffdeblur/checkpoints/<ship_to>`` as
``<stage>_<file>`` (hand-written model cards stay). ``--dry-run`` prints the commands and copies instead.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from vdiffdeblur.trainer import recipes as R
from vdiffdeblur.trainer.checkpoints import list_checkpoints


def _from_root(folder) -> Path:
    """``folder`` (relative to the current directory) as the stages see it: they run in the repository root."""
    path = Path(folder).resolve()
    return path.relative_to(R.ROOT) if path.is_relative_to(R.ROOT) else path


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str], dry: bool, what: str) -> None:
    print(("" if dry else "+ ") + "OMP_NUM_THREADS=1 " + R.shell(cmd), flush=True)
    if not dry:
        rc = subprocess.call(cmd, cwd=R.ROOT, env=_env())
        if rc:
            raise SystemExit(f"error: {what} failed with exit status {rc}; rerun to continue from where it stopped")


def _complete(recipe, model, stage, work: Path) -> bool:
    """Whether ``stage``'s output is complete; a complete trainer output recorded with other options than the
    recipe's is an error (it would ship a model the recipe does not describe)."""
    out = R.ROOT / R.stage_dir(work, model, stage)
    if not all((out / f).is_file() for f in stage.done):
        return False
    if stage.script in R.trainers():
        diff = R.differences(stage, R.expected_options(recipe, model, stage, work), R.recorded_options(stage, out))
        if diff:
            shown = ", ".join(f"{k} {a!r} (recipe) != {b!r}" for k, (a, b) in list(diff.items())[:3])
            raise SystemExit(f"error: {R.stage_dir(work, model, stage)} was trained with other options: {shown}; "
                             f"remove it or choose another --work")
    return True


def _copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.partial")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)  # a killed copy never leaves half a file under the shipped name


def reproduce(recipe, work: Path, ship_root: Path, dry: bool, launch: str | None, accelerate_args, only=None):
    for model in recipe.models:
        if only and model.name not in only:
            continue
        dest = ship_root / model.ship_to
        print(f"# {recipe.name}: {model.name} -> {R.shell([str(dest)])}", flush=True)
        for stage in recipe.stages:
            out = R.stage_dir(work, model, stage)
            if _complete(recipe, model, stage, work):
                print(f"# {stage.name}: complete in {out}, skipped", flush=True)
                continue
            carried = R.carried_checkpoint(stage)
            if carried is not None and not list_checkpoints(R.ROOT / out):
                print(f"cp -r {R.shell([str(_from_root(carried)), str(out)])}" if dry else
                      f"# {stage.name}: going on from the carried {_from_root(carried)}", flush=True)
                if not dry:
                    R.start_from_carried(stage, R.ROOT / out)
            resume = stage.script in R.trainers() and (bool(list_checkpoints(R.ROOT / out)) or
                                                        (dry and carried is not None))
            _run(R.command(recipe, model, stage, work, ship_root, resume=resume, launch=launch,
                           accelerate_args=accelerate_args), dry, f"{model.name} {stage.name} ({stage.script})")
        ship = R.ship_command(recipe, model, work, ship_root)
        if ship:
            _run(ship, dry, f"shipping {model.name}")
        print(f"mkdir -p {R.shell([str(dest)])}" if dry else f"+ copying into {R.shell([str(dest)])}", flush=True)
        if not dry:
            (R.ROOT / dest).mkdir(parents=True, exist_ok=True)
        for name, (stage, file) in R.shipped_names(recipe).items():
            src = R.stage_dir(work, model, recipe.stage(stage)) / file
            if dry:
                print(f"cp {R.shell([str(src), str(dest / name)])}")
            elif not (R.ROOT / src).is_file():
                raise SystemExit(f"error: {src} is missing; the stage did not write it")
            else:
                _copy(R.ROOT / src, R.ROOT / dest / name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("recipes", nargs="+", help=f"{', '.join(R.NAMES)}, all, or a recipe file")
    p.add_argument("--dry-run", action="store_true", help="print the commands and copies, run nothing")
    p.add_argument("--work", default="outputs/checkpoints", help="where the stages' outputs go")
    p.add_argument("--ship", default=str(R.SHIPPED), help="the folder the models ship into (default: the package's)")
    p.add_argument("--model", action="append", help="only this model of a recipe (repeatable; e.g. dtb-cnn)")
    p.add_argument("--launch", choices=("python", "accelerate"), default=None,
                   help="run every trainer stage this way (default: each stage's own, python for most)")
    p.add_argument("--accelerate-args", default=" ".join(R.ACCELERATE_ARGS),
                   help="what `accelerate launch` gets before the script (default: %(default)s)")
    args = p.parse_args(argv)

    names = [n for r in args.recipes for n in (R.NAMES if r == "all" else (r,))]
    work, ship_root = (_from_root(d) for d in (args.work, args.ship))
    try:
        recipes = [R.load_recipe(n) for n in names]
        if args.dry_run and Path.cwd().resolve() != R.ROOT:
            print(f"cd {shlex.quote(str(R.ROOT))}")  # the printed paths are the repository root's
        for recipe in recipes:
            reproduce(recipe, work, ship_root, args.dry_run, args.launch, shlex.split(args.accelerate_args),
                      args.model)
    except (FileNotFoundError, R.RecipeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())

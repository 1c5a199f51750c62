"""Reproduction recipes (training/recipes/*.yaml, vdiffdeblur.trainer.recipes, scripts/reproduce.py): the shipped
models' records match their recipes stage by stage, and the script runs, resumes and ships a recipe."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import load_script

from vdiffdeblur.data.synthetic import EVAL_PHOTOS
from vdiffdeblur.trainer import recipes as R

RECIPES = {name: R.load_recipe(name) for name in R.NAMES}
TRAINER_STAGES = [(r.name, m.name, s.name) for r in RECIPES.values() for m in r.models for s in r.stages
                  if s.script in R.trainers()]
MODELS = [(r.name, m.name) for r in RECIPES.values() for m in r.models]


def _get(recipe: str, model: str, stage: str | None = None):
    r = RECIPES[recipe]
    m = next(m for m in r.models if m.name == model)
    return (r, m, r.stage(stage)) if stage else (r, m)


@pytest.mark.parametrize("recipe,model,stage", TRAINER_STAGES, ids=["-".join(t) for t in TRAINER_STAGES])
def test_the_shipped_record_of_every_stage_is_what_its_recipe_parses_to(recipe, model, stage):
    """The options a shipped stage recorded are its recipe's config + overrides through the trainer's own
    config_cli, but for where it wrote (R.PATH_OPTIONS) and the path it started from (set or not must match)."""
    r, m, s = _get(recipe, model, stage)
    record = f"{s.name}_{R.trainers()[s.script].record}"
    recorded = R.recorded_options(s, R.SHIPPED / m.ship_to, record)
    assert R.differences(s, R.expected_options(r, m, s), recorded) == {}
    photos = json.loads((R.SHIPPED / m.ship_to / record).read_text())["photos"]  # what it trained on
    assert photos and not {str(p).removeprefix("builtin:") for p in photos} & set(EVAL_PHOTOS)


@pytest.mark.parametrize("recipe,model", MODELS, ids=["-".join(t) for t in MODELS])
def test_every_file_a_recipe_ships_is_there_and_no_stale_record(recipe, model):
    r, m = _get(recipe, model)
    folder = R.SHIPPED / m.ship_to
    names = R.shipped_names(r)
    assert not [n for n in names if not (folder / n).is_file()]
    stages = tuple(f"{s.name}_" for s in r.stages)
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(stages)) == sorted(
        n for n in names if n.startswith(stages))
    by_source = {}
    for name, source in names.items():  # one output file shipped under two names: the same bytes
        by_source.setdefault(source, []).append(folder / name)
    for copies in by_source.values():
        assert all(filecmp.cmp(copies[0], c, shallow=False) for c in copies[1:])


def test_the_shipped_networks_load_from_their_folders():
    from vdiffdeblur.methods.fit.initialisation import SHIPPED_INIT, maml_adaptation
    from vdiffdeblur.models.dtb import DTBNet

    for folder in ("dtb", "dtb/cnn"):
        assert isinstance(DTBNet.from_pretrained(R.SHIPPED / folder, use_safetensors=True), DTBNet)
    r, m = _get("fit", "fit_maml")
    assert SHIPPED_INIT == R.SHIPPED / m.ship_to
    meta = R.expected_options(r, m, r.stages[-1])["meta"]  # read from the meta_train.json next to the weights
    assert maml_adaptation("maml") == (meta["inner_lr"], meta["inner_steps"])


def test_to_argv_is_read_back_by_the_trainers_command_line():
    from vdiffdeblur.trainer.dtb import dtb_cli

    options = {"seed": 4, "residual": False, "source_zoom": [0.5, 1.0], "photos": ["astronaut", "rocket"],
               "checkpoints_total_limit": None, "learning_rate": 1e-4}
    argv = R.to_argv(options)
    assert argv[:4] == ["--seed", "4", "--residual", "false"]
    cfg = dtb_cli().parse(argv)
    assert (cfg.seed, cfg.residual, cfg.source_zoom, cfg.photos) == (4, False, (0.5, 1.0), ("astronaut", "rocket"))
    assert cfg.checkpoints_total_limit is None and cfg.learning_rate == 1e-4


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("body,message", [
    ("models: {a: {ship_to: a}}\nstages:\n  - {name: s1, script: training/train_dtb.py, from: s2}\n"
     "  - {name: s2, script: training/train_dtb.py}\n", "from s2, which is no earlier stage"),
    ("models: {a: {ship_to: a}}\nstages:\n  - {name: s1, script: training/train_dtb.py, sed: 1}\n",
     "unknown key"),
    ("models: {a: {ship_to: a}}\nstages:\n  - {name: s1, script: training/train_vae.py, config: small_vae.yaml,"
     " records: [summary.json], args: [--x]}\n", "not args"),
    ("models: {a: {ship_to: a}}\nstages:\n  - {name: s1, script: scripts/make_small_pipeline.py, config: x.yaml,"
     " done: [model_index.json]}\n", "not a trainer"),
    ("models: {a: {ship_to: a}}\nstages:\n  - {name: s1, script: training/train_dtb.py}\n",
     "nothing marks it complete"),
])
def test_recipe_mistakes_are_one_line_errors(tmp_path, body, message):
    with pytest.raises(R.RecipeError, match=message):
        R.load_recipe(_write(tmp_path / "bad.yaml", body))


def test_dry_run_prints_every_stage_command_and_copy(capsys):
    reproduce = load_script("reproduce")
    assert reproduce.main(["fit", "--dry-run", "--work", str(R.ROOT / "outputs" / "nowhere")]) == 0
    lines = capsys.readouterr().out.splitlines()
    runs = [ln for ln in lines if "training/meta_train.py" in ln]
    assert len(runs) == 6 and all(ln.startswith("OMP_NUM_THREADS=1 ") for ln in runs)
    assert "--config training/configs/fit_maml.yaml --output_dir outputs/nowhere/fit_maml/stage1" in runs[0]
    assert runs[1].endswith("--seed 1 --output_dir outputs/nowhere/fit_maml/stage2 --init "
                            "outputs/nowhere/fit_maml/stage1")
    assert ("cp outputs/nowhere/fit_maml/stage3/meta_train.json vdiffdeblur/checkpoints/fit_maml/"
            "stage3_meta_train.json") in lines
    assert reproduce.main(["diffusion", "--dry-run", "--launch", "accelerate", "--work", str(R.ROOT / "w")]) == 0
    out = capsys.readouterr().out
    assert out.count("accelerate launch --num_processes 1") == 3  # the VAE too; make_small_pipeline is no trainer
    assert "scripts/ship_diffusion_model.py --model w/diffusion/stage2 --vae-dir w/diffusion/vae" in out


TINY = dict(channels=8, feature_channels=4, num_res_blocks=1, train_batch_size=1, clip_len=3, crop=24, num_clips=1,
            frames_per_clip=4, synth_width=40, synth_height=32, max_train_steps=2, checkpointing_steps=0,
            validation_steps=0, num_validation_clips=0, photos=["astronaut"], report_to="none", num_threads=1,
            mixed_precision="no")


def _tiny_recipe(path: Path, seed2: int = 1) -> Path:
    stage = {"script": "training/train_dtb.py", "records": ["training_config.json", "training_log.json"]}
    recipe = {"models": {"tiny": {"ship_to": "tiny", "overrides": {"variant": "cnn"}}},
              "ship": {"files": ["config.json", "diffusion_pytorch_model.safetensors"]},
              "stages": [{**stage, "name": "stage1", "overrides": TINY},
                         {**stage, "name": "stage2", "from": "stage1", "overrides": {**TINY, "seed": seed2}}]}
    return _write(path, json.dumps(recipe))  # JSON is YAML


def test_reproduce_runs_skips_what_is_complete_ships_uniform_names_and_refuses_other_options(tmp_path, capsys):
    reproduce = load_script("reproduce")
    recipe = _tiny_recipe(tmp_path / "tiny.yaml")
    argv = [str(recipe), "--work", str(tmp_path / "work"), "--ship", str(tmp_path / "ship")]
    assert reproduce.main(argv) == 0, capsys.readouterr().err
    ship = tmp_path / "ship" / "tiny"
    assert sorted(p.name for p in ship.iterdir()) == sorted(
        ["config.json", "diffusion_pytorch_model.safetensors", "stage1_training_config.json",
         "stage1_training_log.json", "stage2_training_config.json", "stage2_training_log.json"])
    second = json.loads((ship / "stage2_training_config.json").read_text())
    assert second["seed"] == 1 and second["variant"] == "cnn" and second["init_from"].endswith("tiny/stage1")
    capsys.readouterr()
    assert reproduce.main(argv) == 0  # all complete: nothing runs, the copies are made again
    out = capsys.readouterr().out
    assert "stage1: complete" in out and "stage2: complete" in out and "train_dtb.py" not in out
    _tiny_recipe(recipe, seed2=2)
    assert reproduce.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other options: seed 2 (recipe) != 1" in err


def test_a_stopped_stage_resumes_from_its_checkpoint(tmp_path, capsys):
    reproduce = load_script("reproduce")
    recipe = _tiny_recipe(tmp_path / "tiny.yaml")
    (tmp_path / "work" / "tiny" / "stage1" / "checkpoint-1").mkdir(parents=True)  # a run stopped after step 1
    assert reproduce.main([str(recipe), "--dry-run", "--work", str(tmp_path / "work")]) == 0
    first, second = [ln for ln in capsys.readouterr().out.splitlines() if "train_dtb.py" in ln]
    assert first.endswith("--resume_from_checkpoint latest") and "--resume_from_checkpoint" not in second


def test_a_stage_with_no_checkpoint_goes_on_from_its_carried_one(tmp_path, capsys):
    """A long run stopped in an earlier session is committed as a `carried` checkpoint: a fresh work folder starts
    from a copy of it (log included) and ends where the uninterrupted run ends."""
    from safetensors.torch import load_file

    reproduce = load_script("reproduce")
    stage = {"script": "training/train_dtb.py", "records": ["training_config.json", "training_log.json"],
             "name": "stage1", "overrides": {**TINY, "checkpointing_steps": 1, "checkpoints_total_limit": None}}
    recipe = {"models": {"tiny": {"ship_to": "tiny", "overrides": {"variant": "cnn"}}},
              "ship": {"files": ["config.json", "diffusion_pytorch_model.safetensors"]}, "stages": [stage]}
    whole = _write(tmp_path / "whole.yaml", json.dumps(recipe))
    assert reproduce.main([str(whole), "--work", str(tmp_path / "a"), "--ship", str(tmp_path / "ship_a")]) == 0
    ran = tmp_path / "a" / "tiny" / "stage1"
    carried = tmp_path / "carried"
    carried.mkdir()
    shutil.copytree(ran / "checkpoint-1", carried / "checkpoint-1")
    log = [e for e in json.loads((ran / "training_log.json").read_text()) if e["step"] <= 1]
    (carried / "training_log.json").write_text(json.dumps(log))
    cont = _write(tmp_path / "cont.yaml", json.dumps({**recipe, "stages": [{**stage, "carried": str(carried)}]}))
    capsys.readouterr()
    assert reproduce.main([str(cont), "--work", str(tmp_path / "b"), "--ship", str(tmp_path / "ship_b")]) == 0
    out = capsys.readouterr().out
    assert "going on from the carried" in out and "--resume_from_checkpoint latest" in out
    a, b = (load_file(tmp_path / d / "tiny" / "diffusion_pytorch_model.safetensors") for d in ("ship_a", "ship_b"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert (carried / "checkpoint-1").is_dir()  # the committed copy is only read
    with pytest.raises(R.RecipeError, match="holds no checkpoint"):
        R.load_recipe(_write(tmp_path / "bad.yaml", json.dumps({**recipe, "stages": [
            {**stage, "carried": str(tmp_path / "nothing")}]})))


def test_the_next_diffusion_recipe_parses_and_gives_the_transfer_model_its_prior():
    recipe = R.load_recipe("diffusion_f2c8")
    init, stage1, stage2 = recipe.stages
    assert "mid_attention" in init.args
    vae = init.args[init.args.index("--vae") + 1]
    assert vae == "training/carried/diffusion_vae_f2c8_cool3800/vae" and (R.ROOT / vae / "config.json").is_file()
    plain, refining = recipe.models
    for stage in (stage1, stage2):
        cli = R.trainers()[stage.script].cli()
        for model, prior in ((plain, None), (refining, "transfer")):
            argv = R.trainer_argv(recipe, model, stage, Path("w"))
            cfg = cli.parse(argv)
            assert cfg.prior_method == prior and cfg.layered_fraction == 0.3
    assert cli.parse(R.trainer_argv(recipe, plain, stage2, Path("w"))).max_train_steps == 6000

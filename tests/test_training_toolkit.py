"""The training toolkit every trainer shares (vdiffdeblur.trainer.options, vdiffdeblur.trainer.toolkit): one
command line (YAML + ``--name value``) for any config dataclass, the held-out-photo check, the training log on
resume."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from vdiffdeblur.data.synthetic import EVAL_PHOTOS, TRAIN_PHOTOS
from vdiffdeblur.trainer.config import DiffusionTrainConfig, stage_cli
from vdiffdeblur.trainer.dtb import DTBTrainConfig, dtb_cli
from vdiffdeblur.trainer.maml import MetaConfig, MetaTrainConfig, maml_cli
from vdiffdeblur.trainer.options import ConfigError
from vdiffdeblur.trainer.toolkit import check_training_photos, read_history, write_history
from vdiffdeblur.trainer.vae import VAETrainConfig, vae_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "training" / "configs"
SHIPPED_MAML = ROOT / "vdiffdeblur" / "checkpoints" / "fit_maml"
CLIS = {"stage1": lambda: stage_cli(1), "stage2": lambda: stage_cli(2), "vae": vae_cli, "dtb": dtb_cli,
        "maml": maml_cli}


def _flags(parser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings if o.startswith("--")}


def _json(value):
    return json.loads(json.dumps(value))


@pytest.mark.parametrize("name", list(CLIS))
def test_every_field_is_a_flag_and_no_flags_mean_the_defaults(name):
    cli = CLIS[name]()
    cls = cli.cls
    own = {f.name for f in fields(cls) if f.name != "meta"} - {"stage"}
    nested = {f.name for f in fields(MetaConfig)} if cls is MetaTrainConfig else set()
    assert _flags(cli.parser) == {"--help", "--config"} | {f"--{n}" for n in own | nested}
    if cls is DiffusionTrainConfig:
        assert asdict(cli.parse([])) == asdict(DiffusionTrainConfig(stage=int(name[-1])))
    else:
        assert asdict(cli.parse([])) == asdict(cls())


@pytest.mark.parametrize("name", list(CLIS))
def test_unknown_options_fail_with_one_line_naming_them(name, tmp_path):
    cli = CLIS[name]()
    with pytest.raises(ConfigError,
                       match=r"unknown .*option\(s\) on the command line: --seeed \(did you mean --seed\?\)"):
        cli.parse(["--seeed", "3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\nsed: 2\n")
    with pytest.raises(ConfigError, match=r"unknown .*option\(s\) in .*bad.yaml: sed \(did you mean seed\?\)"):
        cli.parse(["--config", str(bad)])
    with pytest.raises(ConfigError, match="invalid int value"):
        cli.parse(["--seed", "x"])


@pytest.mark.parametrize("script", ["stage1", "train_vae", "train_dtb", "meta_train"])
def test_scripts_print_a_bad_option_as_one_line_and_exit_2(script, capsys):
    from vdiffdeblur.trainer import cli

    entry = {"stage1": lambda a: cli.main(a, stage=1), "train_vae": cli.vae_main, "train_dtb": cli.dtb_main,
             "meta_train": cli.maml_main}[script]
    assert entry(["--seed", "0", "--no_such_option", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown") and "--no_such_option" in err and len(err.splitlines()) == 1


def test_command_line_none_clears_what_the_yaml_set(tmp_path):
    cfg = dtb_cli().parse(["--config", str(CONFIGS / "dtb.yaml"), "--checkpoints_total_limit", "none",
                           "--report_to", "none"])
    assert cfg.checkpoints_total_limit is None and cfg.report_to is None
    assert dtb_cli().parse(["--config", str(CONFIGS / "dtb.yaml")]).checkpoints_total_limit == 1
    vae = tmp_path / "vae.yaml"
    vae.write_text("checkpoints_total_limit: 3\nresume_from_checkpoint: latest\n")
    cfg = vae_cli().parse(["--config", str(vae), "--checkpoints_total_limit", "null",
                           "--resume_from_checkpoint", "none"])
    assert cfg.checkpoints_total_limit is None and cfg.resume_from_checkpoint is None


def test_tuples_booleans_and_yaml_strings_are_read_like_the_command_line(tmp_path):
    cfg = dtb_cli().parse(["--source_zoom", "0.5", "1", "--photos", "astronaut", "rocket", "--residual", "false",
                           "--augment"])
    assert cfg.source_zoom == (0.5, 1.0) and cfg.photos == ("astronaut", "rocket")
    assert cfg.residual is False and cfg.augment is True
    with pytest.raises(ConfigError, match="expected 2 arguments"):
        dtb_cli().parse(["--source_zoom", "0.5"])
    yml = tmp_path / "c.yaml"
    yml.write_text("learning_rate: 1e-4\nsource_zoom: [1, 1]\nresidual: 'no'\n")  # YAML reads 1e-4 as a string
    cfg = dtb_cli().parse(["--config", str(yml)])
    assert cfg.learning_rate == 1e-4 and cfg.source_zoom == (1.0, 1.0) and cfg.residual is False
    vae = vae_cli().parse(["--eval_size", "24", "16", "--scale_range", "0.5", "1"])
    assert vae.eval_size == (24, 16) and vae.scale_range == (0.5, 1.0)


def test_stage_sections_and_the_fixed_stage():
    s1 = stage_cli(1).parse(["--config", str(CONFIGS / "tiny.yaml")])
    s2 = stage_cli(2).parse(["--config", str(CONFIGS / "tiny.yaml")])
    assert (s1.stage, s1.output_dir, s2.stage, s2.pretrained) == (1, "runs/tiny/stage1", 2, "runs/tiny/stage1")
    with pytest.raises(ConfigError, match="--stage"):
        stage_cli(1).parse(["--stage", "2"])


def test_meta_training_reads_yaml_flat_or_under_meta(tmp_path):
    flat, nested = tmp_path / "flat.yaml", tmp_path / "nested.yaml"
    flat.write_text("steps: 7\ninner_lr: 0.01\nscales: [0.5, 1]\nfirst_order: true\n")
    nested.write_text("steps: 7\nmeta:\n  inner_lr: 0.01\n  scales: [0.5, 1]\n  first_order: true\n")
    a, b = (maml_cli().parse(["--config", str(p)]) for p in (flat, nested))
    assert asdict(a) == asdict(b)
    assert a.steps == 7 and a.meta.inner_lr == 0.01 and a.meta.scales == (0.5, 1.0) and a.meta.first_order
    c = maml_cli().parse(["--config", str(nested), "--inner_lr", "0.02", "--first_order", "false"])
    assert c.meta.inner_lr == 0.02 and not c.meta.first_order and c.meta.scales == (0.5, 1.0)
    twice = tmp_path / "twice.yaml"
    twice.write_text("inner_lr: 0.1\nmeta:\n  inner_lr: 0.2\n")
    with pytest.raises(ConfigError, match="inner_lr given both under meta"):
        maml_cli().parse(["--config", str(twice)])
    # a record's "config" (meta_train.json) is a valid YAML config as it is
    record = json.loads((SHIPPED_MAML / "meta_train.json").read_text())["config"]
    (tmp_path / "record.yaml").write_text(json.dumps(record))
    parsed = _json(asdict(maml_cli().parse(["--config", str(tmp_path / "record.yaml")])))
    # an option added after the record was written parses to its default; every recorded value is kept
    expected = _json(asdict(maml_cli().parse([])))
    for key, value in record.items():
        expected[key] = expected[key] | value if isinstance(value, dict) else value
    assert parsed == expected and expected["meta"]["layered_fraction"] == 0


def test_a_config_inherits_its_base_key_by_key(tmp_path):
    """``base:`` names a file next to the config; the base's options (its own base's first), then the file's."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text("seed: 1\nsteps: 5\nmeta:\n  inner_lr: 0.01\n  patch_size: 32\n")
    (tmp_path / "sub" / "mid.yaml").write_text("base: ../root.yaml\nsteps: 6\n")
    (tmp_path / "sub" / "top.yaml").write_text("base: mid.yaml\nmeta:\n  inner_lr: 0.02\n")
    cfg = maml_cli().parse(["--config", str(tmp_path / "sub" / "top.yaml"), "--seed", "3"])
    assert (cfg.seed, cfg.steps, cfg.meta.inner_lr, cfg.meta.patch_size) == (3, 6, 0.02, 32)
    # each file's section applies on top of its own top level; the file's options on top of the base's
    (tmp_path / "child.yaml").write_text(f"base: {CONFIGS / 'tiny.yaml'}\nmax_train_steps: 7\n"
                                         "stage2:\n  output_dir: elsewhere\n")
    s1, s2 = (stage_cli(n).parse(["--config", str(tmp_path / "child.yaml")]) for n in (1, 2))
    assert (s1.output_dir, s1.max_train_steps, s1.learning_rate) == ("runs/tiny/stage1", 7, 1e-3)
    assert (s2.output_dir, s2.pretrained) == ("elsewhere", "runs/tiny/stage1")
    # a base's mistakes name the base
    (tmp_path / "typo.yaml").write_text("sed: 1\n")
    (tmp_path / "uses_typo.yaml").write_text("base: typo.yaml\n")
    with pytest.raises(ConfigError, match=r"in .*typo.yaml: sed"):
        maml_cli().parse(["--config", str(tmp_path / "uses_typo.yaml")])


@pytest.mark.parametrize("files", [{"a.yaml": "base: a.yaml\n"},
                                   {"a.yaml": "base: b.yaml\nseed: 1\n", "b.yaml": "base: c.yaml\n",
                                    "c.yaml": "base: b.yaml\n"}])
def test_a_cycle_of_base_configs_is_a_one_line_error(tmp_path, files):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match="base configs form a cycle") as e:
        dtb_cli().parse(["--config", str(tmp_path / "a.yaml")])
    assert "\n" not in str(e.value)


def test_a_missing_or_malformed_base_names_the_config(tmp_path):
    (tmp_path / "a.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"a.yaml: base config nowhere.yaml not found"):
        dtb_cli().parse(["--config", str(tmp_path / "a.yaml")])
    (tmp_path / "b.yaml").write_text("base: [x.yaml]\n")
    with pytest.raises(ConfigError, match="base must name a YAML file"):
        dtb_cli().parse(["--config", str(tmp_path / "b.yaml")])


#: configs rewritten on a base, as they were before (self-contained, comments left out)
SELF_CONTAINED = {"dtb_fur_finetune.yaml": (dtb_cli, """
seed: 7
variant: strcnn_dtb
train_data: synthetic
photos: [astronaut, rocket, hubble_deep_field, retina, immunohistochemistry, camera, brick, grass, gravel, moon,
         dead_leaves, dead_leaves, dead_leaves, dead_leaves, dead_leaves,
         dead_leaves, dead_leaves, dead_leaves, dead_leaves, dead_leaves]
num_clips: 384
frames_per_clip: 16
still_fraction: 0.1
augment: true
source_zoom: [0.55, 1.0]
synth_width: 192
synth_height: 144
clip_len: 12
crop: 96
fur_fraction: 0.5
train_batch_size: 2
max_train_steps: 1500
learning_rate: 1.0e-4
lr_decay_rate: 0.9
lr_decay_steps: 500
weight_decay: 1.0e-5
loss: log_mse
finetune_steps: 0
loss_eps: 1.0e-5
mixed_precision: bf16
channels_last: true
num_threads: 1
checkpointing_steps: 500
checkpoints_total_limit: 1
validation_steps: 500
num_validation_clips: 2
validation_frames: 24
report_to: auto
""")}


@pytest.mark.parametrize("name", list(SELF_CONTAINED))
def test_configs_rewritten_on_a_base_parse_as_before(name, tmp_path):
    cli, text = SELF_CONTAINED[name]
    assert "base:" in (CONFIGS / name).read_text()
    (tmp_path / name).write_text(text)
    now, before = (cli().parse(["--config", str(path)]) for path in (CONFIGS / name, tmp_path / name))
    assert asdict(now) == asdict(before)


def test_every_trainer_refuses_evaluation_photos(tmp_path):
    from vdiffdeblur.trainer.dtb import build_train_dataset
    from vdiffdeblur.trainer.maml import PhotoTasks

    photos = ("astronaut", f"builtin:{EVAL_PHOTOS[0]}")
    check_training_photos(TRAIN_PHOTOS)
    check_training_photos(["builtin:astronaut", Path("some/photo.png")])
    for attempt in (lambda: check_training_photos(photos),
                    lambda: DiffusionTrainConfig(photos=photos),
                    lambda: VAETrainConfig(photos=photos),
                    lambda: build_train_dataset(DTBTrainConfig(photos=photos), 4),
                    lambda: PhotoTasks(photos, MetaConfig(patch_size=32, scales=(0.5,)))):
        with pytest.raises(ValueError, match=f"photos {EVAL_PHOTOS[0]} are kept for evaluation"):
            attempt()


def test_history_on_resume(tmp_path):
    log = tmp_path / "training_log.json"
    assert read_history(log, 5) == []
    write_history(log, [{"step": s, "loss": float(s)} for s in (2, 4, 6)])
    assert [h["step"] for h in read_history(log, 4)] == [2, 4]
    assert read_history(log, 0) == []  # a fresh run starts a new log
    assert json.loads(log.read_text())[-1] == {"step": 6, "loss": 6.0}

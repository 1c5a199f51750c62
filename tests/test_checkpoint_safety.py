"""Crash-safe training checkpoints (vdiffdeblur.trainer.checkpoints) for every trainer.

The kill tests run each trainer's command line (stage 1, stage 2, VAE, DTB, MAML) in a child process forked by one
driver process (written to a temporary folder, importing torch and the trainers once), which SIGKILLs itself at a
chosen point: while a checkpoint's files are being written, after Accelerate has written them but before the
checkpoint is finished, or in the middle of an optimisation step. Resuming with `--resume_from_checkpoint latest`
after every kill must end at the same weights, bit for bit, as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vdiffdeblur.trainer.checkpoints import (
    MANIFEST_FILE,
    CorruptCheckpointError,
    list_checkpoints,
    load_resume,
    prune_checkpoints,
    remove_partial_checkpoints,
    resolve_resume,
    save_checkpoint,
    temp_checkpoint_dir,
    verify_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = ROOT / "training" / "configs" / "tiny.yaml"
CKPT_LOGGER = "vdiffdeblur.trainer.checkpoints"


# ============================================================================ the library, with a stand-in Accelerator
class FakeAccelerator:
    """What `save_checkpoint` uses of an Accelerator; `save_state` writes a model and an optimizer file."""

    is_main_process = True

    def __init__(self, value: float = 0.0, during_save=None):
        self.value, self.during_save, self.saves = value, during_save, []

    def wait_for_everyone(self):
        pass

    def save_state(self, folder):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"w": torch.full((4, 4), self.value)}, folder / "model.safetensors")
        if self.during_save is not None:
            self.during_save(folder)
        torch.save({"state": {}, "lr": self.value}, folder / "optimizer.bin")
        self.saves.append(folder)


def _loader(record: list):
    def load(path: Path):
        w = load_file(str(path / "model.safetensors"))["w"]
        torch.load(path / "optimizer.bin", weights_only=True)
        record.append((path.name, float(w[0, 0])))
    return load


def _save_steps(out: Path, steps, limit=None):
    for s in steps:
        save_checkpoint(FakeAccelerator(float(s)), out, s, limit)


def test_a_checkpoint_appears_complete_in_one_rename_with_a_manifest(tmp_path):
    seen = {}

    def during(folder):
        seen["folder"] = folder.name
        seen["visible"] = [p.name for p in list_checkpoints(tmp_path)]

    final = save_checkpoint(FakeAccelerator(1.0, during), tmp_path, 7, None)
    assert seen == {"folder": ".checkpoint-7.partial", "visible": []}  # written under the temporary name
    assert final == tmp_path / "checkpoint-7" and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-7"]
    manifest = json.loads((final / MANIFEST_FILE).read_text())
    assert manifest["step"] == 7 and set(manifest["files"]) == {"model.safetensors", "optimizer.bin"}
    assert verify_checkpoint(final) is None
    # the same step written again (after resuming from an older checkpoint) replaces it
    save_checkpoint(FakeAccelerator(2.0), tmp_path, 7, None)
    assert float(load_file(str(final / "model.safetensors"))["w"][0, 0]) == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-7"]


def test_a_half_written_checkpoint_is_ignored_by_latest_and_removed_by_the_next_run(tmp_path, caplog):
    _save_steps(tmp_path, [1])
    half = temp_checkpoint_dir(tmp_path, 2)
    half.mkdir()
    save_file({"w": torch.zeros(4, 4)}, half / "model.safetensors")  # killed before optimizer.bin
    # names that are not this tool's temporary checkpoints are never touched
    others = ["checkpoint-2.partial-mine", ".checkpoint-x.partial", "notes.partial", ".checkpoint-3.partial.bak",
              "backup-checkpoint-2"]
    for name in others:
        (tmp_path / name).mkdir()
    assert resolve_resume("latest", tmp_path) == tmp_path / "checkpoint-1"
    loaded = []
    assert load_resume("latest", tmp_path, _loader(loaded)) == tmp_path / "checkpoint-1"
    assert loaded == [("checkpoint-1", 1.0)]
    with caplog.at_level(logging.WARNING, logger=CKPT_LOGGER):
        assert remove_partial_checkpoints(tmp_path) == [half]
    assert ".checkpoint-2.partial" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others + ["checkpoint-1"])
    half.mkdir()
    with pytest.raises(ValueError, match="not a checkpoint"):  # nor can a temporary folder be resumed from
        resolve_resume(str(half), tmp_path)
    # killed between the two renames of a replace: the moved-aside complete copy comes back
    os.rename(tmp_path / "checkpoint-1", tmp_path / ".checkpoint-1.old")
    remove_partial_checkpoints(tmp_path)
    assert (tmp_path / "checkpoint-1").is_dir() and not (tmp_path / ".checkpoint-1.old").exists()
    assert verify_checkpoint(tmp_path / "checkpoint-1") is None


def test_a_corrupt_newest_checkpoint_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    _save_steps(tmp_path, [1, 2, 3])
    newest = tmp_path / "checkpoint-3" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:-10])  # truncated
    loaded = []
    with caplog.at_level(logging.WARNING, logger=CKPT_LOGGER):
        assert load_resume("latest", tmp_path, _loader(loaded)) == tmp_path / "checkpoint-2"
    assert loaded == [("checkpoint-2", 2.0)]
    assert "checkpoint-3" in caplog.text and "model.safetensors" in caplog.text
    # a missing model file too; the next older one is used
    (tmp_path / "checkpoint-2" / "model.safetensors").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=CKPT_LOGGER):
        assert load_resume("latest", tmp_path, _loader(loaded)) == tmp_path / "checkpoint-1"
    assert "checkpoint-3" in caplog.text and "checkpoint-2" in caplog.text and "missing" in caplog.text
    # named explicitly, a corrupt checkpoint is an error naming it
    with pytest.raises(CorruptCheckpointError, match="checkpoint-3"):
        load_resume("checkpoint-3", tmp_path, _loader(loaded))
    # none left: a new run, with a warning
    (tmp_path / "checkpoint-1" / "optimizer.bin").write_bytes(b"PK\x03\x04 cut short")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=CKPT_LOGGER):
        assert load_resume("latest", tmp_path, _loader(loaded)) is None
    assert "starting a new run" in caplog.text and "checkpoint-1" in caplog.text
    assert len(loaded) == 2  # nothing corrupt was ever handed to the loader


def test_checks_without_a_manifest_and_failed_loads(tmp_path, caplog):
    _save_steps(tmp_path, [1, 2])
    for step in (1, 2):
        (tmp_path / f"checkpoint-{step}" / MANIFEST_FILE).unlink()
    f = tmp_path / "checkpoint-2" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-3])
    assert "model.safetensors" in verify_checkpoint(tmp_path / "checkpoint-2")  # truncation seen from the header
    assert verify_checkpoint(tmp_path / "checkpoint-1") is None
    # a checkpoint whose load raises is skipped too...
    (tmp_path / "checkpoint-2").rename(tmp_path / "checkpoint-0")
    _save_steps(tmp_path, [3])
    calls = []

    def load(path):
        calls.append(path.name)
        if path.name == "checkpoint-3":
            raise RuntimeError("size mismatch")

    with caplog.at_level(logging.WARNING, logger=CKPT_LOGGER):
        assert load_resume("latest", tmp_path, load) == tmp_path / "checkpoint-1"
    assert calls == ["checkpoint-3", "checkpoint-1"] and "size mismatch" in caplog.text
    # ...but when nothing loads after a load failed part-way, starting afresh could start from half-loaded state
    with pytest.raises(CorruptCheckpointError, match="checkpoint-3"):
        load_resume("latest", tmp_path, lambda p: (_ for _ in ()).throw(RuntimeError("bad")))


def test_pruning_waits_until_the_new_checkpoint_is_complete(tmp_path):
    _save_steps(tmp_path, [1, 2], limit=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2"]
    seen = []

    def crash(folder):
        seen.append([p.name for p in list_checkpoints(tmp_path)])
        raise KeyboardInterrupt  # the run dies while checkpoint-3 is being written

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(FakeAccelerator(3.0, crash), tmp_path, 3, 1)
    assert seen == [["checkpoint-2"]]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2"]  # the last good one is still there
    assert verify_checkpoint(tmp_path / "checkpoint-2") is None
    save_checkpoint(FakeAccelerator(3.0), tmp_path, 3, 1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-3"]
    assert not temp_checkpoint_dir(tmp_path, 3).exists()
    # the one just written is kept even when an older run left a higher step
    save_checkpoint(FakeAccelerator(9.0), tmp_path, 9, None)
    save_checkpoint(FakeAccelerator(4.0), tmp_path, 4, 1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-4"]
    assert prune_checkpoints(tmp_path, None) == [] and prune_checkpoints(tmp_path, 0) == []


def test_an_explicitly_named_corrupt_checkpoint_is_a_one_line_error(tmp_path, capsys):
    from vdiffdeblur.trainer.cli import vae_main

    out = tmp_path / "vae"
    assert vae_main(_vae_argv(out, steps=2)) == 0
    model = out / "checkpoint-1" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])
    capsys.readouterr()
    assert vae_main(_vae_argv(out, steps=2) + ["--resume_from_checkpoint", str(out / "checkpoint-1")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint") and "checkpoint-1" in err and "model.safetensors" in err
    assert len(err.splitlines()) == 1


def test_a_real_trainer_falls_back_past_a_corrupt_newest_checkpoint(tmp_path, caplog):
    """DTB: a run whose newest checkpoint lost its model file resumes from the one before and still ends at the
    uninterrupted run's weights."""
    from vdiffdeblur.trainer.dtb import DTBTrainConfig, train

    def cfg(out, **kw):
        base = dict(output_dir=str(out), channels=8, feature_channels=4, num_res_blocks=1, train_batch_size=2,
                    clip_len=3, crop=24, num_clips=2, frames_per_clip=4, synth_width=40, synth_height=32,
                    max_train_steps=4, checkpointing_steps=1, checkpoints_total_limit=None, validation_steps=0,
                    num_validation_clips=0, learning_rate=1e-3, photos=("astronaut", "rocket"), report_to=None,
                    num_threads=1, mixed_precision="no")
        return DTBTrainConfig(**{**base, **kw})

    train(cfg(tmp_path / "straight"))
    train(cfg(tmp_path / "resumed", max_train_steps=3))
    (tmp_path / "resumed" / "checkpoint-3" / "model.safetensors").unlink()
    with caplog.at_level(logging.WARNING, logger=CKPT_LOGGER):
        train(cfg(tmp_path / "resumed", resume_from_checkpoint="latest"))
    assert "checkpoint-3" in caplog.text and "model.safetensors is missing" in caplog.text
    assert _final_weights(tmp_path / "straight", tmp_path / "resumed") == 0.0


# ============================================================================ kill tests
DRIVER = textwrap.dedent('''
    """Forks one child per request (a JSON line on stdin): the child runs a trainer's command line, SIGKILLing
    itself at the requested point; the reply (a JSON line on stdout) is how it ended."""
    import importlib.util, json, os, signal, sys, traceback

    ROOT = sys.argv[1]
    sys.path.insert(0, ROOT)
    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    import accelerate
    from vdiffdeblur.trainer.cli import main as stage_main, vae_main
    import vdiffdeblur.trainer.loop, vdiffdeblur.trainer.vae, vdiffdeblur.trainer.dtb, vdiffdeblur.trainer.maml
    # what the trainers import lazily, imported once here rather than in every child
    import accelerate.utils, diffusers.optimization, diffusers.training_utils, vdiffdeblur.metrics
    from diffusers import AutoencoderKL, DDPMScheduler, UNet3DConditionModel
    from vdiffdeblur.models import fit_unet, perceptual, blur_encoder
    from vdiffdeblur.pipelines import DeblurVideoPipeline, tiny
    from vdiffdeblur.data.synthetic import load_photo
    load_photo("camera")


    def script(name):
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "training", name + ".py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.main


    ENTRY = {"stage1": lambda argv: stage_main(argv, stage=1), "stage2": lambda argv: stage_main(argv, stage=2),
             "vae": vae_main, "dtb": script("train_dtb"), "maml": script("meta_train")}


    def die():
        os.kill(os.getpid(), signal.SIGKILL)


    def install(at, n):
        if at == "optimizer_step":  # the n-th optimizer step of this process, before it changes any weight
            count = [0]

            def hook(opt, args, kwargs):
                count[0] += 1
                if count[0] == n:
                    die()
            register_optimizer_step_pre_hook(hook)
            return
        original, count, inside = accelerate.Accelerator.save_state, [0], [False]

        def save_state(self, *args, **kwargs):
            count[0] += 1
            inside[0] = count[0] == n
            out = original(self, *args, **kwargs)
            if inside[0] and at == "checkpoint_written":  # Accelerate is done; the trainer's checkpoint is not
                die()
            return out
        accelerate.Accelerator.save_state = save_state
        if at == "checkpoint_write":  # the first torch file of the n-th checkpoint written, the rest not
            torch_save = torch.save

            def save(*args, **kwargs):
                torch_save(*args, **kwargs)
                if inside[0]:
                    die()
            torch.save = save


    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            rc = 99
            try:
                fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                if req.get("kill"):
                    install(*req["kill"])
                rc = ENTRY[req["trainer"]](req["argv"]) or 0
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc)
        _, status = os.waitpid(pid, 0)
        reply = {"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                 "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}
        sys.stdout.write(json.dumps(reply) + "\\n")
        sys.stdout.flush()
''')


class Driver:
    def __init__(self, folder: Path):
        script = folder / "driver.py"
        script.write_text(DRIVER)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
                   PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
        self.proc = subprocess.Popen([sys.executable, str(script), str(ROOT)], cwd=ROOT, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def run(self, trainer: str, argv: list, log: Path, kill=None, timeout: float = 300) -> dict:
        self.proc.stdin.write(json.dumps({"trainer": trainer, "argv": [str(a) for a in argv], "log": str(log),
                                          "kill": kill}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.close()
            pytest.fail(f"{trainer} {kill} did not finish in {timeout} s; its log:\n{log.read_text()[-3000:]}")
        line = self.proc.stdout.readline()
        assert line, f"the driver died; {trainer}'s log:\n{log.read_text()[-3000:]}"
        return json.loads(line)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    d = Driver(tmp_path_factory.mktemp("driver"))
    yield d
    d.close()


def _stage_argv(out: Path, steps: int, stage: int) -> list:
    argv = ["--config", TINY_YAML, "--pretrained", "tiny", "--output_dir", out, "--max_train_steps", steps,
            "--num_clips", 4, "--clip_len", 4, "--crop", 32, "--synth_width", 48, "--synth_height", 48,
            "--frames_per_clip", 6, "--validation_data", "none", "--report_to", "none",
            "--checkpointing_steps", 1, "--checkpoints_total_limit", 1]
    if stage == 2:  # EMA and gradient accumulation: both must survive the kills too
        argv += ["--use_ema", "true", "--ema_decay", "0.5", "--gradient_accumulation_steps", 2]
    return argv


def _vae_argv(out: Path, steps: int) -> list:
    return [str(a) for a in ["--output_dir", out, "--block_out_channels", 8, 8, "--latent_channels", 4,
                             "--norm_num_groups", 4, "--crop", 16, "--batch_size", 2, "--max_train_steps", steps,
                             "--lr_warmup_steps", 0, "--lr_scheduler", "constant", "--checkpointing_steps", 1,
                             "--checkpoints_total_limit", 1, "--eval_size", 24, 16, "--eval_photos", "coins",
                             "--photos", "camera", "--scaling_batches", 1, "--num_threads", 1]]


def _dtb_argv(out: Path, steps: int) -> list:
    return ["--output_dir", out, "--channels", 8, "--feature_channels", 4, "--num_res_blocks", 1,
            "--train_batch_size", 2, "--clip_len", 3, "--crop", 24, "--num_clips", 2, "--frames_per_clip", 4,
            "--synth_width", 40, "--synth_height", 32, "--max_train_steps", steps, "--checkpointing_steps", 1,
            "--checkpoints_total_limit", 1, "--validation_steps", 0, "--num_validation_clips", 0,
            "--learning_rate", 1e-3, "--photos", "astronaut", "rocket", "--report_to", "none", "--num_threads", 1,
            "--mixed_precision", "no", "--finetune_steps", 2, "--finetune_learning_rate", 5e-4]


def _maml_argv(out: Path, steps: int) -> list:
    return ["--output_dir", out, "--steps", steps, "--log_steps", 2, "--validation_steps", 0,
            "--checkpointing_steps", 1, "--checkpoints_total_limit", 1, "--mixed_precision", "no",
            "--lr_warmup_steps", 1, "--num_threads", 1, "--base_channels", 4, "--levels", 2, "--max_channels", 8,
            "--patch_size", 32, "--patches_per_task", 2, "--tasks_per_step", 1, "--max_length", 8, "--scales", 0.5,
            "--first_order", "true"]


TRAINERS = {
    "stage1": lambda out, steps: _stage_argv(out, steps, 1),
    "stage2": lambda out, steps: _stage_argv(out, steps, 2),
    "vae": _vae_argv,
    "dtb": _dtb_argv,
    "maml": _maml_argv,
}


def _final_weights(a: Path, b: Path) -> float:
    """Largest difference between the final safetensors of two output folders (checkpoints left out)."""
    def files(root):
        return {p.relative_to(root).as_posix(): p for p in root.rglob("*.safetensors")
                if not any(part.startswith(("checkpoint-", ".checkpoint-")) for part in p.relative_to(root).parts)}

    fa, fb = files(a), files(b)
    assert fa and fa.keys() == fb.keys(), (sorted(fa), sorted(fb))
    worst = 0.0
    for name in fa:
        ta, tb = load_file(str(fa[name])), load_file(str(fb[name]))
        assert ta.keys() == tb.keys(), name
        for k in ta:
            worst = max(worst, float((ta[k].double() - tb[k].double()).abs().max()) if ta[k].numel() else 0.0)
    return worst


def _entries(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if "checkpoint-" in p.name)


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_killed_runs_resume_to_the_uninterrupted_weights(driver, tmp_path, trainer):
    """4 steps, a checkpoint every step, checkpoints_total_limit 1. Straight through vs. killed while checkpoint-2
    is being written, then (resumed) killed in the middle of step 3, then (resumed) killed after Accelerate wrote
    checkpoint-3 but before it was finished, then resumed to the end: the same weights, exactly."""
    argv = TRAINERS[trainer]
    straight, out = tmp_path / "straight", tmp_path / "killed"

    def run(name, kill=None, resume=True, target=out):
        log = tmp_path / f"{name}.log"
        extra = ["--resume_from_checkpoint", "latest"] if resume else []
        r = driver.run(trainer, argv(target, 4) + extra, log, kill)
        return r, log.read_text()

    r, log = run("straight", resume=False, target=straight)
    assert r == {"signal": None, "code": 0}, log[-3000:]

    r, log = run("1-kill-writing-checkpoint-2", ["checkpoint_write", 2], resume=False)
    assert r["signal"] == signal.SIGKILL, log[-3000:]
    # the half-written checkpoint-2 carries its temporary name; checkpoint-1, the last good one, is still there
    assert _entries(out) == [".checkpoint-2.partial", "checkpoint-1"]
    assert verify_checkpoint(out / "checkpoint-1") is None

    r, log = run("2-kill-in-step-3", ["optimizer_step", 2])
    assert r["signal"] == signal.SIGKILL, log[-3000:]
    assert ".checkpoint-2.partial" in log  # the leftover was removed (and named) by this run
    assert _entries(out) == ["checkpoint-2"]  # checkpoint-1 pruned only once checkpoint-2 was complete

    r, log = run("3-kill-finishing-checkpoint-3", ["checkpoint_written", 1])
    assert r["signal"] == signal.SIGKILL, log[-3000:]
    assert _entries(out) == [".checkpoint-3.partial", "checkpoint-2"]

    r, log = run("4-resume-to-the-end")
    assert r == {"signal": None, "code": 0}, log[-3000:]
    assert ".checkpoint-3.partial" in log
    assert not any(n.startswith(".") for n in _entries(out))
    assert [p.name for p in list_checkpoints(out)] == [p.name for p in list_checkpoints(straight)]
    assert len(list_checkpoints(out)) == 1
    assert _final_weights(straight, out) == 0.0

# Two commands for a fresh machine: `make demo` and `make test`. Each sets up .venv when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-slow install checkpoints checkpoints-dtb checkpoints-fit checkpoints-diffusion benchmark clean

install: $(STAMP)

# Re-install only when the package metadata changes, so repeated runs are quick.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py --out demo_output

test: $(STAMP)
	$(PY) -m pytest -q

# Long quality checks (trained-model quality gates); not part of `make test`.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Reproduce every shipped model (about 11 hours, one job after another): training runs go to outputs/, then the model
# files are copied over vdiffdeblur/checkpoints/ (hand-written model cards stay). One thread per process.
WORK := outputs/checkpoints
SHIP := vdiffdeblur/checkpoints
ONE  := OMP_NUM_THREADS=1

checkpoints: checkpoints-dtb checkpoints-fit checkpoints-diffusion

# DTB: nine stages for STRCNN+DTB and for the CNN variant it is compared with (~4 h for STRCNN+DTB on one core):
# photos (26 min), a log-MSE fine-tune (13), three on dead-leaves scenes (35-39 each), then twice one on dead
# leaves with fur (33-35) and a do-no-harm fine-tune (10). Each stage starts from the previous one; stage N's
# records are shipped as stageN_*.
FUR := dtb_dead_leaves.yaml:--fur_fraction=0.5
DTB_STAGES := dtb.yaml:: dtb_finetune.yaml:: dtb_dead_leaves.yaml:: dtb_dead_leaves.yaml:--seed=4 \
              dtb_dead_leaves.yaml:--seed=5 $(FUR):--seed=6 dtb_fur_finetune.yaml:: $(FUR):--seed=8 \
              dtb_fur_finetune.yaml:--seed=9
checkpoints-dtb: $(STAMP)
	for v in strcnn_dtb cnn; do \
	  n=0; prev=; \
	  for st in $(DTB_STAGES); do \
	    n=$$((n + 1)); cfg=$${st%%:*}; extra=$$(echo $${st#*:} | tr ':=' '  '); \
	    $(ONE) $(PY) training/train_dtb.py --config training/configs/$$cfg --variant $$v $$extra \
	        $${prev:+--init_from $$prev} --output_dir $(WORK)/dtb-$$v-stage$$n || exit 1; \
	    prev=$(WORK)/dtb-$$v-stage$$n; \
	  done; \
	done
	mkdir -p $(SHIP)/dtb/cnn
	for pair in strcnn_dtb:$(SHIP)/dtb cnn:$(SHIP)/dtb/cnn; do \
	  v=$${pair%%:*}; dst=$${pair#*:}; last=$(WORK)/dtb-$$v-stage$(words $(DTB_STAGES)); \
	  cp $$last/config.json $$last/diffusion_pytorch_model.safetensors $$dst/ || exit 1; \
	  for n in $$(seq 1 $(words $(DTB_STAGES))); do \
	    cp $(WORK)/dtb-$$v-stage$$n/training_config.json $$dst/stage$${n}_training_config.json && \
	    cp $(WORK)/dtb-$$v-stage$$n/training_log.json $$dst/stage$${n}_training_log.json || exit 1; \
	  done; \
	done

# fit-to-test-data: the MAML initialisation (Algorithm 1, first order), six stages (~38 + 45 + 38 + 28 + 28 + 27 min);
# the fourth adds 50 procedural dead-leaves pictures to the training photos, the last two fill half their
# textured leaves with procedural fur.
META_MORE := --outer_lr 1e-4 --first_order true --inner_lr 0.003 --reweight false --num_threads 1 \
             --mixed_precision bf16 --checkpointing_steps 2000
checkpoints-fit: $(STAMP)
	$(ONE) $(PY) training/meta_train.py --output_dir $(WORK)/fit_maml --steps 6000 --seed 0 --first_order true \
	    --inner_lr 0.003 --reweight false --num_threads 1 --mixed_precision bf16 --checkpointing_steps 1500
	$(ONE) $(PY) training/meta_train.py --output_dir $(WORK)/fit_maml_stage2 --init $(WORK)/fit_maml --seed 1 --steps 10000 \
	    $(META_MORE)
	$(ONE) $(PY) training/meta_train.py --output_dir $(WORK)/fit_maml_stage3 --init $(WORK)/fit_maml_stage2 --seed 2 --steps 10000 \
	    $(META_MORE)
	$(ONE) $(PY) training/meta_train.py --output_dir $(WORK)/fit_maml_stage4 --init $(WORK)/fit_maml_stage3 --seed 3 --steps 8000 \
	    --dead_leaves 50 $(META_MORE)
	for n in 5 6; do \
	  $(ONE) $(PY) training/meta_train.py --output_dir $(WORK)/fit_maml_stage$$n --init $(WORK)/fit_maml_stage$$((n - 1)) \
	      --seed $$n --steps 8000 --dead_leaves 50 --fur_fraction 0.5 $(META_MORE) || exit 1; \
	done
	mkdir -p $(SHIP)/fit_maml
	cp $(WORK)/fit_maml/meta_train.json $(SHIP)/fit_maml/meta_train_stage1.json
	for n in 2 3 4 5; do cp $(WORK)/fit_maml_stage$$n/meta_train.json $(SHIP)/fit_maml/meta_train_stage$$n.json || exit 1; done
	cp $(WORK)/fit_maml_stage6/config.json $(WORK)/fit_maml_stage6/diffusion_pytorch_model.safetensors \
	    $(WORK)/fit_maml_stage6/meta_train.json $(SHIP)/fit_maml/

# Diffusion: a small VAE, then the pipeline's two stages, then shipping (measures it, writes the model card).
# Outputs land in outputs/diffusion_* (the configs name them); ~35 min on one CPU thread.
LAUNCH := $(ONE) $(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no \
          --dynamo_backend no
checkpoints-diffusion: $(STAMP)
	$(ONE) $(PY) training/train_vae.py --config training/configs/small_vae.yaml
	$(PY) scripts/make_small_pipeline.py --vae outputs/diffusion_vae/vae --out outputs/diffusion_init
	$(LAUNCH) training/stage1.py --config training/configs/small.yaml
	$(LAUNCH) training/stage2.py --config training/configs/small.yaml
	$(PY) scripts/ship_diffusion_model.py --model outputs/diffusion_stage2 --steps 1 --guidance 1

benchmark: $(STAMP)
	$(PY) scripts/benchmark.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache

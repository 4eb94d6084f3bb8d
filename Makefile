# make demo  : create .venv, install, train a small SRResNet on scikit-image's photos, evaluate, upscale a photo
# make test  : create .venv, install, run the test suite
# make app   : serve the web page on http://127.0.0.1:7860 (see docs/web-page.md; APP_FLAGS="--port 8080")
# make bench : run the benchmark scripts (see docs/benchmarks.md)
# make lock  : refresh requirements.lock (the exact versions tested) from the ranges in requirements.txt
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# OpenMP threads sleep while they wait instead of spinning: another busy process then slows training by its share of
# the cores, not 2-3x (docs/speed.md, "A busy machine").
export OMP_WAIT_POLICY ?= PASSIVE
STAMP := $(VENV)/.installed-requirements
# What `make install` installs: the lock of tested versions (Linux x86_64, CPython 3.11). Elsewhere, or to try newer
# releases: `make test LOCK=requirements.txt`.
LOCK ?= requirements.lock
# The torch pair the lock is made with: the one the suite was last tested with (raise it with a full test run).
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

# Demo knobs: `make demo TRAIN=my/train/folder TEST=my/test/folder DEMO_EPOCHS=20`
DEMO := results/demo
TRAIN ?=
TEST ?=
DEMO_EPOCHS ?= 60
DEMO_PHOTO ?= $(DEMO)/photos/test/chelsea.png

APP_FLAGS ?=

.PHONY: install test demo app bench lock clean-demo

$(STAMP): $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r $(LOCK)
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadgroup tests

demo: $(STAMP)
	@echo "== 1/4 data lists (scikit-image photos$(if $(TRAIN), + $(TRAIN))$(if $(TEST), + $(TEST)))"
	$(PY) create_data_lists.py --from-skimage $(DEMO)/photos $(if $(TRAIN),--train-folders $(TRAIN)) \
		$(if $(TEST),--test-folders $(TEST)) --min-size 96 --output-folder $(DEMO)/data
	@echo "== 2/4 train a small SRResNet x4 on the CPU in fp32 (a few minutes; an earlier demo checkpoint is kept aside)"
	$(PY) train_srresnet.py --data-folder $(DEMO)/data --results-dir $(DEMO) --runs-dir $(DEMO)/runs \
		--n-blocks 4 --n-channels 32 --batch-size 16 --crop-size 64 --patches-per-image 64 --lr 1e-3 \
		--lr-schedule cosine --epochs $(DEMO_EPOCHS) --downsample matlab --device cpu --amp off --restart
	@echo "== 3/4 evaluate next to bicubic (standard protocol)"
	$(PY) eval.py --checkpoint $(DEMO)/checkpoint_srresnet.pth --test-folders $(DEMO)/photos/test $(TEST) \
		--protocol standard --results-dir $(DEMO)
	$(PY) eval.py --arch bicubic --scale 4 --test-folders $(DEMO)/photos/test $(TEST) \
		--protocol standard --results-dir $(DEMO)
	@echo "== 4/4 upscale a photo: with the demo SRResNet (x4) and with the shipped SRResNet x4 (trained on T91 + BSD200)"
	$(PY) test.py --checkpoint $(DEMO)/checkpoint_srresnet.pth --image $(DEMO_PHOTO) --output-dir $(DEMO) --overwrite
	$(PY) test.py --checkpoint results/srresnet_x4_291.pth --image $(DEMO_PHOTO) --output-dir $(DEMO)/shipped \
		--overwrite
	@$(PY) -c "import json; r = lambda n: json.load(open('$(DEMO)/eval_' + n + '_x4.json'))['datasets']; \
		row = lambda d: f\"{d['standard_psnr']:.2f} dB / {d['standard_ssim']:.4f}\"; \
		[print(f\"demo, {s['name']}, x4, standard protocol: SRResNet {row(s)}, bicubic {row(b)}\") \
		 for s, b in zip(r('srresnet'), r('bicubic'))]"
	@echo "Everything is under $(DEMO)/: checkpoint, eval tables (eval_*.md/json/csv), upscaled images,"
	@echo "TensorBoard logs (tensorboard --logdir $(DEMO)/runs)."

app: $(STAMP)
	$(PY) app.py $(APP_FLAGS)

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip-tools
	printf '%s\n' $(TORCH_PIN) > .lock-constraints.txt
	$(PY) -m piptools compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links \
		--constraint .lock-constraints.txt --output-file requirements.lock requirements.txt; \
		status=$$?; rm -f .lock-constraints.txt; exit $$status

clean-demo:
	rm -rf $(DEMO)

# `make demo` and `make test` set up .venv from nothing, then run the demo / the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.fmprobe-installed
DEMO ?= out/demo
DEMO_MODEL ?= timm:vit_tiny_patch16_224

.PHONY: install demo test lint docs bench clean chromium

install: $(STAMP)

# A machine that already has torch and torchvision (a GPU node) keeps them; elsewhere pip
# installs both from the registry (torchvision must be built against the same torch).
$(STAMP): pyproject.toml
	@if $(PYTHON) -c "import torch, torchvision" >/dev/null 2>&1; then \
		echo "setup: reusing this machine's torch and torchvision"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV); \
	fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

demo: $(STAMP)
	@echo "demo: embedding builtin:digits with $(DEMO_MODEL) --random-init:"
	@echo "      no pretrained weights can be downloaded on this machine (no model hub);"
	@echo "      with network access drop --random-init, or pass --weights PATH."
	$(BIN)/fmprobe embed --data builtin:digits --model $(DEMO_MODEL) --random-init \
		--store $(DEMO)/digits.zarr
	$(BIN)/fmprobe store info $(DEMO)/digits.zarr
	@echo "demo: learning curves of logistic-regression probes (5 seeds per label count, features z-scored"
	@echo "      on each subsample, C by 5-fold cross-validation inside it; 5-9 minutes on 2 cores):"
	$(BIN)/fmprobe sweep --store $(DEMO)/digits.zarr --out $(DEMO)/results.parquet \
		--features '*/block11/*,*/block5/cls' --tasks label --n 10,20,50,100,200,all --seeds 5 \
		--standardize --C auto
	@$(PY) -c "import pandas as pd; r = pd.read_parquet('$(DEMO)/results.parquet'); \
		t = r.pivot_table(index='n', columns='feature', values='auroc', aggfunc='mean'); \
		t.columns = [c.split('/', 1)[1] for c in t.columns]; \
		print('mean macro AUROC on the test split, by label count n:'); print(t.round(3).to_string()); \
		print(f'{int(r.converged.sum())} of {len(r)} probes certified at their optimum (duality gap)')"
	@echo "demo: forecast from the first 50 labels (intervals at 90%, labels needed for 0.85 / 0.9):"
	$(BIN)/fmprobe forecast $(DEMO)/results.parquet --config configs/forecast-digits.yaml \
		--out $(DEMO)/forecast.parquet
	@$(PY) -c "import pandas as pd; f = pd.read_parquet('$(DEMO)/forecast.parquet'); \
		f = f[f.n.isin([1343, 5000])]; f['feature'] = [c.split('/', 1)[1] for c in f.feature]; \
		print(f[['feature', 'n', 'observed', 'predicted', 'lower', 'upper', 'n_needed_0.9']] \
		.round(3).to_string(index=False))"
	$(BIN)/fmprobe report $(DEMO)/results.parquet --forecast $(DEMO)/forecast.parquet \
		--store $(DEMO)/digits.zarr --out $(DEMO)/report
	@echo "demo: open $(DEMO)/report/index.html in a browser"

lint: $(STAMP)
	$(BIN)/ruff check fmprobe tests benchmarks
	$(BIN)/ruff format --check fmprobe tests benchmarks
	$(BIN)/mypy

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The report's browser test lays the page out in headless Chromium (it skips without one):
# Debian's package, installed here when missing and the user is root.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
		echo "chromium: $$(command -v chromium || command -v chromium-browser)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "chromium: installing Debian's package for the report's browser test"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; } \
			|| echo "chromium: apt-get failed; the report's browser test will skip"; \
	else \
		echo "chromium: not installed, and installing it needs apt-get as root;" \
			"the report's browser test will skip"; \
	fi

test: lint docs chromium
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_embed.py
	$(BIN)/python benchmarks/bench_sweep.py
	$(BIN)/python benchmarks/bench_forecast.py
	$(BIN)/python benchmarks/bench_select.py
	$(BIN)/python benchmarks/bench_scale.py

clean:
	rm -rf $(VENV) out build .pytest_cache .mypy_cache .ruff_cache

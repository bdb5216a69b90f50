# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.requirements.stamp

.PHONY: demo test venv bench bench-pipeline bench-gpu container-check clean

$(STAMP): requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" PYTHON="$(CURDIR)/$(VENV)/bin/python" bash run_all_demo.sh

test: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python -m pytest -q tests

bench: $(STAMP)
	$(VENV)/bin/python -m tools.bench.bench_evaluate
	$(VENV)/bin/python -m tools.bench.bench_fsl
	$(VENV)/bin/python -m tools.bench.bench_random_walk

# Every stage's throughput per precision mode at the demo width (--preset paper: the paper's sizes).
bench-pipeline: $(STAMP)
	$(VENV)/bin/python -m tools.bench.bench_pipeline
	$(VENV)/bin/python -m tools.bench.bench_crf --crf_workers 1 2

# The one-shot check of a GPU machine (docs/PERFORMANCE.md); a reduced CPU run without CUDA.
bench-gpu:
	bash tools/bench/gpu_check.sh

# Build Dockerfile and pytorch.def with podman from a local Debian base and run each image's checks
# (root; ~20 min on a fresh 2-core machine; docs/DATA.md#containers-and-clusters). Not run in CI.
container-check:
	bash tools/container/container_check.sh

clean:
	rm -rf $(VENV) demo_exp

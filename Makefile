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

# Upscales the bundled sample image x4 with the bundled default model (ONNX Runtime on the CPU).
demo: setup
	$(VENV)/bin/clit-infer samples/sample.png --scale 4 -o $(OUT)/sample_x4.png --overwrite
	@echo "wrote $(OUT)/sample_x4.png"

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache $(OUT)

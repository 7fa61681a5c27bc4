# Set-up and the two everyday commands.  `make demo` and `make test` create .venv on first
# use (CPU PyTorch pinned by constraints.txt) and then do their job.  `make test` also runs
# the torch-free suite on Python 3.8 (JetPack 5's Python) in .venv38, with only the runtime
# installed, when a python3.8 is found (pyenv's, or PY38=/path/to/python3.8), and clit.serve against a
# real tritonserver in .venv-serve (x86-64 Linux).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
OUT    ?= out
VENV38 ?= .venv38
VENVSERVE ?= .venv-serve
PY38   ?= $(shell for p in $$HOME/.pyenv/versions/3.8*/bin/python3.8 $$(command -v python3.8); do \
                    "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 8)' 2>/dev/null && echo "$$p" && break; done)
DATA   ?= ../shared/data

.PHONY: setup demo test test-py38 test-serve print-py38 lint clean

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
	$(MAKE) --no-print-directory test-py38
	$(MAKE) --no-print-directory test-serve

# The runtime as a Jetson has it: Python 3.8, `pip install .` (no torch, no onnx), the
# torch-free tests, clit-parity against a reference made here by the PyTorch model.  The
# installed copy is refreshed from the working tree on every run (it is not editable).
test-py38: setup
	@if [ -z "$(PY38)" ]; then echo "test-py38: no python3.8 found (pyenv install 3.8): skipped"; exit 0; fi; \
	set -e; \
	if [ ! -f $(VENV38)/.installed ] || [ pyproject.toml -nt $(VENV38)/.installed ]; then \
	  rm -rf $(VENV38); $(PY38) -m venv $(VENV38); \
	  $(VENV38)/bin/python -m pip install -q --upgrade pip; \
	  $(VENV38)/bin/python -m pip install -q '.[dev]'; \
	  touch $(VENV38)/.installed; \
	else \
	  $(VENV38)/bin/python -m pip install -q --no-deps --force-reinstall . ; \
	fi; \
	ref=; \
	if [ -f $(DATA)/MANIFEST.json ]; then \
	  ref=$(VENV38)/reference.npz; \
	  $(PY) -m clit.calibration.cli --model runtime/models/default --data $(DATA)/Set5/HR \
	    --max-images 1 --scales 2,6 --hr-crop 48 --save-reference $$ref > /dev/null; \
	fi; \
	CLIT_TEST_REFERENCE=$$ref $(VENV38)/bin/python -m pytest -p no:cacheprovider -q

# clit.serve against a real tritonserver (nvidia-pytriton's, x86-64 Linux wheels only) in its own
# environment: pytriton pins numpy < 2, which the main .venv must not inherit.  Only the
# runtime and the serve extras are installed (no torch).
test-serve: setup
	@if [ "$$(uname -s)-$$(uname -m)" != "Linux-x86_64" ]; then \
	  echo "test-serve: nvidia-pytriton ships tritonserver for x86-64 Linux only: skipped"; exit 0; fi; \
	set -e; \
	if [ ! -f $(VENVSERVE)/.installed ] || [ pyproject.toml -nt $(VENVSERVE)/.installed ]; then \
	  rm -rf $(VENVSERVE); $(PYTHON) -m venv $(VENVSERVE); \
	  $(VENVSERVE)/bin/python -m pip install -q -c constraints.txt -e '.[serve,dev]'; \
	  touch $(VENVSERVE)/.installed; \
	fi; \
	CLIT_REQUIRE_TRITON=1 $(VENVSERVE)/bin/python -m pytest -p no:cacheprovider -q tests/test_serve.py

print-py38:
	@echo "$(PY38)"

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(VENV38) $(VENVSERVE) build *.egg-info .pytest_cache $(OUT)

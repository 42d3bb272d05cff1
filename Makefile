# Two commands do everything on a fresh machine:
#   make run    set up .venv with the core only (CPU torch pin, onnxruntime) and run the main job on `cpu-1t`
#   make test   everything the tests use: Debian packages (.ci/apt-packages, installed as root, else listed with the
#               tests that skip), every Python extra (TVM, SSH, pytest), then the whole suite. CI runs this (.ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python
SUM := $(shell cksum pyproject.toml | cut -d' ' -f1)
CORE := $(VENV)/.core-$(SUM)
FULL := $(VENV)/.full-$(SUM)

.PHONY: setup setup-core run test deps bench clean

$(CORE): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch==2.13.0 exactly: the CPU wheel. Any other spec pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	rm -f $(VENV)/.core-* $(VENV)/.installed-*; touch $@

$(FULL): $(CORE)
	$(PY) -m pip install -q -e '.[tvm,ssh,test]'
	rm -f $(VENV)/.full-*; touch $@

setup-core: $(CORE)

setup: $(FULL)

deps:
	bash .ci/deps.sh

run: setup-core
	$(VENV)/bin/hwnas run --device cpu-1t

test: deps setup
	$(PY) -m pytest -q -ra

clean:
	rm -rf $(VENV) .pytest_cache

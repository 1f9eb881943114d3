# Two entry points on a fresh machine: `make demo` and `make test`. Everything they need is
# installed here, into .venv, from setup.cfg and requirements/constraints.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= cpu,methods,leaderboard,slurm,dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
PYTEST_ARGS ?=

.PHONY: setup test demo clean

setup: $(STAMP)

$(STAMP): setup.cfg setup.py requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e '.[$(EXTRAS)]'
	touch $@

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/harness demo

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

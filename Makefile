# Two entry points on a fresh machine: `make demo` and `make test`. Everything they need is
# installed here, into .venv, from setup.cfg and requirements/constraints.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= cpu,methods,leaderboard,slurm,dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
# `slow` tests (multi-process DDP, long fuzzing) are left out of the default run.
PYTEST_ARGS ?= -m "not slow"
# slurm-marked tests run against a private single-node SLURM cluster that
# .ci/slurm-cluster.sh stands up (root + apt-get, as on CI) and always stops afterwards;
# elsewhere they skip. SLURM_CLUSTER=0: never start it.
SLURM_CLUSTER ?= 1
# The leaderboard page is checked in headless Chromium (Debian's package); BROWSER=0 skips
# installing it (the browser test then skips with its reason).
BROWSER ?= 1

.PHONY: setup test test-slurm demo study-report clean

setup: $(STAMP)

$(STAMP): setup.cfg setup.py requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e '.[$(EXTRAS)]'
	touch $@

test: $(STAMP)
	if [ "$(BROWSER)" = 1 ]; then bash .ci/browser.sh; fi
	$(VENV)/bin/ruff check .
	IOVPR_SLURM=$(SLURM_CLUSTER) .ci/slurm-cluster.sh run --optional -- $(PY) -m pytest $(PYTEST_ARGS)
	$(VENV)/bin/harness leaderboard check
	$(VENV)/bin/harness leaderboard build --verify

test-slurm: $(STAMP)
	.ci/slurm-cluster.sh run -- $(PY) -m pytest $(PYTEST_ARGS) -m slurm

demo: $(STAMP)
	$(VENV)/bin/harness demo

# The IOVPR study section of README.md: the study at the demo's settings, seeds 43 and 44, with
# intervals and paired tests (methods/iovpr/study_report.py).
study-report: $(STAMP)
	$(VENV)/bin/harness synth city --out data/demo/city --preset demo --seed 0 --register \
		--prefix synth- --data-root data/demo/harness
	$(VENV)/bin/harness iovpr study-report --city data/demo/city --data-root data/demo/harness \
		--out data/study-report --seeds 43,44 --readme README.md

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

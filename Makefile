# Set-up and the two jobs a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.geolabel-setup
DEPS_STAMP := $(VENV)/.geolabel-deps
REQS := requirements/requirements.txt requirements/requirements-nodeps.txt requirements/extra.txt \
        requirements/constraints.txt requirements/constraints-lock.txt
export PIP_CACHE_DIR ?= $(HOME)/.cache/geolabel-pip

.PHONY: setup deps browser test demo clean

setup: $(STAMP)

# `deps` alone (no geolabel source needed) is the Dockerfile's cached layer.
deps: $(DEPS_STAMP)

# Three pip steps: (1) TF/Keras/geo stack resolved against the lock; (2) TFX pieces with
# --no-deps (their declared ml-metadata/TFDV 1.21 wheels need glibc >= 2.39); (3) geolabel.
$(DEPS_STAMP): $(REQS)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade "pip>=24"
	$(VENV)/bin/pip install -q -c requirements/constraints.txt -c requirements/constraints-lock.txt \
		-r requirements/requirements.txt -r requirements/extra.txt
	$(VENV)/bin/pip install -q --no-deps -c requirements/constraints-lock.txt -r requirements/requirements-nodeps.txt
	touch $(DEPS_STAMP)

$(STAMP): $(DEPS_STAMP) setup.cfg
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $(STAMP)

# Debian's chromium: the test of `geolabel view` loads the page in a headless browser.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends chromium; }

test: setup browser
	$(VENV)/bin/python -m pytest -n 2 -q

demo: setup
	$(VENV)/bin/geolabel demo --out demo-output

clean:
	rm -rf $(VENV) demo-output .pytest_cache

# Two commands on a fresh machine with Python 3.11:
#   make run    create .venv once, install, start the app on sample_data (PORT=8501 by default)
#   make test   create .venv once, install, run the whole test suite
# The venv is reinstalled only when a requirements file changes (stamp files below).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.stamp-run
DEV_STAMP := $(VENV)/.stamp-dev
# `make run PORT=8765`, or Streamlit's own STREAMLIT_SERVER_PORT=8765 make run (PORT wins when both are set)
PORT ?= $(or $(STREAMLIT_SERVER_PORT),8501)

.PHONY: run test test-fast lint bench browser clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(RUN_STAMP): requirements.txt | $(PY)
	$(PY) -m pip install -r requirements.txt
	touch $@

$(DEV_STAMP): requirements.txt requirements-dev.txt bench/requirements.txt $(RUN_STAMP)
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

run: $(RUN_STAMP)
	$(VENV)/bin/streamlit run app.py --server.port $(PORT)

test: $(DEV_STAMP) browser
	$(PY) -m pytest

# The browser test drives Debian's Chromium (no downloaded browsers). Installed once when we may.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "note: /usr/bin/chromium is missing (apt-get install chromium): the browser test will be skipped"; fi

test-fast: $(DEV_STAMP)
	$(PY) -m pytest -m "not slow and not e2e"

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .

bench: $(DEV_STAMP)
	$(PY) -m pip install -q -r bench/requirements.txt
	$(PY) bench/throughput.py

clean-venv:
	rm -rf $(VENV)

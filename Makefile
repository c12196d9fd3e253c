# The two set-up commands of the README:
#   make demo   install into .venv/ and run the daemon on ./inbox with the sample jobs
#   make test   install into .venv/ and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed

.PHONY: demo test install bench lint clean-demo

install: $(STAMP) pandacead/_cli_cache.py

# What `pandacead --help` prints without importing click (pandacead/entry.py),
# rendered by click itself; stale caches are ignored at run time, so this only
# keeps the fast path in use after cli.py changes.
pandacead/_cli_cache.py: $(STAMP) pandacead/cli.py pandacead/_version.py pandacead/entry.py pandacead/budget_read.py \
		pandacead/config.py pandacead/devices.py pandacead/executor.py pandacead/ledger/core.py \
		pandacead/ledger/policy.py pandacead/ledger/filter_state.py
	$(BIN)/python -m pandacead.entry --write-cache >/dev/null
	$(BIN)/python -m compileall -q pandacead plugins

# torch/opacus/syft are pinned by constraints.txt (torch 2.13.0 is the CPU wheel).
$(STAMP): pyproject.toml constraints.txt plugins/pandacead_nss/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[opacus,syft,dev,bench]' -e plugins/pandacead_nss
	$(BIN)/python -m compileall -q pandacead plugins  # byte-compiled, as any wheel install is
	touch $(STAMP)

demo: install
	$(BIN)/pandacead init --home .
	@for f in examples/*.json; do \
	  id=$$(basename $$f .json); \
	  if [ ! -e outbox/$$id.json ] && [ ! -e outbox/$$id.error.json ]; then cp $$f inbox/; fi; \
	done
	$(BIN)/pandacead run --home . --once
	@for f in outbox/*.json; do case $$f in *.dsse.json|*.error.json) ;; *) $(BIN)/pandacead verify --home . $$f ;; esac; done
	$(BIN)/pandacead budget show --home .
	@echo
	$(BIN)/pandacead jobs summary --home .

test: install
	$(BIN)/python -m pytest -q

# bench/run.py rewrites docs/benchmarks.md and bench/utility.py docs/utility.md: the
# benchmarks that add their own sections to those pages run after them.
bench: install
	$(BIN)/python bench/run.py
	$(BIN)/python bench/bench_audit.py
	$(BIN)/python bench/utility.py
	$(BIN)/python bench/bench_tuning.py
	$(BIN)/python bench/utility_daemon.py

lint: install
	$(BIN)/ruff check pandacead plugins tests bench
	$(BIN)/mypy

clean-demo:
	rm -rf outbox state pandacead.toml inbox/*.json

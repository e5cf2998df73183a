# procflow developer commands. Every target installs what is missing first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The stamp's name is a checksum of the two files that say what to install, so editing them reinstalls.
# It has no prerequisites on purpose: a newer mtime alone (a git checkout, a fresh worktree) once made
# every target reinstall into whichever VENV it was given, though nothing it installs had changed.
STAMP  := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)
EXTRAS ?= dev,ray,bench,arrow,web

.PHONY: install run example-files shell dashboard graph serve test test-fast lint bench soak clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)  ## create .venv and install procflow with its dev, ray, bench, arrow and web extras

run: $(STAMP)  ## run the example word count over a generated text
	$(PY) examples/wordcount.py
	@echo
	@echo "procflow is installed in $(VENV), not on your PATH: run '. $(VENV)/bin/activate' (or 'make shell')"
	@echo "to use procflow and python in this shell, or call $(VENV)/bin/procflow and $(VENV)/bin/python."

example-files: $(STAMP)  ## a batch job over files: 300 MB of generated JSONL logs summarised per endpoint
	$(PY) examples/files_job.py

shell: $(STAMP)  ## a bash with .venv activated: procflow and python on PATH ('exit' leaves it)
	@# The usual start-up files first, then activate, so that nothing in them puts another python ahead.
	@printf '%s\n' '[ -f /etc/bash.bashrc ] && . /etc/bash.bashrc' '[ -f ~/.bashrc ] && . ~/.bashrc' \
		'. "$(abspath $(VENV))/bin/activate"' > $(VENV)/.shellrc
	@echo "procflow: a shell with $(VENV) activated; 'exit' leaves it"
	@bash --rcfile $(VENV)/.shellrc -i

dashboard: $(STAMP)  ## the word count through the procflow command, with the live dashboard
	$(PY) -m procflow.cli run examples/wordcount.py:pipeline --dashboard

graph: $(STAMP)  ## the word count's execution graph (text)
	$(PY) -m procflow.cli graph examples/wordcount.py:pipeline

serve: $(STAMP)  ## the job server on its default socket (then procflow submit / list / status / logs / wait)
	$(PY) -m procflow.cli serve $(SERVE_ARGS)

test: $(STAMP)  ## the whole suite, in parallel
	$(PY) -m pytest -n auto -q

test-fast: $(STAMP)  ## the suite without Ray and soak tests
	$(PY) -m pytest -n auto -q -m "not ray and not soak"

lint: $(STAMP)  ## ruff, then mypy over procflow/ (settings in pyproject.toml, strict on api/ and core/)
	$(PY) -m ruff check procflow tests bench examples
	$(PY) -m mypy

bench: $(STAMP)  ## benchmarks against the peers; writes bench/results/
	$(PY) -m bench.run_all

soak: $(STAMP)  ## 10 million records through a four-stage pipeline (and the short soak test)
	PROCFLOW_SOAK=1 $(PY) -m pytest -q -m soak
	$(PY) -m bench.soak

clean:  ## remove the venv, caches and results
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache .hypothesis

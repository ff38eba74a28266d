# The README's two commands: `make demo` and `make test`. Each builds .venv on its own.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit clean orthanc

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lungslice demo --out demo-output

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy src

unit: $(STAMP)
	$(BIN)/python -m pytest

# tests/serve run a real Orthanc (Debian's orthanc + orthanc-dicomweb): installed when missing.
ORTHANC_PLUGIN := /usr/share/orthanc/plugins/libOrthancDicomWeb.so
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

orthanc:
	@if command -v Orthanc >/dev/null && [ -f $(ORTHANC_PLUGIN) ]; then :; \
	elif command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get install -y --no-install-recommends orthanc orthanc-dicomweb \
	  || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends orthanc orthanc-dicomweb; } \
	  || echo "warning: Orthanc could not be installed; tests/serve will be skipped"; \
	else echo "warning: no apt-get here; install Orthanc and its DICOMweb plugin, or tests/serve are skipped"; fi

test: lint typecheck orthanc unit

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info

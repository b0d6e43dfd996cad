# The README's two commands: `make demo` and `make test`. Each creates .venv if missing and
# installs what it needs. On machines without an NVIDIA driver, the CPU build of torch 2.13.0 is
# installed first, so the project's torch range is already satisfied and no CUDA wheel is pulled.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pgolf-installed

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		echo "pgolf: NVIDIA driver found, installing the default torch build"; \
	else \
		echo "pgolf: no NVIDIA driver, installing the CPU build torch==2.13.0 first"; \
		$(BIN)/python -m pip install -q torch==2.13.0; \
	fi
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pgolf demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache

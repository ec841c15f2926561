# fastnn: `make demo` trains on the digits set, `make test` runs the whole suite.
# Both create .venv themselves on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch==2.13.0 (CPU, the benchmark peer) comes from a local wheel folder where one exists.
PIP    := $(BIN)/pip install -q $(if $(wildcard /opt/wheels),--find-links /opt/wheels)

.PHONY: demo test bench info clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.demo: $(BIN)/python pyproject.toml
	$(PIP) -e ".[data,mpi]"
	touch $@

$(VENV)/.test: $(BIN)/python pyproject.toml
	$(PIP) -e ".[test,bench,mpi]"
	touch $@

demo: $(VENV)/.demo
	$(BIN)/mpiexec -n 2 $(BIN)/fastnn train

# fastnn compile first: the kernels compile in one process per core (a cold cache costs
# minutes of compiling), and the suite then loads them
test: $(VENV)/.test
	$(BIN)/fastnn compile
	$(BIN)/python -m pytest -q

bench: $(VENV)/.test
	$(BIN)/python bench/bench_optim.py
	$(BIN)/python bench/bench_local.py

info: $(VENV)/.demo
	$(BIN)/fastnn info

clean:
	rm -rf $(VENV) build *.egg-info checkpoints
	find . -name __pycache__ -prune -exec rm -rf {} +

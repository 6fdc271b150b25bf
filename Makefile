# Quick start: `make test` and `make bench` each do all the set-up first (scripts/bootstrap.sh).
# Extra arguments: make test ARGS="-k parity"   make bench ARGS="--device cuda"
PY := .venv/bin/python
ARGS ?=

.PHONY: setup test bench bench-conv clean

setup:
	@bash scripts/bootstrap.sh

test: setup
	$(PY) -m pytest tests -q -rs $(ARGS)

bench: setup
	$(PY) benchmarks/bench_gru.py $(ARGS)

clean:
	rm -rf build *.egg-info fusedgru/*.so .venv

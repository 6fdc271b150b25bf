# Quick start: `make test` and `make bench` each do all the set-up first (scripts/bootstrap.sh).
# Extra arguments: make test ARGS="-k parity"   make bench ARGS="--device cuda"
PY := .venv/bin/python
ARGS ?=

.PHONY: setup test test-emu-asan bench bench-conv gpu-check gpu-check-dry-run clean

setup:
	@bash scripts/bootstrap.sh

test: setup
	$(PY) -m pytest tests -q -rs $(ARGS)

# The CUDA kernels under the host emulator, built with AddressSanitizer: any out-of-bounds access
# to a tensor or to shared memory aborts with a report (CI runs this after `make test`).
test-emu-asan: setup
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" \
	ASAN_OPTIONS=detect_leaks=0 FUSEDGRU_EMU_ASAN=1 \
	$(PY) -m pytest tests/test_cuda_emu.py -q -s -p no:cacheprovider $(ARGS)

bench: setup
	$(PY) benchmarks/bench_gru.py $(ARGS)

# On a GPU machine, in one call: build, the cuda-marked tests, the benchmark grid (ARGS=--quick
# for a 3-minute version). Logs and JSON in $$OUT. The dry run exercises the same script on a CPU.
gpu-check:
	bash scripts/gpu_check.sh $(ARGS)

gpu-check-dry-run: setup
	bash scripts/gpu_check.sh --dry-run

clean:
	rm -rf build *.egg-info fusedgru/*.so .venv

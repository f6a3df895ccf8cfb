# Quick start: `make demo` (the pipeline on synthetic data) and `make test`.
# Both install libtorch on first use (see scripts/with-libtorch) unless LIBTORCH is set.

CARGO := scripts/with-libtorch cargo
AGD := target/release/agd

.PHONY: build test demo bench lint fmt build-torch-2.11 gpu-check

build:
	$(CARGO) build --release

test:
	$(CARGO) test --release

demo: build
	$(AGD) demo $(ARGS)

# A self-contained agd for a machine that has torch 2.11 (tch 0.24): RPATH is that
# machine's torch library folder (python3 -c 'import torch, os; print(os.path.dirname(torch.__file__) + "/lib")').
build-torch-2.11:
	scripts/build-for-torch 2.11.0 $(RPATH)

# The GPU checks (scripts/gpu-check): on a machine with an NVIDIA GPU.
gpu-check: build
	scripts/gpu-check $(AGD)

bench:
	$(CARGO) bench --bench pipeline
	$(CARGO) bench --bench train_step
	$(CARGO) bench --bench incremental_step
	$(CARGO) bench --bench evaluate
	$(CARGO) bench --bench invert
	$(CARGO) bench --bench compute
	$(CARGO) bench --bench data_parallel

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings

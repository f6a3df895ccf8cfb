# Quick start: `make demo` (the pipeline on synthetic data) and `make test`.
# Both install libtorch on first use (see scripts/with-libtorch) unless LIBTORCH is set.

CARGO := scripts/with-libtorch cargo
AGD := target/release/agd

.PHONY: build test demo bench lint fmt

build:
	$(CARGO) build --release

test:
	$(CARGO) test --release

demo: build
	$(AGD) demo $(ARGS)

bench:
	$(CARGO) bench --bench pipeline
	$(CARGO) bench --bench train_step
	$(CARGO) bench --bench incremental_step
	$(CARGO) bench --bench evaluate
	$(CARGO) bench --bench invert

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings

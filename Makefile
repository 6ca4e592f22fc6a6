# torpor: `make demo` and `make test` are the two commands a fresh machine needs (see README).
#
# `make test` runs, in order: setup, fmt check, clippy, release build, then every suite in
# TEST_SUITES as target `test-<suite>`. To add a suite: define `test-foo:` below and append
# `foo` to TEST_SUITES (one line each).

CARGO ?= cargo
TEST_SUITES := unit engine slurm

.PHONY: all setup fmt-check clippy build test demo $(addprefix test-,$(TEST_SUITES))

all: build

setup:
	bash scripts/setup.sh

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

build:
	$(CARGO) build --release --workspace

# Unit tests of every crate; the Slurm harness and the engine suite have their own targets.
test-unit: build
	$(CARGO) test --workspace --exclude torpor-tests --exclude torpor-engine-suite

# The engine suite (our zdtm): every case checkpointed, killed and restored, once, twice, and
# as the unprivileged user torpor-test. Needs the release build (agent, restorer, CLI).
test-engine: build
	$(CARGO) nextest run --release -p torpor-engine-suite -j 6 --no-fail-fast

# Real Slurm: each test binary starts its own cluster (munged, slurmctld, n1..n3) in /tmp.
test-slurm: build
	$(CARGO) test -p torpor-tests -- --nocapture

test: setup fmt-check clippy build $(addprefix test-,$(TEST_SUITES))
	@echo "make test: all suites passed ($(TEST_SUITES))"

demo: setup build
	bash scripts/demo.sh

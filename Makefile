# torpor: `make demo` and `make test` are the two commands a fresh machine needs (see README).
#
# `make test` runs, in order: setup, fmt check, clippy, release build, then every suite in
# TEST_SUITES as target `test-<suite>`. To add a suite: define `test-foo:` below and append
# `foo` to TEST_SUITES (one line each).

CARGO ?= cargo
PACKAGE_DIR ?= target/package
# `package` comes before `slurm`: test-slurm's slurm_installed runs the cluster on the .deb
# that test-package installed.
TEST_SUITES := unit engine package slurm fuzz

.PHONY: all setup fmt-check clippy build package install-package lint-package test demo bench $(addprefix test-,$(TEST_SUITES))

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

# The .deb and .rpm, from the release build, into $(PACKAGE_DIR) (see packaging/build-packages.sh).
package: build
	bash packaging/build-packages.sh target/release $(PACKAGE_DIR)

# Installs the .deb on this machine (root): CLI in /usr/bin, plugin, agent, restorer in
# /usr/lib/torpor, /etc/slurm/plugstack.conf.d/torpor.conf.
install-package: package
	dpkg -i $(PACKAGE_DIR)/torpor_*.deb

# Optional (not in CI): Debian's policy checker, `apt-get install lintian` first.
lint-package: package
	lintian --fail-on error,warning $(PACKAGE_DIR)/torpor_*.deb

# What the packages hold (dpkg-deb, rpm -qlp); then the .deb installed, removed, reinstalled,
# purged and installed (it stays installed): test-slurm's slurm_installed then runs a
# checkpointed job through the installed plugin.
test-package: package
	$(CARGO) test -p torpor-tests --test package_contents -- --nocapture
	bash packaging/test-deb-lifecycle.sh $(PACKAGE_DIR)/torpor_*.deb

# Real Slurm: each test binary starts its own cluster (munged, slurmctld, n1..n3) in /tmp.
test-slurm: build
	$(CARGO) test -p torpor-tests -- --nocapture

# Fuzzing (cargo-fuzz, libFuzzer) of the image decoder and of option/config parsing:
# each target runs FUZZ_SECS seconds from the seeds in fuzz/seeds plus the corpus kept in
# target/fuzz-corpus. Builds on the pinned stable toolchain with --sanitizer none.
FUZZ_SECS ?= 30
FUZZ_TARGETS := image_decode config_parse
test-fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install --locked cargo-fuzz
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		mkdir -p ../target/fuzz-corpus/$$t && \
		$(CARGO) fuzz run --sanitizer none -O $$t ../target/fuzz-corpus/$$t seeds/$$t -- \
			-max_total_time=$(FUZZ_SECS) -rss_limit_mb=2048 -timeout=10 || exit 1; \
	done

test: setup fmt-check clippy build $(addprefix test-,$(TEST_SUITES))
	@echo "make test: all suites passed ($(TEST_SUITES))"

demo: setup build
	bash scripts/demo.sh

# Benchmark (issue 7), not a test: machine limits (dd, memcpy), then checkpoint/restore of
# 1 and 4 GiB programs, printed against those limits and the targets; JSON in
# target/bench/results.json. `make bench BENCH_ARGS=--quick` runs 256 MiB only.
BENCH_ARGS ?=
bench: build
	$(CARGO) run --release -p torpor-bench -- $(BENCH_ARGS)

# Huddle: the two commands are `make run` and `make test` (see README.md).

CARGO ?= cargo
CONFIG ?=

.PHONY: run test build lint test-rust test-browser deps-build deps-test clean yocto-crates \
	test-aarch64 deps-aarch64 size-aarch64 bench fuzz soak

## Build and start the service with its embedded defaults (or CONFIG=file.toml).
run: deps-build
	$(CARGO) build --release --locked
	./target/release/huddle $(if $(CONFIG),--config $(CONFIG),)

## Install what the tests need and run every test.
test: deps-test lint test-rust test-browser

build: deps-build
	$(CARGO) build --locked

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

test-rust:
	$(CARGO) test --locked

# Real browser (Debian Chromium) with the unmodified Flashphoner Web SDK.
# `cargo test --no-run` builds target/debug/huddle with the test build's features (the
# dev-dependencies unify some): a plain `cargo build` would compile the tree once more.
test-browser:
	$(CARGO) test --locked --no-run
	HUDDLE_BIN=$(CURDIR)/target/debug/huddle HUDDLE_E2E_REQUIRE_FIREFOX=1 node --test tests/browser/*.test.mjs

## Benchmarks, figures into docs/benchmarks.md: the SFU (one publisher -> 1, 10, 30
## players), the device's own stream (test pattern + tone: encoder vs Huddle's CPU;
## its gst-launch-1.0 references need gstreamer1.0-tools) and the RTMP edge (an ffmpeg
## publisher to WebRTC and RTMP players: video path, AAC <-> Opus, RSS per session;
## ffmpeg and avdec_aac from gstreamer1.0-libav) and recording (CPU and RSS per
## recorded RTMP stream, the offline room mix's speed), and the SFU side by side with
## Janus VideoRoom (Debian's janus; in a network namespace the bench makes: needs root
## or unprivileged user namespaces).
bench: deps-build
	scripts/install-deps.sh bench
	$(CARGO) bench --locked --bench sfu
	$(CARGO) bench --locked --bench device
	$(CARGO) bench --locked --bench rtmp
	$(CARGO) bench --locked --bench record
	$(CARGO) bench --locked --bench speaker
	$(CARGO) bench --locked --bench janus

## Coverage-guided fuzzing (cargo-fuzz/libFuzzer) of every parser that sees outside
## bytes, FUZZ_SECONDS each (default 60); `make test` replays the corpora instead.
fuzz: deps-build
	scripts/fuzz.sh

## Soak: a compressed multi-day life (WebRTC members joining, publishing, playing,
## chatting, leaving and vanishing; RTMP publishers and players; recordings; the
## device's stream; hostile probes) for SOAK_SECONDS (default 3600), sampled every 10 s;
## passes when every count is back to idle and RSS within 5 % of its warm-up value.
## Figures and docs/soak.svg into docs/reliability.md (runs of 20 minutes or more).
SOAK_SECONDS ?= 3600
soak: deps-build
	scripts/install-deps.sh soak
	HUDDLE_SOAK_SECONDS=$(SOAK_SECONDS) $(CARGO) bench --locked --bench soak

## Cross-build for aarch64 (Debian rustc-web) and run the Rust tests under qemu-user.
test-aarch64: deps-test deps-aarch64
	scripts/aarch64.sh test

deps-aarch64:
	scripts/aarch64.sh deps

## Stripped aarch64 release binary size.
size-aarch64: deps-aarch64
	scripts/aarch64.sh size

## Regenerate yocto/meta-huddle/.../huddle-crates.inc after a Cargo.lock change.
yocto-crates:
	python3 scripts/yocto-crates.py

deps-build:
	scripts/install-deps.sh build

deps-test:
	scripts/install-deps.sh test

clean:
	$(CARGO) clean
	rm -rf tests/browser/node_modules

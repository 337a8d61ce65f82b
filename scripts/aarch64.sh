#!/usr/bin/env bash
# aarch64 (arm64) builds of Huddle on a Debian 12 x86_64 host, tests under qemu-user.
# See /work/shared/recipes/aarch64-cross.md for the recipe this follows.
#
#   scripts/aarch64.sh deps    # idempotent: arm64 multiarch + cross toolchain + qemu-user-static
#   scripts/aarch64.sh build   # cargo build --target aarch64-unknown-linux-gnu (debug)
#   scripts/aarch64.sh test    # cargo test  --target aarch64-unknown-linux-gnu, run under qemu
#   scripts/aarch64.sh size    # release build, prints the stripped binary size
#
# Extra arguments after `build`/`test` go to cargo, e.g. `scripts/aarch64.sh test --test cli`.
#
# Why not rustup: the rustup toolchain here is x86_64-only and cannot add targets. Debian's
# `rustc-web` (1.96) plus `libstd-rust-web-dev:arm64` can, driven by the normal (rustup) `cargo`
# with RUSTC/RUSTDOC pointing at /usr/bin. Everything target-specific is passed through
# environment variables for this invocation only, with its own target dir (target/aarch64), so
# host builds (`make build`, `make test`) are neither affected nor invalidated. There is
# deliberately no committed .cargo/config.toml.
set -euo pipefail

cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
TARGET_DIR=${HUDDLE_AARCH64_TARGET_DIR:-$PWD/target/aarch64}
DEB_RUSTC=/usr/bin/rustc
DEB_RUSTDOC=/usr/bin/rustdoc
QEMU=qemu-aarch64-static

# Host (amd64) packages: Debian's rustc 1.96 (also pulls libstd-rust-web-dev for amd64, used
# for build scripts and proc macros), the aarch64 cross gcc (linker) and its libc, qemu-user.
HOST_PACKAGES=(rustc-web gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static)
# Target (arm64, multiarch) packages: the aarch64 Rust standard library (pulls libc6:arm64,
# which qemu-user uses as the dynamic loader / runtime libraries, no -L needed).
ARM64_PACKAGES=(libstd-rust-web-dev:arm64)
# When the crate gains C dependencies, add their arm64 -dev packages here (one line), e.g.:
#   ARM64_PACKAGES+=(libasound2-dev:arm64 libopus-dev:arm64 libgstreamer1.0-dev:arm64)
#   HOST_PACKAGES+=(pkg-config libclang-dev)
# and export PKG_CONFIG_aarch64_unknown_linux_gnu=aarch64-linux-gnu-pkg-config (and
# GST_REGISTRY_FORK=no for GStreamer under qemu) in cross_env below.
# PITFALL (recipe): libgstreamer-plugins-base1.0-dev is NOT Multi-Arch in bookworm: installing
# the :arm64 one REMOVES the amd64 one (and the reverse), breaking host builds. Do not add it
# here; instead `apt-get download` the arm64 .deb, `dpkg-deb -x` it into a private folder, point
# PKG_CONFIG_PATH_aarch64_unknown_linux_gnu at its usr/lib/aarch64-linux-gnu/pkgconfig, and give
# the linker a folder of .so symlinks to the arm64 runtime libraries
# (CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-L native=<folder>"; changing these
# rustflags rebuilds every aarch64 crate). Only gstreamer-app/-video/-audio need it.

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
    echo "aarch64: not root and no sudo" >&2
  fi
fi

deps() {
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    echo "aarch64: dpkg --add-architecture arm64"
    "${SUDO[@]}" dpkg --add-architecture arm64
  fi
  # The arm64 libraries are Multi-Arch: same, so their amd64 twins must be the same version:
  # apt may upgrade some amd64 packages (the recipe saw ~30, e.g. libc6, libgcc-s1,
  # libstdc++6, liblzma5, libxml2, zlib1g) and pulls ~370 MB. Nothing is removed; `rustc-web`
  # "Conflicts: rustup" only concerns Debian's rustup *package*, not a rustup.rs install in
  # ~/.cargo (which stays first on PATH, checked below). A newly added architecture always
  # leaves its :arm64 packages missing, so install-deps runs `apt-get update` then.
  scripts/install-deps.sh packages "${HOST_PACKAGES[@]}" "${ARM64_PACKAGES[@]}"
  check_tools
}

# The Debian compiler must only be used through RUSTC=/usr/bin/rustc for the aarch64 build:
# `cargo`/`rustc` on PATH must stay the host's (rustup) toolchain.
check_tools() {
  local ok=1
  for tool in "$DEB_RUSTC" "$DEB_RUSTDOC" aarch64-linux-gnu-gcc aarch64-linux-gnu-strip "$QEMU"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "aarch64: missing $tool (run: $0 deps)" >&2; ok=0; }
  done
  [ "$ok" -eq 1 ] || exit 1
  if ! "$DEB_RUSTC" --print target-libdir --target "$TARGET" >/dev/null 2>&1 ||
    [ ! -d "$("$DEB_RUSTC" --print target-libdir --target "$TARGET")" ]; then
    echo "aarch64: $DEB_RUSTC has no $TARGET standard library (libstd-rust-web-dev:arm64)" >&2
    exit 1
  fi
  local path_rustc
  path_rustc=$(command -v rustc || true)
  if [ "$path_rustc" = "$DEB_RUSTC" ] || [ "$(command -v cargo || true)" = /usr/bin/cargo ]; then
    echo "aarch64: warning: 'rustc'/'cargo' on PATH is Debian's ($path_rustc); put the rustup" \
      "toolchain (~/.cargo/bin) before /usr/bin in PATH for host builds" >&2
  fi
  echo "aarch64: host   $(cargo --version) / $(rustc --version) ($path_rustc)"
  echo "aarch64: target $("$DEB_RUSTC" --version) ($DEB_RUSTC) for $TARGET"
}

# Environment for one cross cargo invocation (nothing is written to .cargo/config.toml).
cross_env() {
  export RUSTC=$DEB_RUSTC RUSTDOC=$DEB_RUSTDOC
  export CARGO_TARGET_DIR=$TARGET_DIR
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
  # Test binaries cannot be exec'd directly (no binfmt_misc here): always via the runner.
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=$QEMU
  # Integration tests spawn target/aarch64/.../huddle themselves: through qemu as well
  # (tests/support/process.rs).
  export HUDDLE_TEST_EXEC_WRAPPER=$QEMU
  # Host RUSTFLAGS (if any) must not leak into the target build.
  unset RUSTFLAGS CARGO_BUILD_TARGET
}

timed() {
  local start=$SECONDS
  "$@"
  echo "aarch64: '$*' took $((SECONDS - start)) s"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  deps)
    timed deps
    ;;
  build)
    check_tools
    cross_env
    timed cargo build --locked --target "$TARGET" "$@"
    ;;
  test)
    check_tools
    cross_env
    # Build first so the two phases are timed separately.
    timed cargo test --locked --target "$TARGET" --no-run "$@"
    # --no-fail-fast: report every failing test binary, not only the first.
    timed cargo test --locked --target "$TARGET" --no-fail-fast "$@"
    ;;
  size)
    check_tools
    cross_env
    timed cargo build --locked --release --target "$TARGET" --bin huddle "$@"
    bin=$TARGET_DIR/$TARGET/release/huddle
    stripped=$TARGET_DIR/$TARGET/release/huddle.stripped
    cp "$bin" "$stripped"
    aarch64-linux-gnu-strip "$stripped"
    file "$stripped" 2>/dev/null || true
    bytes=$(stat -c %s "$stripped")
    echo "aarch64: release $(stat -c %s "$bin") bytes unstripped;" \
      "stripped $bytes bytes ($(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }') MiB): $stripped"
    ;;
  *)
    echo "usage: $0 deps|build|test|size [cargo args]" >&2
    exit 2
    ;;
esac

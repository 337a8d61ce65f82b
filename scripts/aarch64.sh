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
# for build scripts and proc macros), the aarch64 cross gcc (linker) and its libc, qemu-user,
# pkg-config, and libclang for bindgen (v4l2-sys-mit runs it on linux/videodev2.h).
HOST_PACKAGES=(rustc-web gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static
  pkg-config libclang-dev)
# Target (arm64, multiarch, all "Multi-Arch: same", so they sit beside their amd64 twins):
# - the aarch64 Rust standard library (pulls libc6:arm64, which qemu-user uses as the dynamic
#   loader / runtime libraries, no -L needed);
# - the C libraries the crate links: alsa-sys (libasound2-dev), audiopus_sys (libopus-dev),
#   gstreamer/-base/glib/gobject-sys (libgstreamer1.0-dev, pulls libglib2.0-dev, libc6-dev and
#   linux-libc-dev:arm64, whose asm/ headers bindgen needs), gstreamer-app-sys's runtime library
#   (libgstreamer-plugins-base1.0-0; its -dev package: see PITFALL below);
# - the GStreamer plugins tests/device_h264.rs runs under qemu: videotestsrc, videoconvert,
#   appsrc/appsink (base), x264enc (ugly), h264parse (bad), rtph264depay/rtpjitterbuffer (good),
#   avdec_h264 (libav), clockoverlay (x, used by the device's test-pattern pipeline).
#   ffmpeg/ffprobe run as host binaries.
ARM64_PACKAGES=(libstd-rust-web-dev:arm64
  libasound2-dev:arm64 libopus-dev:arm64 libgstreamer1.0-dev:arm64
  libgstreamer-plugins-base1.0-0:arm64
  gstreamer1.0-plugins-base:arm64 gstreamer1.0-plugins-good:arm64
  gstreamer1.0-plugins-bad:arm64 gstreamer1.0-plugins-ugly:arm64
  gstreamer1.0-libav:arm64 gstreamer1.0-x:arm64)
# PITFALL (recipe): libgstreamer-plugins-base1.0-dev is NOT Multi-Arch in bookworm: installing
# the :arm64 one REMOVES the amd64 one (and the reverse), breaking host builds. It is not in the
# list above; deps also refuses any apt run that would remove a package (see apt_guard).
# Instead (arm64_pbase_dev) the arm64 .deb is `apt-get download`ed (same version as the
# installed libgstreamer-plugins-base1.0-0:arm64) and `dpkg-deb -x`ed into a private folder,
# $ARM64_PBASE_DEV. Its .so dev symlinks (libgstapp-1.0.so -> libgstapp-1.0.so.0...) are
# re-pointed at the real arm64 runtime libraries in /usr/lib/aarch64-linux-gnu, and `libdir`
# of its private .pc files at that folder of symlinks, so pkg-config itself hands the linker
# `-L <folder> -lgstapp-1.0`. That is the recipe's "-L native=<folder>" without target
# rustflags (changing those would rebuild every aarch64 crate); only gstreamer-app (and
# -video/-audio, should the crate gain them) use these .pc files.
ARM64_PBASE_DEV=$TARGET_DIR/arm64-dev/libgstreamer-plugins-base1.0-dev
ARM64_LIBDIR=/usr/lib/aarch64-linux-gnu

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
  # libstdc++6, liblzma5, libxml2, zlib1g; the GStreamer plugins ~50 more) and pulls a few
  # hundred MB. Nothing may be removed (apt_guard). `rustc-web` "Conflicts: rustup" only
  # concerns Debian's rustup *package*, not a rustup.rs install in ~/.cargo (which stays first
  # on PATH, checked below). A newly added architecture always leaves its :arm64 packages
  # missing, so install-deps runs `apt-get update` then.
  apt_guard "${HOST_PACKAGES[@]}" "${ARM64_PACKAGES[@]}"
  scripts/install-deps.sh packages "${HOST_PACKAGES[@]}" "${ARM64_PACKAGES[@]}"
  arm64_pbase_dev
  check_host_dev
  check_tools
}

# Refuses to let apt remove anything (e.g. an amd64 -dev package that is not Multi-Arch):
# when packages are missing, simulates their installation first and stops if the simulation
# removes a package. Nothing happens when everything is installed already.
apt_guard() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$pkg")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  "${SUDO[@]}" apt-get update -qq
  local sim removed
  sim=$(LC_ALL=C apt-get install -s --no-install-recommends "${missing[@]}")
  removed=$(sed -n 's/^Remv \([^ ]*\).*/\1/p' <<<"$sim")
  if [ -n "$removed" ]; then
    echo "aarch64: refusing to install ${missing[*]}: apt would remove:" $removed >&2
    exit 1
  fi
}

# The private copy of libgstreamer-plugins-base1.0-dev:arm64 (see PITFALL above), redone only
# when the installed libgstreamer-plugins-base1.0-0:arm64 changes version. Also run by
# build/test/size (a stamp check; needs no root), as it lives in the target dir, which
# `cargo clean` or another HUDDLE_AARCH64_TARGET_DIR leaves without it.
arm64_pbase_dev() {
  local version stamp=$ARM64_PBASE_DEV/.huddle-version
  if ! version=$(dpkg-query -W -f='${Version}' libgstreamer-plugins-base1.0-0:arm64 2>/dev/null) ||
    [ -z "$version" ]; then
    echo "aarch64: libgstreamer-plugins-base1.0-0:arm64 is not installed (run: $0 deps)" >&2
    exit 1
  fi
  [ "$(cat "$stamp" 2>/dev/null)" = "$version" ] && return 0
  echo "aarch64: libgstreamer-plugins-base1.0-dev:arm64 $version -> $ARM64_PBASE_DEV (private)"
  local download=$TARGET_DIR/arm64-dev/download
  rm -rf "$download" "$ARM64_PBASE_DEV"
  mkdir -p "$download" "$ARM64_PBASE_DEV"
  # Unprivileged download into the current folder; does not touch dpkg's database.
  (cd "$download" && apt-get -qq -o APT::Sandbox::User="$(id -un)" download \
    "libgstreamer-plugins-base1.0-dev:arm64=$version")
  dpkg-deb -x "$download"/libgstreamer-plugins-base1.0-dev_*_arm64.deb "$ARM64_PBASE_DEV"
  rm -rf "$download"
  local libdir=$ARM64_PBASE_DEV$ARM64_LIBDIR link target
  for link in "$libdir"/lib*.so; do
    target=$(readlink "$link")
    if [ ! -e "$ARM64_LIBDIR/$target" ]; then
      echo "aarch64: $ARM64_LIBDIR/$target missing (arm64 runtime of $(basename "$link"))" >&2
      exit 1
    fi
    ln -sfn "$ARM64_LIBDIR/$target" "$link"
  done
  sed -i "s|^libdir=.*|libdir=$libdir|" "$libdir"/pkgconfig/*.pc
  echo "$version" >"$stamp"
}

# The host (amd64) build needs libgstreamer-plugins-base1.0-dev:amd64; nothing here may have
# replaced it by the arm64 one.
check_host_dev() {
  local status
  status=$(dpkg-query -W -f='${Status} ${Architecture}' libgstreamer-plugins-base1.0-dev 2>/dev/null || true)
  if [ "$status" != "install ok installed amd64" ]; then
    echo "aarch64: warning: libgstreamer-plugins-base1.0-dev (amd64, host builds) is not installed" \
      "(${status:-absent}); install it: apt-get install libgstreamer-plugins-base1.0-dev:amd64" >&2
  fi
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
  # pkg-config (alsa-sys, audiopus_sys, gstreamer*-sys, glib/gobject-sys) for the target only:
  # the pkg-config crate reads these *_aarch64_unknown_linux_gnu variables in build scripts
  # of target crates; host build scripts keep the amd64 defaults. The arm64 .pc files: the
  # multiarch folder, the private libgstreamer-plugins-base1.0-dev (gstreamer-app-1.0.pc) and
  # the arch-independent ones; none of the amd64 folders (LIBDIR replaces the default path).
  # ALLOW_CROSS: host pkg-config with the arm64 LIBDIR is cross-aware enough. A failed
  # lookup must not pass quietly (audiopus_sys would then build its bundled libopus for the
  # host and fail much later at link time): check_target_libs below.
  export PKG_CONFIG_ALLOW_CROSS_aarch64_unknown_linux_gnu=1
  export PKG_CONFIG_LIBDIR_aarch64_unknown_linux_gnu=$ARM64_PBASE_DEV$ARM64_LIBDIR/pkgconfig:$ARM64_LIBDIR/pkgconfig:/usr/share/pkgconfig
  export PKG_CONFIG_PATH_aarch64_unknown_linux_gnu=
  # bindgen (v4l2-sys-mit on linux/videodev2.h, through the host's libclang): for the aarch64
  # target, and from the cross toolchain's headers (libc6-dev-arm64-cross,
  # linux-libc-dev-arm64-cross: what aarch64-linux-gnu-gcc compiles against), all of them,
  # checked with clang -H. bindgen would add --target by itself and libclang happened to find
  # the same folder through gcc-cross, giving identical bindings; spelled out so it cannot fall
  # back to a mix with the amd64 /usr/include.
  export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--target=aarch64-linux-gnu -isystem /usr/aarch64-linux-gnu/include"
  # GStreamer inside the test binaries under qemu: qemu-user cannot fork-exec the arm64
  # gst-plugin-scanner helper, so plugins are scanned in-process; the arm64 plugin folder
  # (the library's compiled-in default, set so that a host GST_PLUGIN_* cannot leak in);
  # a registry of its own under the target dir (the first scan under qemu adds ~3 s).
  export GST_REGISTRY_FORK=no
  export GST_REGISTRY=$TARGET_DIR/gstreamer-registry.aarch64.bin
  export GST_PLUGIN_SYSTEM_PATH=$ARM64_LIBDIR/gstreamer-1.0
  unset GST_PLUGIN_PATH GST_PLUGIN_PATH_1_0 GST_PLUGIN_SYSTEM_PATH_1_0 GST_PLUGIN_SCANNER \
    GST_PLUGIN_SCANNER_1_0 GST_REGISTRY_1_0
}

# The arm64 pkg-config modules the crate links (alsa-sys, audiopus_sys, gstreamer-sys,
# gstreamer-base-sys, gstreamer-app-sys; glib/gobject come with them), looked up exactly as
# the build scripts will: a clear message now instead of a build script failing later.
check_target_libs() {
  local module missing=()
  for module in alsa opus gstreamer-1.0 gstreamer-base-1.0 gstreamer-app-1.0; do
    PKG_CONFIG_LIBDIR=$PKG_CONFIG_LIBDIR_aarch64_unknown_linux_gnu PKG_CONFIG_PATH= \
      pkg-config --exists "$module" || missing+=("$module")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "aarch64: no arm64 pkg-config module ${missing[*]} (run: $0 deps)" >&2
    exit 1
  fi
}

timed() {
  local start=$SECONDS rc=0
  "$@" || rc=$?
  echo "aarch64: '$*' took $((SECONDS - start)) s$([ "$rc" -eq 0 ] || echo " (exit $rc)")"
  return "$rc"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  deps)
    timed deps
    ;;
  build)
    check_tools
    arm64_pbase_dev
    cross_env
    check_target_libs
    timed cargo build --locked --target "$TARGET" "$@"
    ;;
  test)
    check_tools
    arm64_pbase_dev
    cross_env
    check_target_libs
    # Build first so the two phases are timed separately.
    timed cargo test --locked --target "$TARGET" --no-run "$@"
    # --no-fail-fast: report every failing test binary, not only the first.
    timed cargo test --locked --target "$TARGET" --no-fail-fast "$@"
    ;;
  size)
    check_tools
    arm64_pbase_dev
    cross_env
    check_target_libs
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

#!/usr/bin/env bash
# Installs what Huddle needs on Debian 12, idempotently: only missing packages are
# installed, and `apt-get update` runs only when something is missing.
#
#   scripts/install-deps.sh build   # compile the service
#   scripts/install-deps.sh packages NAME...   # only these Debian packages
#   scripts/install-deps.sh bench   # + what `make bench` runs besides the service: GStreamer's
#                                   #   tools, ffmpeg, Janus (benches/janus.rs), ip/unshare
#   scripts/install-deps.sh soak    # + ffmpeg (RTMP clients) and gnuplot (the soak's plot)
#   scripts/install-deps.sh test    # + headless Chromium, Node.js and the browser tests' npm
#                                   #   packages, systemd-analyze, oelint-adv (in a venv)
set -euo pipefail

cd "$(dirname "$0")/.."

# Build: the C libraries of the device's camera and microphone (GStreamer, ALSA, Opus;
# libclang for the v4l crate's bindgen). Run time (`make run` starts the test pattern):
# GStreamer's videotestsrc/videoconvert (base), h264parse and voaacenc (bad), x264enc
# (ugly), clockoverlay (x), v4l2src and the RTP elements (good), alsasrc (alsa),
# avdec_aac (libav: RTMP publishers' AAC); ffmpeg and a font for the offline room mix.
BUILD_PACKAGES=(build-essential pkg-config ca-certificates
  libasound2-dev libopus-dev libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libclang-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-x gstreamer1.0-alsa gstreamer1.0-libav
  ffmpeg fonts-dejavu-core)
# Tests: browsers, systemd-analyze, oelint (python venv), the media tools that check
# the device's H.264 and Opus (avdec_h264 from libav, ffmpeg/ffprobe, gst-inspect), the
# Prometheus parser that reads /metrics (tests/metrics.rs), ip/unshare (iproute2,
# util-linux) for tests/api.rs's non-loopback client, libfaketime (faketime) for the
# clock jumping under the service (tests/clock_jump.rs); the OpenAPI validator is a
# PyPI package in a venv (below).
TEST_PACKAGES=(chromium firefox-esr fonts-liberation systemd python3 python3-venv
  gstreamer1.0-libav gstreamer1.0-tools alsa-utils ffmpeg python3-prometheus-client
  iproute2 util-linux curl faketime)
# Benchmarks: gst-launch-1.0 (benches/device.rs's references), avdec_aac and ffmpeg (the
# RTMP and recording benches), Janus VideoRoom side by side with the SFU (benches/janus.rs,
# in a network namespace of its own: ip and unshare from iproute2 and util-linux).
BENCH_PACKAGES=(gstreamer1.0-tools gstreamer1.0-libav ffmpeg janus iproute2 util-linux)
# Soak (benches/soak.rs): ffmpeg as RTMP publishers and players, gnuplot for its plot.
SOAK_PACKAGES=(ffmpeg gnuplot-nox)

want=()
if [ "${1:-}" = packages ]; then
  # scripts/install-deps.sh packages NAME...: just these Debian packages (scripts/aarch64.sh).
  shift
  want=("$@")
  set --
fi
for group in "$@"; do
  case "$group" in
    build) want+=("${BUILD_PACKAGES[@]}") ;;
    test) want+=("${BUILD_PACKAGES[@]}" "${TEST_PACKAGES[@]}") ;;
    bench) want+=("${BUILD_PACKAGES[@]}" "${BENCH_PACKAGES[@]}") ;;
    soak) want+=("${BUILD_PACKAGES[@]}" "${SOAK_PACKAGES[@]}") ;;
    *) echo "install-deps: unknown group '$group' (build, test, bench, soak)" >&2; exit 2 ;;
  esac
done

# Node.js 18 or newer runs the browser tests; Debian 12's nodejs is 18.
node_ok() {
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 &&
    [ "$(node -p 'process.versions.node.split(".")[0]')" -ge 18 ]
}
if [[ " $* " == *" test "* ]] && ! node_ok; then
  want+=(nodejs npm)
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
    echo "install-deps: not root and no sudo; install these yourself: ${want[*]}" >&2
  fi
fi

missing=()
for pkg in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  # A first dpkg run has been seen failing with "cannot access archives": retry once.
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [[ " $* " == *" test "* ]]; then
  # npm packages of the browser tests (the Flashphoner Web SDK, playwright-core),
  # from the committed lockfile; redone only when the lockfile changes.
  stamp=tests/browser/node_modules/.huddle-lock-stamp
  if [ ! -f "$stamp" ] || ! cmp -s tests/browser/package-lock.json "$stamp"; then
    echo "install-deps: npm ci in tests/browser"
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
    cp tests/browser/package-lock.json "$stamp"
  fi
fi

if [[ " $* " == *" test "* ]]; then
  # oelint-adv (PyPI) lints yocto/meta-huddle in tests/yocto.rs, openapi-spec-validator
  # checks docs/openapi.json in tests/api.rs (Debian 12 packages neither). Pinned, with the
  # rule data oelint reads, in a venv under target/ (Debian's Python is externally managed,
  # PEP 668); redone only when the pins change.
  venv=target/oelint-venv
  oelint_pins="oelint-adv==9.11.2 oelint-parser==8.13.2 oelint-data==1.5.26 openapi-spec-validator==0.7.2"
  if [ ! -x "$venv/bin/oelint-adv" ] || [ "$(cat "$venv/.huddle-pins" 2>/dev/null)" != "$oelint_pins" ]; then
    echo "install-deps: $oelint_pins into $venv"
    mkdir -p target
    /usr/bin/python3 -m venv "$venv"
    # shellcheck disable=SC2086 # the pins are separate words
    "$venv/bin/pip" install --quiet --disable-pip-version-check $oelint_pins
    echo "$oelint_pins" > "$venv/.huddle-pins"
  fi
fi

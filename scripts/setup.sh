#!/usr/bin/env bash
# Install what diffusion needs to build and run on Debian/Ubuntu (as root, or through sudo), then
# configure and build it in ./build. Safe to run again: apt-get skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(build-essential cmake pkg-config zlib1g-dev libopenblas-dev liblapacke-dev libcjson-dev
      libgif-dev libcairo2-dev libstb-dev dataset-fashion-mnist)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# CUDA is built when nvcc and cuDNN are found (override: DIFFUSION_CUDA=ON|OFF|AUTO).
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DDIFFUSION_CUDA="${DIFFUSION_CUDA:-AUTO}" >/dev/null
cmake --build build -j"$(nproc)"

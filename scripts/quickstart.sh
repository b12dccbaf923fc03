#!/usr/bin/env bash
# The main job, from a fresh machine: install and build (scripts/setup.sh), train a small UNet on
# Fashion-MNIST (Debian's dataset-fashion-mnist), then write sample grids with DDPM (at the end of
# training) and DDIM. On a GPU (when the build found CUDA and a device) it trains on the GPU.
# Environment: OUT (run folder, default runs/quickstart), EPOCHS, LIMIT, CHANNELS to change the size.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-runs/quickstart}
EPOCHS=${EPOCHS:-2}
LIMIT=${LIMIT:-20000}
CHANNELS=${CHANNELS:-16}
start=$(date +%s)
./build/diffusion train --data fashion-mnist --limit "$LIMIT" --epochs "$EPOCHS" --channels "$CHANNELS" \
  --samples 16 --out "$OUT"
./build/diffusion sample --checkpoint "$OUT/model.safetensors" --sampler ddim --steps 20 --n 16 \
  --out "$OUT/samples-ddim.png"
echo "done in $(( $(date +%s) - start )) s: $OUT/samples.png (DDPM), $OUT/samples-ddim.png (DDIM-20), $OUT/loss.png"

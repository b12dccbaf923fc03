#!/usr/bin/env bash
# Ours beside the PyTorch peer on the CPU, in one run: `diffusion bench --device cpu` and the
# peer (../shared/peer/torch_unet_peer.py, given as the argument) with the same thread count,
# once with 1 thread and once with all cores. Prints one table (ms, median of five) and the
# ratio torch / ours (above 1: we are faster). Needs a built ./build/diffusion and python3 with
# torch (Debian's python3-torch: PYTHON=/usr/bin/python3, the default). Both sides run in the
# same environment (OpenMP's default wait policy, unless the caller sets one for both).
#   bench/cpu_compare.sh PEER_SCRIPT [MIN_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
PEER=${1:?usage: bench/cpu_compare.sh PATH/TO/torch_unet_peer.py [MIN_SECONDS]}
MIN=${2:-2}
PY=${PYTHON:-/usr/bin/python3}
D=./build/diffusion
[ -x "$D" ] || { echo "cpu_compare: build first (bash scripts/setup.sh)" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
echo "CPU: $cpu, $(nproc) cores; $($PY -c 'import torch; print("torch", torch.__version__)')"
printf "%-8s %-12s %6s %12s %12s %8s\n" threads work batch "ours ms" "torch ms" ratio
for th in 1 "$(nproc)"; do
  OMP_NUM_THREADS=$th $D bench --device cpu --min-time "$MIN" --json "$tmp/ours.json" >/dev/null
  OMP_NUM_THREADS=$th $PY "$PEER" --device cpu --min-s "$MIN" --json "$tmp/peer.json" >/dev/null
  $PY - "$tmp/ours.json" "$tmp/peer.json" "$th" <<'PYEOF'
import json, sys
ours = {(r["task"], r["batch"]): r["ms"] for r in json.load(open(sys.argv[1]))["rows"]}
peer = {(r["task"], r["batch"]): r["ms"] for r in json.load(open(sys.argv[2]))["rows"] if r["mode"] == "eager"}
for k in sorted(ours):
    p = peer.get(k)
    print("%-8s %-12s %6d %12.2f %12s %8s" % (sys.argv[3], k[0], k[1], ours[k],
          "%.2f" % p if p else "-", "%.2f" % (p / ours[k]) if p else "-"))
PYEOF
done

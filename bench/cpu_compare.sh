#!/usr/bin/env bash
# Ours beside the PyTorch peer on the CPU, in one run: `diffusion bench --device cpu` and the
# peer (../shared/peer/torch_unet_peer.py, given as the argument) with the same thread count,
# with 1 thread and with all cores. Prints one table (ms) and the ratio torch / ours (above 1: we
# are faster). Needs a built ./build/diffusion and python3 with torch (Debian's python3-torch:
# PYTHON=/usr/bin/python3, the default). Both sides run in the same environment (OpenMP's
# default wait policy, unless the caller sets one for both).
#
#   bench/cpu_compare.sh [--rounds R] [--before VAR=VALUE|BINARY] PEER_SCRIPT [MIN_SECONDS]
#     --rounds R          R rounds (default 1), interleaved: per thread count, round after round
#                         of [ours, ours with --before, the peer]. Each entry is the median over
#                         the rounds of each run's median of five timings; with R > 1 the range
#                         over the rounds follows it, because a shared machine can move a
#                         two-thread row by 20% between rounds.
#     --before VAR=VALUE  also time ours with VAR=VALUE in the environment (for example
#                         DIFFUSION_CPU_CONV=gemm, the convolutions without Winograd) and add its
#                         column and the ratio before / now
#     --before BINARY     the same with another build's diffusion program (an older commit
#                         built in a git worktree, say) in place of ours
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=1
BEFORE=""
while [ $# -gt 0 ]; do
  case "$1" in
  --rounds) ROUNDS="${2:?--rounds needs a number}"; shift 2 ;;
  --before) BEFORE="${2:?--before needs VAR=VALUE}"; shift 2 ;;
  -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
  -*) echo "cpu_compare: unknown option $1" >&2; exit 2 ;;
  *) break ;;
  esac
done
case "$ROUNDS" in '' | *[!0-9]* | 0) echo "cpu_compare: --rounds wants a whole number from 1, got '$ROUNDS'" >&2; exit 2 ;; esac
BEFORE_BIN=""
if [ -n "$BEFORE" ] && [ -f "$BEFORE" ] && [ -x "$BEFORE" ]; then
  BEFORE_BIN=$BEFORE
else
  case "$BEFORE" in '' | [A-Za-z_]*=*) ;; *) echo "cpu_compare: --before wants VAR=VALUE or a diffusion program, got '$BEFORE'" >&2; exit 2 ;; esac
fi
PEER=${1:?usage: bench/cpu_compare.sh [--rounds R] [--before VAR=VALUE] PATH/TO/torch_unet_peer.py [MIN_SECONDS]}
MIN=${2:-2}
PY=${PYTHON:-/usr/bin/python3}
D=./build/diffusion
[ -x "$D" ] || { echo "cpu_compare: build first (bash scripts/setup.sh)" >&2; exit 2; }
[ -f "$PEER" ] || { echo "cpu_compare: no peer script at $PEER" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
echo "CPU: $cpu, $(nproc) cores; $($PY -c 'import torch; print("torch", torch.__version__)'); $ROUNDS round(s) of $MIN s a measurement${BEFORE:+; before: $BEFORE}"
for th in 1 "$(nproc)"; do
  for r in $(seq "$ROUNDS"); do
    OMP_NUM_THREADS=$th $D bench --device cpu --min-time "$MIN" --json "$tmp/ours_${th}_$r.json" >/dev/null
    if [ -n "$BEFORE_BIN" ]; then
      OMP_NUM_THREADS=$th "$BEFORE_BIN" bench --device cpu --min-time "$MIN" \
        --json "$tmp/before_${th}_$r.json" >/dev/null
    elif [ -n "$BEFORE" ]; then
      env "$BEFORE" OMP_NUM_THREADS="$th" $D bench --device cpu --min-time "$MIN" \
        --json "$tmp/before_${th}_$r.json" >/dev/null
    fi
    OMP_NUM_THREADS=$th $PY "$PEER" --device cpu --min-s "$MIN" --json "$tmp/peer_${th}_$r.json" >/dev/null
  done
done
$PY - "$tmp" "$ROUNDS" "$(nproc)" "$BEFORE" <<'PYEOF'
import json, os, statistics, sys
tmp, rounds, ncpu, before = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

def rows(path, eager_only):
    out = {}
    for r in json.load(open(path))["rows"]:
        if not eager_only or r.get("mode") == "eager":
            out[(r["task"], r["batch"])] = r["ms"]
    return out

def cell(values):
    if not values:
        return "-"
    m = statistics.median(values)
    return "%.2f" % m if len(values) == 1 else "%.2f (%.1f-%.1f)" % (m, min(values), max(values))

head = "%-8s %-12s %6s %24s" % ("threads", "work", "batch", "ours ms")
if before:
    head += " %24s" % "before ms"
head += " %24s %8s" % ("torch ms", "torch/us")
if before:
    head += " %10s" % "before/us"
print(head)
for th in ("1", ncpu):
    runs = {k: [rows(os.path.join(tmp, "%s_%s_%d.json" % (k, th, r)), k == "peer")
                for r in range(1, rounds + 1)]
            for k in (("ours", "before", "peer") if before else ("ours", "peer"))}
    for key in sorted(runs["ours"][0]):
        col = {k: [run[key] for run in v if key in run] for k, v in runs.items()}
        us = statistics.median(col["ours"])
        line = "%-8s %-12s %6d %24s" % (th, key[0], key[1], cell(col["ours"]))
        if before:
            line += " %24s" % cell(col["before"])
        line += " %24s %8s" % (cell(col["peer"]),
                               "%.2f" % (statistics.median(col["peer"]) / us) if col["peer"] else "-")
        if before:
            line += " %10s" % ("%.2f" % (statistics.median(col["before"]) / us))
        print(line)
PYEOF

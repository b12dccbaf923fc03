#!/usr/bin/env bash
# The diffusion program with --device cuda on the CPU emulation of CUDA (tests/emu): the whole
# CUDA backend (cuda_backend.c, cuda_dnn.c, the kernels, cuBLAS and cuDNN stand-ins) with work
# deferred to the synchronisation points as on a GPU. A conditional 2-D model is trained for two
# epochs (recorded and replayed steps, batches uploaded while a step runs, validation, the step
# counter read back into the checkpoint), resumed, and sampled with DDPM, guided DDIM and in
# batches; every number is compared with the same commands on --device cpu. Then the error paths:
# no GPU, out of GPU memory.
# Usage: cli_emu.sh DIFFUSION_EMU_BINARY   (run by CTest as emu_cli)
set -u
D=$(realpath "${1:?diffusion-emu binary}")
W=$(mktemp -d "${TMPDIR:-/tmp}/cli_emu.XXXXXX")
trap 'rm -rf "$W"' EXIT
cd "$W"
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }
must() { if "$@" >out.log 2>err.log; then ok; else bad "$* -> exit $? ($(tail -3 err.log out.log))"; fi; }

# max |a - b| / max(1, |b|) over two DDRAW1 files (header 24 bytes, then float32) or over the
# loss column of two history.csv files; prints the value, fails on a shape mismatch
cmp_raw() {
  python3 - "$1" "$2" <<'EOF'
import struct, sys
def load(p):
    b = open(p, "rb").read()
    assert b[:6] == b"DDRAW1", p
    n = (len(b) - 24) // 4
    return b[6:24], struct.unpack("<%df" % n, b[24:24 + 4 * n])
ha, a = load(sys.argv[1]); hb, b = load(sys.argv[2])
if ha != hb or len(a) != len(b): print("shape-mismatch"); sys.exit()
print(max(abs(x - y) / max(1.0, abs(y)) for x, y in zip(a, b)))
EOF
}
cmp_hist() {
  python3 - "$1" "$2" <<'EOF'
import sys
def load(p):
    rows = [l.strip().split(",") for l in open(p)][1:]
    return [(r[0], r[1], r[2]) for r in rows], [float(r[3]) for r in rows]
ka, a = load(sys.argv[1]); kb, b = load(sys.argv[2])
if ka != kb or not a: print("rows-differ"); sys.exit()
print(max(abs(x - y) / max(1e-3, abs(y)) for x, y in zip(a, b)))
EOF
}
# within TOL (a number) or fail with WHAT
within() {
  local what=$1 got=$2 tol=$3
  if python3 -c "import sys; sys.exit(0 if float('$got') <= $tol else 1)" 2>/dev/null; then ok
  else bad "$what: $got (tolerance $tol)"; fi
}

# Emulated and CPU runs differ by float summation order only: TF32 does not exist in the
# emulation, so every product is FP32 on both sides.
TR=(train --data conditional-2d --limit 640 --conditional --batch 64 --epochs 2 --samples 0 --quiet)
must "$D" "${TR[@]}" --device cuda --out gpu
must "$D" "${TR[@]}" --device cpu --out cpu
grep -Eq '"device":[[:space:]]*"cuda"' gpu/config.json && ok || bad "the emulated run did not say cuda in config.json: $(grep device gpu/config.json)"
steps=$(grep -c '^batch,' cpu/history.csv)
[ "$steps" -gt 10 ] && [ "$(grep -c '^batch,' gpu/history.csv)" -eq "$steps" ] && ok ||
  bad "gpu history: $(grep -c '^batch,' gpu/history.csv) steps, cpu $steps"
within "per-step losses, emulated cuda vs cpu" "$(cmp_hist gpu/history.csv cpu/history.csv)" 1e-3

# resume one more epoch from each side's epoch-2 checkpoint (the step count comes back from the
# device counter): still equal
must "$D" "${TR[@]}" --epochs 3 --device cuda --resume gpu/epoch-002.safetensors --out gpu3
must "$D" "${TR[@]}" --epochs 3 --device cpu --resume cpu/epoch-002.safetensors --out cpu3
grep -q "^batch,3,$((steps + 1))," gpu3/history.csv && ok ||
  bad "resumed emulated run does not continue at step $((steps + 1)): $(sed -n 2p gpu3/history.csv)"
within "resumed losses, emulated cuda vs cpu" "$(cmp_hist gpu3/history.csv cpu3/history.csv)" 1e-3

# sampling from the CPU-trained checkpoint on both devices: DDPM, guided DDIM (eta 1: noise on
# the device from the same Philox counters as the CPU), one class, and in batches (the sampler's
# recorded step replayed across batches)
S=(sample --checkpoint cpu3/model.safetensors --quiet --seed 5)
for args in "--n 300" "--n 200 --sampler ddim --steps 10 --eta 1 --guidance 2.5" \
            "--n 100 --label 1 --sampler ddim --steps 20 --eta 0" "--n 250 --batch 64 --guidance 3"; do
  # shellcheck disable=SC2086
  must "$D" "${S[@]}" $args --device cuda --out g.png --raw g.raw
  # shellcheck disable=SC2086
  must "$D" "${S[@]}" $args --device cpu --out c.png --raw c.raw
  within "samples ($args), emulated cuda vs cpu" "$(cmp_raw g.raw c.raw)" 2e-3
done
# auto picks the (emulated) GPU: the same bytes as --device cuda
must "$D" "${S[@]}" --n 64 --device auto --out a.png --raw a.raw
must "$D" "${S[@]}" --n 64 --device cuda --out g64.png --raw g64.raw
cmp -s a.raw g64.raw && ok || bad "--device auto did not run on the emulated GPU (its samples differ from --device cuda)"

# no GPU: --device cuda fails with one clear line; auto falls back to the CPU
EMU_NO_GPU=1 "$D" "${S[@]}" --n 8 --device cuda --out x.png >out.log 2>err.log
rc=$?
[ $rc -ne 0 ] && grep -q "no usable CUDA GPU" err.log && ok || bad "no GPU, --device cuda: exit $rc, $(cat err.log)"
EMU_NO_GPU=1 "$D" "${S[@]}" --n 8 --device auto --out x.png --raw x.raw >out.log 2>err.log &&
  [ -s x.raw ] && ok || bad "no GPU, --device auto did not fall back to the CPU: $(cat err.log)"

# out of GPU memory: the size asked and what is free, no crash, nothing written
EMU_GPU_MEMORY_MB=40 "$D" "${S[@]}" --n 400000 --device cuda --out oom.png >out.log 2>err.log
rc=$?
[ $rc -ne 0 ] && grep -q "out of GPU memory allocating .* MiB free" err.log && ok ||
  bad "out of memory: exit $rc, $(cat err.log)"
[ ! -e oom.png ] && ok || bad "a failed run wrote oom.png"

echo "cli_emu: $pass passed, $fail failed"
[ "$fail" -eq 0 ]

#!/usr/bin/env bash
# The program's own commands with --device cuda against --device cpu, on a GPU (CTest gpu_cli,
# label gpu; exit 77, skipped, where this build or machine has no usable GPU): a conditional 2-D
# model trained for two epochs on each
# device (the recorded and replayed training step, batches uploaded while a step runs, the step
# counter read back into the checkpoint), then sampling from the CPU's checkpoint on both devices
# (DDPM, and guided DDIM with eta 1: the noise from the same Philox counters on both), and
# --device auto picking the GPU. TF32 off, so both sides multiply in FP32 and differ by summation
# order only: per-step losses within 1e-3 and samples within 2e-3 (relative to max(1, |x|)),
# the tolerances the same comparison meets in the CPU emulation of CUDA (tests/emu/cli_emu.sh).
# Needs no dataset files. Prints one line per check and a summary; exit status 0 when all pass.
#
#   tests/gpu_cli.sh DIFFUSION_BINARY
set -u
D=$(realpath "${1:?usage: tests/gpu_cli.sh DIFFUSION_BINARY}")
CMP="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/cmp_outputs.py"
W=$(mktemp -d "${TMPDIR:-/tmp}/gpu_cli.XXXXXX")
trap 'rm -rf "$W"' EXIT
cd "$W" || exit 2
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok: $*"; }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
run() { # WHAT COMMAND...: the command must exit 0
    local what=$1
    shift
    if "$@" > out.log 2> err.log; then ok "$what"; else bad "$what: exit $? ($(tail -n 2 err.log | tr '\n' ' '))"; fi
}
within() { # WHAT VALUE TOL
    if python3 -c "import sys; sys.exit(0 if float('$2') <= $3 else 1)" 2> /dev/null; then
        ok "$1: $2 (tolerance $3)"
    else
        bad "$1: $2 (tolerance $3)"
    fi
}
# the comparisons (tests/cmp_outputs.py): max relative difference of two raw sample files, and of
# the loss columns of two history.csv files
cmp_raw() { python3 "$CMP" raw "$1" "$2"; }
cmp_hist() { python3 "$CMP" hist "$1" "$2"; }

export DIFFUSION_TF32=0
TR=(train --data conditional-2d --limit 640 --conditional --batch 64 --epochs 2 --samples 0 --quiet)
if ! "$D" "${TR[@]}" --device cuda --out gpu > out.log 2> err.log; then
    if grep -q -E "no usable CUDA GPU|has no CUDA backend" err.log; then
        echo "SKIPPED: $(head -n 1 err.log)"
        exit 77
    fi
    bad "train --device cuda: exit $? ($(tail -n 2 err.log | tr '\n' ' '))"
else
    ok "train --device cuda"
fi
run "train --device cpu" "$D" "${TR[@]}" --device cpu --out cpu
if grep -Eq '"device":[[:space:]]*"cuda"' gpu/config.json 2> /dev/null; then
    ok "the GPU run's config.json says cuda"
else
    bad "the GPU run's config.json does not say cuda"
fi
within "per-step training losses, cuda vs cpu" "$(cmp_hist gpu/history.csv cpu/history.csv)" 1e-3

S=(sample --checkpoint cpu/model.safetensors --quiet --seed 5)
for args in "--n 300" "--n 200 --sampler ddim --steps 10 --eta 1 --guidance 2.5"; do
    # shellcheck disable=SC2086
    run "sample $args --device cuda" "$D" "${S[@]}" $args --device cuda --out g.png --raw g.raw
    # shellcheck disable=SC2086
    run "sample $args --device cpu" "$D" "${S[@]}" $args --device cpu --out c.png --raw c.raw
    within "samples ($args), cuda vs cpu" "$(cmp_raw g.raw c.raw)" 2e-3
    rm -f g.raw c.raw
done
run "sample --device auto" "$D" "${S[@]}" --n 64 --device auto --out a.png --raw a.raw
run "sample --device cuda (64)" "$D" "${S[@]}" --n 64 --device cuda --out g64.png --raw g64.raw
if cmp -s a.raw g64.raw; then ok "--device auto ran on the GPU (the same bytes as cuda)"; else bad "--device auto's samples differ from --device cuda's"; fi

echo "gpu_cli: $pass passed, $fail failed"
[ "$fail" = 0 ]

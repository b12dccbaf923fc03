#!/bin/bash
# diffusion bench on the CPU with tiny batches: the rows, the JSON beside them, the per-op
# profile (every node timed; the ops must account for the graph's time), and bad options.
# $1: the diffusion binary, $2: the source folder.
set -u
bin=$1
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1

check() { # check WHAT CONDITION...
    local what=$1
    shift
    if "$@"; then echo "ok: $what"; else echo "FAIL: $what"; fail=1; fi
}

out=$("$bin" bench --device cpu --train 2 --forward 3 --ddim 2 --min-time 0.01 \
       --json "$tmp/b.json" --profile 2>&1)
rc=$?
printf '%s\n' "$out"
check "bench exits 0" [ $rc -eq 0 ]
for row in "train_step +2 " "denoise_fwd +3 " "ddim20_loop +2 "; do
    check "row '$row'" grep -q -E "^$row" <<< "$out"
done
# the CPU's header line: what the timings depend on (threads from OMP_NUM_THREADS=1 above)
check "header names the threads and OpenBLAS" grep -q -E "^  .*1 thread \(OMP_NUM_THREADS\) of [0-9]+ processors; OpenBLAS .*; vector loops (AVX-512|AVX2|baseline)$" <<< "$out"
check "JSON has the CPU's detail" python3 -c "
import json
d = json.load(open('$tmp/b.json'))
assert d['device'] == 'cpu' and '1 thread (OMP_NUM_THREADS)' in d['device_detail'], d"
check "JSON has the three rows" python3 -c "
import json, sys
rows = json.load(open('$tmp/b.json'))['rows']
assert [(r['task'], r['batch']) for r in rows] == [('train_step', 2), ('denoise_fwd', 3), ('ddim20_loop', 2)], rows
assert all(r['ms'] > 0 for r in rows)"
# profile: one block per row; the training step has convolutions both ways and Adam outside
check "three profiles" [ "$(grep -c '^  profile of' <<< "$out")" -eq 3 ]
check "training profile has conv2d backward" grep -q -E "^ +conv2d +backward" <<< "$out"
check "sampling profile has no backward" bash -c "! sed -n '/profile of ddim20_loop/,\$p' <<< \"\$1\" | grep -q backward" _ "$out"
# the node percentages plus 'outside the graph' come to about 100%
check "profile shares add up" python3 -c "
import re, sys
blocks = sys.stdin.read().split('  profile of ')[1:]
for b in blocks:
    shares = [float(m) for m in re.findall(r' ([0-9.]+)%', b)]
    assert 99.0 < sum(shares) < 101.0, (sum(shares), b)" <<< "$out"

bad() { # bad EXPECTED ARGS...
    local want=$1
    shift
    local o r
    o=$("$bin" bench "$@" 2>&1)
    r=$?
    if [ $r -ne 1 ] || ! grep -q "^diffusion: error: .*$want" <<< "$o"; then
        echo "FAIL: bench $*: exit $r, output '$o', expected an error with '$want'"
        fail=1
    else
        echo "ok: bench $* refused"
    fi
}
bad "not a list" --device cpu --train 2,x
bad "batch 70000 is outside 1..65536" --device cpu --train 70000
bad "at most 8 batch sizes" --device cpu --forward 1,2,3,4,5,6,7,8,9
# the CPU's convolution choice: a value it does not know is an error, not the default
o=$(DIFFUSION_CPU_CONV=fast "$bin" bench --device cpu --train 0 --forward 1 --ddim 0 --min-time 0.01 2>&1)
r=$?
check "DIFFUSION_CPU_CONV=fast refused (exit $r: $o)" bash -c '[ "$1" -ne 0 ] && grep -q "^diffusion: error: .*DIFFUSION_CPU_CONV=fast: use auto, gemm or winograd" <<< "$2"' _ "$r" "$o"
for v in gemm winograd auto; do
    DIFFUSION_CPU_CONV=$v "$bin" bench --device cpu --train 1 --forward 1 --ddim 0 --min-time 0.01 >/dev/null 2>&1
    check "DIFFUSION_CPU_CONV=$v runs" [ $? -eq 0 ]
done
# a row too large for the memory (3 GB of address space) names the row and the options
o=$(ulimit -v 3000000; "$bin" bench --device cpu --train 0 --forward 60000 --ddim 0 --min-time 0.01 2>&1)
check "out of memory names the row and the batch options" grep -q \
    "^diffusion: error: denoise_fwd at batch 60000: .*out of memory.*(try a smaller batch in --train, --forward or --ddim)" <<< "$o"
# 0 leaves a kind of row out, as --ddim 0 does
o=$("$bin" bench --device cpu --train 0 --forward 2 --ddim 0 --min-time 0.01 2>&1)
check "--train 0 --ddim 0: the forward row alone" bash -c \
    '[ "$(grep -c -E "^(train_step|denoise_fwd|ddim20_loop) " <<< "$1")" -eq 1 ] && grep -q -E "^denoise_fwd +2 " <<< "$1"' _ "$o"
bad "min-time" --device cpu --min-time 0
bad "unconditional" --device cpu --model unet-cond
bad "needs the cuda backend" --device cpu --profiler-range
exit $fail

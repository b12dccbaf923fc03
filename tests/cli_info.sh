#!/bin/bash
# diffusion info: every row of SPEC.md's parameter table, checkpoint files, and bad options.
# $1: the diffusion binary, $2: the source folder.
set -u
bin=$1
src=$2
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# count WANT ARGS...: `diffusion info ARGS` exits 0 and prints "parameters: WANT"
count() {
    local want=$1
    shift
    local out
    if ! out=$("$bin" info "$@" 2>&1); then
        echo "FAIL: info $* exited non-zero: $out"
        fail=1
        return
    fi
    local got
    got=$(printf '%s\n' "$out" | sed -n 's/^parameters: //p')
    if [ "$got" != "$want" ]; then
        echo "FAIL: info $*: parameters '$got', SPEC says $want"
        fail=1
    else
        echo "ok: info $*: $got"
    fi
}

# bad EXPECTED ARGS...: exits 1 with "diffusion: error: ..." containing EXPECTED
bad() {
    local want=$1
    shift
    local out rc
    out=$("$bin" info "$@" 2>&1)
    rc=$?
    if [ $rc -ne 1 ] || ! printf '%s\n' "$out" | grep -q "^diffusion: error: .*$want"; then
        echo "FAIL: info $*: exit $rc, output '$out', expected an error with '$want'"
        fail=1
    else
        echo "ok: info $* -> $out"
    fi
}

count 151401 --model unet-fixed --channels 8
count 602705 --model unet
count 602705 --model unet --channels 16 --mult 1,2,4 --timesteps 100 --in 1
count 376913 --model unet --no-attention
count 403409 --model unet --mult 1,2,3
count 622865 --model unet-cond --classes 10
count 420497 --model unet-cond --classes 10 --mult 1,2,3
count 10525 --model unet --channels 4 --groups 1 --mult 1,2
count 11197 --model unet-cond --channels 4 --classes 5 --groups 1 --mult 1,2
count 1442 --model mlp2d --hidden 16
count 5826 --model mlp2d-cond --hidden 32 --classes 3
count 44426 --model lenet
# the table is listed but not counted; T changes only the table
count 602705 --model unet --timesteps 1000

# a checkpoint written by the PyTorch reference: config from the metadata, same count
count 602705 "$src/tests/reference/models/unet.safetensors"
count 156617 "$src/tests/reference/models/unet_cond.safetensors"
out=$("$bin" info "$src/tests/reference/models/unet_noattn.safetensors")
printf '%s\n' "$out" | grep -q '^config: {"kind":"unet".*"attention":false' || { echo "FAIL: stored config not printed: $out"; fail=1; }

bad "not divisible by 2^2 = 4" --model unet --size 30x30
bad "not divisible by 2^3 = 8" --model unet --mult 1,2,2,4
bad "3 GroupNorm groups do not divide the 16 channels" --model unet --groups 3
bad "5 attention heads do not divide the 64 channels" --model unet --heads 5
bad "first channel multiplier must be 1" --model unet --mult 2,4
bad "unet-fixed has channel multipliers" --model unet-fixed --mult 1,2
bad "unknown model 'vae'" --model vae
bad "unknown option '--bogus'" --model unet --bogus
bad "needs a value" --model
bad "give --model KIND" 
bad "not both" --model unet "$src/tests/reference/models/unet.safetensors"
bad "no-such-file" "$tmp/no-such-file.safetensors"
head -c 100 "$src/tests/reference/models/mlp2d.safetensors" > "$tmp/truncated.safetensors"
bad "truncated.safetensors" "$tmp/truncated.safetensors"

[ $fail -eq 0 ] && echo "all info checks passed"
exit $fail

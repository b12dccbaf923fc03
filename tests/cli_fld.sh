#!/bin/bash
# diffusion train-classifier and diffusion fld end to end on a tiny configuration (a LeNet on
# 2,000 Fashion-MNIST images for one epoch, two 10-step diffusion models on 64 images), and the
# refusals. Skips (77) without Debian's Fashion-MNIST.
# $1: the diffusion binary, $2: the source folder.
set -u
bin=$1
fail=0
if [ ! -r /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    echo "SKIPPED: Fashion-MNIST (Debian package dataset-fashion-mnist) is missing"
    exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
clf=$tmp/clf/lenet.safetensors

ok() { echo "ok: $*"; }
no() { echo "FAIL: $*"; fail=1; }

# run NAME ARGS...: `diffusion ARGS` must exit 0; stdout in $tmp/NAME.out, stderr in $tmp/NAME.err
run() {
    local name=$1
    shift
    if "$bin" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"; then
        ok "$*"
    else
        no "$* exited non-zero: $(cat "$tmp/$name.err")"
    fi
}

# fld_value NAME: the number after "FLD: " in $tmp/NAME.out
fld_value() { sed -n 's/^FLD: //p' "$tmp/$1.out"; }

# check DESCRIPTION AWK-CONDITION VALUES...: awk evaluates the condition on $1, $2, ...
check() {
    local what=$1 cond=$2
    shift 2
    if echo "$@" | awk "{ exit !($cond) }"; then ok "$what ($*)"; else no "$what: $cond is false for ($*)"; fi
}

# bad EXPECTED ARGS...: exits 1 with "diffusion: error: ..." containing EXPECTED
bad() {
    local want=$1
    shift
    local out rc
    out=$("$bin" "$@" 2>&1)
    rc=$?
    if [ $rc -ne 1 ] || ! printf '%s\n' "$out" | grep -q "^diffusion: error: .*$want"; then
        no "$*: exit $rc, output '$out', expected an error with '$want'"
    else
        ok "$* -> $out"
    fi
}

# ---- the classifier: 2,000 images, 1 epoch (measured about 64% on the 10,000 test images)
run train train-classifier --data fashion-mnist --limit 2000 --epochs 1 --seed 1 --quiet --out "$clf"
acc=$(sed -n 's/^test accuracy: \([0-9.]*\).*/\1/p' "$tmp/train.out")
check "test accuracy after 1 epoch on 2,000 images is >= 0.5" '$1 >= 0.5' "${acc:-0}"
grep -q '^epoch 1/1: loss' "$tmp/train.out" && ok "per-epoch loss printed" || no "no per-epoch line: $(cat "$tmp/train.out")"
[ -f "$clf" ] && ok "checkpoint written" || no "no checkpoint at $clf"

# ---- reference statistics: computed once, then read from the cache
run test1 fld --classifier "$clf" --data fashion-mnist --against test --quiet
grep -q "computed, saved to" "$tmp/test1.err" && ok "reference computed" || no "reference not computed: $(cat "$tmp/test1.err")"
ls "$clf".ref-fashion-mnist-*.safetensors >/dev/null 2>&1 && ok "cache file beside the classifier" || no "no cache file"
run test2 fld --classifier "$clf" --against test --quiet # --data from the classifier's metadata
grep -q "cached in" "$tmp/test2.err" && ok "reference read from the cache" || no "cache not used: $(cat "$tmp/test2.err")"
check "FLD test vs test ~ 0" '$1 < 1e-6 && $1 > -1e-6 && $2 == $1' "$(fld_value test1)" "$(fld_value test2)"

run train_fld fld --classifier "$clf" --against train --n 2000 --quiet
run noise_fld fld --classifier "$clf" --against noise --n 2000 --quiet
ftrain=$(fld_value train_fld)
fnoise=$(fld_value noise_fld)
check "train vs test is small" '$1 > 0 && $1 < 5' "$ftrain"
check "noise vs test is over 20x train vs test" '$2 > 20 * $1' "$ftrain" "$fnoise"
grep -q "2000 images of uniform noise" "$tmp/noise_fld.err" && ok "noise described" || no "stderr: $(cat "$tmp/noise_fld.err")"

# ---- samples of a diffusion checkpoint, directly and through a raw file: the same numbers
"$bin" train --data fashion-mnist --limit 64 --epochs 1 --channels 4 --groups 1 --mult 1,2 --timesteps 10 \
    --no-attention --samples 0 --quiet --out "$tmp/unet" >/dev/null 2>"$tmp/unet.err" || no "tiny unet: $(cat "$tmp/unet.err")"
"$bin" train --data fashion-mnist --limit 64 --epochs 1 --conditional --channels 4 --groups 1 --mult 1,2 \
    --timesteps 10 --no-attention --samples 0 --quiet --out "$tmp/cond" >/dev/null 2>"$tmp/cond.err" || no "tiny unet-cond: $(cat "$tmp/cond.err")"
unet=$tmp/unet/model.safetensors
cond=$tmp/cond/model.safetensors
run sample sample --checkpoint "$unet" --n 40 --seed 3 --raw "$tmp/s.raw" --out "$tmp/s.png" --quiet
run raw_fld fld --classifier "$clf" --against "raw:$tmp/s.raw" --quiet
run ckpt_fld fld --classifier "$clf" --against "$unet" --n 40 --seed 3 --quiet
check "raw file and checkpoint agree, FLD > 0" '$1 == $2 && $1 > 0' "$(fld_value raw_fld)" "$(fld_value ckpt_fld)"
# batches of 16: the same kind of samples (other noise), so a value of the same size
run ckpt_b16 fld --classifier "$clf" --against "$unet" --n 40 --seed 3 --batch 16 --quiet
check "batched sampling gives a finite, positive FLD" '$1 > 0 && $1 < 1e6' "$(fld_value ckpt_b16)"
run cond_fld fld --classifier "$clf" --against "$cond" --per-label 4 --guidance 2 --sampler ddim --steps 5 --quiet
grep -q "40 DDIM samples .*4 per label, guidance 2" "$tmp/cond_fld.err" && ok "per-label sampling described" ||
    no "stderr: $(cat "$tmp/cond_fld.err")"
check "conditional samples: FLD > 0" '$1 > 0' "$(fld_value cond_fld)"

# ---- a retrained classifier invalidates the cache
old=$(ls "$clf".ref-fashion-mnist-*.safetensors)
run retrain train-classifier --data fashion-mnist --limit 500 --epochs 1 --seed 2 --quiet --out "$clf"
run test3 fld --classifier "$clf" --against test --quiet
grep -q "computed, saved to" "$tmp/test3.err" && ok "new classifier, new reference" || no "stale cache used: $(cat "$tmp/test3.err")"
[ ! -e "$old" ] && ok "stale cache removed" || no "stale cache $old left"

# ---- refusals
bad "classifier: .*nope.safetensors" fld --classifier "$tmp/nope.safetensors" --against test
bad "not a classifier checkpoint" fld --classifier "$unet" --against test
bad "is a classifier, not a diffusion model" fld --classifier "$clf" --against "$clf"
bad "--steps is DDIM's (add --sampler ddim)" fld --classifier "$clf" --against "$unet" --steps 5
bad "guidance needs a conditional model" fld --classifier "$clf" --against "$unet" --guidance 2
bad "per-label needs a conditional model" fld --classifier "$clf" --against "$unet" --per-label 3
bad "more than the model's T = 10" fld --classifier "$clf" --against "$unet" --sampler ddim --steps 11
bad "need --against CHECKPOINT" fld --classifier "$clf" --against test --guidance 2
bad "is not test, train, noise" fld --classifier "$clf" --against nothing-here
bad "cannot open" fld --classifier "$clf" --against "raw:$tmp/none.raw"
# a raw file of 2 samples of 1x4x4: the wrong shape
{ printf 'DDRAW1\0\0\002\0\0\0\001\0\0\0\004\0\0\0\004\0\0\0'; head -c 128 /dev/zero; } >"$tmp/small.raw"
bad "takes 1x28x28" fld --classifier "$clf" --against "raw:$tmp/small.raw"
bad "--classifier is required" fld --against test
bad "--against is required" fld --classifier "$clf"
bad "LeNet takes 1x28x28" train-classifier --data spiral --out "$tmp/x.safetensors"
bad "--out is required" train-classifier --data fashion-mnist
bad "--data is required" train-classifier --out "$tmp/x.safetensors"
bad "epochs" train-classifier --data fashion-mnist --epochs 0 --out "$tmp/x.safetensors"

exit $fail

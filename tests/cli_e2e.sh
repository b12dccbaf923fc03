#!/usr/bin/env bash
# The diffusion program end to end on a tiny configuration (a few hundred Fashion-MNIST images,
# one epoch, 8 model channels): train, resume, sample with each sampler and with guidance, and
# every bad input of the CLI issue: a clear one-line error, a non-zero exit, nothing half-written.
# Usage: cli_e2e.sh DIFFUSION_BINARY SOURCE_DIR   (run by CTest)
set -u
D=$(realpath "${1:?diffusion binary}")
FMNIST=/usr/share/datasets/fashion-mnist
[ -f "$FMNIST/train-images-idx3-ubyte.gz" ] || { echo "SKIPPED: $FMNIST not installed"; exit 77; }
W=$(mktemp -d "${TMPDIR:-/tmp}/cli_e2e.XXXXXX")
trap 'rm -rf "$W"' EXIT
cd "$W"
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }
# run a command that must succeed
must() { if "$@" >out.log 2>err.log; then ok; else bad "$* -> exit $? ($(tail -1 err.log))"; fi; }
# a file that must exist with at least N bytes
size_at_least() { local s; s=$(stat -c %s "$1" 2>/dev/null || echo 0); [ "$s" -ge "$2" ] && ok || bad "$1: $s bytes, expected >= $2"; }
# a PNG of the given pixel size (read from the IHDR chunk)
png_size() {
  local got; got=$(od -An -tu1 -j16 -N8 "$1" 2>/dev/null | awk '{printf "%dx%d", $1*16777216+$2*65536+$3*256+$4, $5*16777216+$6*65536+$7*256+$8}')
  [ "$got" = "$2" ] && ok || bad "$1: PNG size $got, expected $2"
}
# a command that must fail with one "diffusion: error: ... PATTERN" line and a non-zero exit
must_fail() {
  local pat=$1; shift
  "$@" >out.log 2>err.log; local rc=$?
  if [ $rc -eq 0 ] || [ $rc -gt 2 ]; then bad "$* -> exit $rc, expected 1 or 2"; return; fi
  if [ "$(grep -c . err.log)" -ne 1 ] || ! grep -q "^diffusion: error: .*$pat" err.log; then
    bad "$* -> stderr: $(cat err.log) (expected one error line matching '$pat')"; return
  fi
  ok
}
no_temp_files() { if ls -a "$1" 2>/dev/null | grep -q '\.tmp'; then bad "temporary files left in $1: $(ls -a "$1")"; else ok; fi; }

TINY=(--data fashion-mnist --limit 320 --channels 8 --batch 32 --samples 4 --quiet)

# ---- train, files and their sizes
must "$D" train "${TINY[@]}" --epochs 1 --out run
for f in config.json epoch-001.safetensors model.safetensors history.csv loss.png samples.png; do
  size_at_least run/$f 100
done
size_at_least run/model.safetensors 600000   # 151,401 weights + EMA + Adam m, v: 4 x 605 KB
grep -q '"model"' run/config.json && ok || bad "config.json has no model"
[ "$(grep -c '^batch,' run/history.csv)" -eq 9 ] && ok || bad "history.csv: $(grep -c '^batch,' run/history.csv) batch rows, expected 9 (288 of 320 images / 32)"
[ "$(grep -c '^val,' run/history.csv)" -eq 1 ] && ok || bad "history.csv: expected one validation row"
png_size run/loss.png 640x480
"$D" info run/model.safetensors >info.txt 2>&1 && grep -q "parameters: 151401" info.txt && ok || bad "info of the checkpoint: $(tail -1 info.txt)"

# ---- resume: one more epoch continues the step count
must "$D" train "${TINY[@]}" --epochs 2 --out resumed --resume run/epoch-001.safetensors
size_at_least resumed/epoch-002.safetensors 600000
[ ! -e resumed/epoch-001.safetensors ] && ok || bad "resume re-ran epoch 1"
grep -q '^batch,2,18,' resumed/history.csv && ok || bad "resumed history does not continue at step 18: $(tail -2 resumed/history.csv)"

# resuming a run trained with its own --lr and --ema, without giving them again, continues it
# exactly (the checkpoint's values, not the defaults): the same bytes as the unbroken run
SP=(--data spiral --limit 640 --samples 0 --quiet)
must "$D" train "${SP[@]}" --epochs 2 --lr 3e-3 --ema 0.99 --out sp-whole
must "$D" train "${SP[@]}" --epochs 1 --lr 3e-3 --ema 0.99 --out sp-half
must "$D" train "${SP[@]}" --epochs 2 --out sp-half --resume sp-half/epoch-001.safetensors
cmp -s sp-whole/epoch-002.safetensors sp-half/epoch-002.safetensors && ok || bad "a resumed run without --lr and --ema is not the unbroken run"
grep -q '"lr":.*0.0030' sp-half/config.json && ok || bad "the resumed config.json does not have the checkpoint's lr"
# what the checkpoint fixes cannot be changed on resume; the same value, or a new --lr, can
must_fail "--batch 64: the checkpoint was trained with 32, and a resumed run keeps it" \
  "$D" train "${SP[@]}" --epochs 3 --out sp-x --resume sp-half/epoch-002.safetensors --batch 64
must_fail "--seed 5: the checkpoint was trained with 0" \
  "$D" train "${SP[@]}" --epochs 3 --out sp-x --resume sp-half/epoch-002.safetensors --seed 5
must_fail "--objective v: the checkpoint was trained with eps" \
  "$D" train "${SP[@]}" --epochs 3 --out sp-x --resume sp-half/epoch-002.safetensors --objective v
must_fail "the model options ask for .*hidden 32.*, but the checkpoint holds .*hidden 16" \
  "$D" train "${SP[@]}" --epochs 3 --out sp-x --resume sp-half/epoch-002.safetensors --hidden 32
[ ! -e sp-x ] && ok || bad "a refused resume left sp-x/"
must "$D" train "${SP[@]}" --epochs 3 --out sp-y --resume sp-half/epoch-002.safetensors --batch 32 --hidden 16 --lr 1e-4
grep -q '"lr":.*9.99999.*e-05' sp-y/config.json && ok || bad "--lr given on resume did not replace the checkpoint's"

# ---- sampling: DDPM, DDIM, a grid of the asked size, animation, raw
must "$D" sample --checkpoint run/model.safetensors --n 6 --out ddpm.png --quiet --seed 3
png_size ddpm.png 176x118   # 3 x 2 cells of 56 px, 2 px borders
must "$D" sample --checkpoint run/model.safetensors --n 6 --out ddim.png --sampler ddim --steps 10 --eta 0 --quiet --seed 3
png_size ddim.png 176x118
cmp -s ddpm.png ddim.png && bad "DDPM and DDIM gave the same picture" || ok
must "$D" sample --checkpoint run/model.safetensors --n 6 --out ddim2.png --sampler ddim --steps 10 --eta 0 --quiet --seed 3
cmp -s ddim.png ddim2.png && ok || bad "DDIM eta 0 with the same seed is not reproducible"
must "$D" sample --checkpoint run/model.safetensors --n 4 --out anim.png --sampler ddim --steps 5 --animation anim.gif --raw s.raw --no-clip --quiet
[ "$(head -c 6 anim.gif)" = "GIF89a" ] && ok || bad "anim.gif is not a GIF"
size_at_least s.raw $((24 + 4 * 784 * 4))
[ "$(head -c 6 s.raw)" = "DDRAW1" ] && ok || bad "s.raw has no DDRAW1 header"

# ---- conditional model with guidance, one row per class
must "$D" train "${TINY[@]}" --conditional --epochs 1 --out cond
"$D" info cond/model.safetensors >info.txt 2>&1 && grep -q "unet-cond" info.txt && ok || bad "cond checkpoint is not unet-cond"
must "$D" sample --checkpoint cond/model.safetensors --labels all --n 2 --guidance 2 --out rows.png --quiet
png_size rows.png 118x582   # 10 rows (classes) x 2 columns
must "$D" sample --checkpoint cond/model.safetensors --label 7 --n 2 --guidance 3 --sampler ddim --steps 10 --eta 1 --out one.png --quiet

# ---- in batches: --batch n is all at once; batches continue one noise stream (the samples depend
# on --seed and --batch), reproducibly, and the grid keeps its rows per class
SB=(--checkpoint cond/model.safetensors --labels all --n 1 --guidance 2 --sampler ddim --steps 5 --eta 1 --seed 4 --quiet)
must "$D" sample "${SB[@]}" --out b0.png --raw b0.raw
must "$D" sample "${SB[@]}" --out b10.png --raw b10.raw --batch 10
cmp -s b0.raw b10.raw && ok || bad "--batch equal to --n changed the samples"
must "$D" sample "${SB[@]}" --out b3.png --raw b3.raw --batch 3
png_size b3.png 60x582   # still 10 rows x 1 column
cmp -s b0.raw b3.raw && bad "--batch 3 gave the samples of one batch of 10" || ok
must "$D" sample "${SB[@]}" --out b3b.png --raw b3b.raw --batch 3
cmp -s b3.raw b3b.raw && ok || bad "--batch 3 is not reproducible"
must_fail "animation" "$D" sample "${SB[@]}" --batch 3 --animation a.gif --out x.png

# ---- 2-D data: scatter plot and CSV
must "$D" train --data spiral --limit 640 --epochs 2 --out spiral --quiet
must "$D" sample --checkpoint spiral/model.safetensors --n 500 --out pts.png --quiet
png_size pts.png 640x480
[ "$(grep -c . pts.csv)" -eq 501 ] && ok || bad "pts.csv: expected a header and 500 points"

# ---- bad input: one clear line, exit 1, nothing half-written
must_fail "not found" "$D" train --data mnist:"$W/no-such-folder" --out bad1
[ ! -e bad1 ] && ok || bad "a failed train left bad1/"
mkdir idx && cp "$FMNIST"/t10k-* "$FMNIST"/train-labels* idx/
head -c 5000 <(gzip -dc "$FMNIST/train-images-idx3-ubyte.gz") > idx/train-images-idx3-ubyte
must_fail "truncated\|length\|short" "$D" train --data idx:idx --out bad2
printf 'garbage-garbage-garbage' > idx/train-images-idx3-ubyte
must_fail "magic" "$D" train --data idx:idx --out bad3
mkdir empty
must_fail "no images" "$D" train --data images:empty --out bad4
mkdir broken && echo "not a picture" > broken/a.png
must_fail "decode" "$D" train --data images:broken --out bad5
must_fail "cannot open\|No such file" "$D" sample --checkpoint missing.safetensors
head -c 2000 run/model.safetensors > damaged.safetensors
must_fail "damaged.safetensors" "$D" sample --checkpoint damaged.safetensors
printf 'this is not a checkpoint at all' > junk.safetensors
must_fail "junk.safetensors" "$D" sample --checkpoint junk.safetensors
must_fail "out of range" "$D" sample --checkpoint cond/model.safetensors --label 10
must_fail "conditional" "$D" sample --checkpoint run/model.safetensors --guidance 2
must_fail "conditional" "$D" sample --checkpoint run/model.safetensors --label 1
must_fail "T = 100" "$D" sample --checkpoint run/model.safetensors --sampler ddim --steps 101
# options that do not apply: an error, not quietly ignored
must_fail "--prob-uncond is for conditional models" "$D" train "${SP[@]}" --epochs 1 --prob-uncond 0.3 --out bad7
must_fail "--image-channels is for --data images:DIR" "$D" train "${SP[@]}" --epochs 1 --image-channels 1 --out bad8
must_fail "36 training examples are fewer than one batch of 64" "$D" train "${SP[@]}" --limit 40 --batch 64 --epochs 1 --out bad9
[ ! -e bad7 ] && [ ! -e bad8 ] && [ ! -e bad9 ] && ok || bad "a refused train left its folder"
must_fail "--steps is DDIM's (add --sampler ddim)" "$D" sample --checkpoint run/model.safetensors --steps 5
must_fail "--eta is DDIM's" "$D" sample --checkpoint run/model.safetensors --sampler ddpm --eta 1
must_fail "CUDA\|GPU\|cuda" "$D" sample --checkpoint run/model.safetensors --device cuda
must_fail "CUDA\|GPU\|cuda" "$D" train "${TINY[@]}" --epochs 1 --out bad6 --device cuda
# out of memory (held to 3 GB of address space, so the answer does not depend on the machine):
# the error names the allocation and the option that needs less
( ulimit -v 3000000
  must_fail "out of memory.*drawing all 100000 samples at once: draw fewer at a time with a smaller --batch" \
    "$D" sample --checkpoint run/model.safetensors --device cpu --n 100000 --out oom.png
  must_fail "out of memory.*--batch draws 50000 samples at once" \
    "$D" sample --checkpoint run/model.safetensors --device cpu --n 100000 --batch 50000 --out oom.png
  must_fail "out of memory.*training batches of 20000: try a smaller --batch" \
    "$D" train --data fashion-mnist --limit 24000 --channels 8 --batch 20000 --epochs 1 --samples 0 \
    --quiet --device cpu --out oom
  echo "$pass $fail" > oom.counts )
# a tensor over 2^31 - 1 values (cuDNN's limit, and the kernels' int indices), whatever the
# memory: the 8-channel UNet's 16-channel 28x28 maps hold 12,544 values a sample
must_fail "a batch of 200000 is too large: .*; at most 171196 fit (drawing all 200000 samples at once" \
  "$D" sample --checkpoint run/model.safetensors --device cpu --n 200000 --out oom.png
read pass fail < oom.counts
[ ! -e oom.png ] && ok || bad "a sample run out of memory wrote oom.png"
[ ! -e oom ] && ok || bad "a training run out of memory left its run folder oom/"
mkdir ro && touch ro/file
must_fail "cannot" "$D" sample --checkpoint run/model.safetensors --n 2 --out ro/file/x.png
must_fail "cannot" "$D" train "${TINY[@]}" --epochs 1 --out ro/file/run
# an output that cannot be written fails before the work (no samples drawn, no row timed, no
# classifier trained), not after it
must_fail "ro/file/x.raw" "$D" sample --checkpoint run/model.safetensors --n 2 --out early.png --raw ro/file/x.raw
[ ! -e early.png ] && ok || bad "sample wrote early.png before it found --raw unwritable"
must_fail "ro: it is a folder" "$D" sample --checkpoint run/model.safetensors --n 2 --out ro
must_fail "ro/file/b.json" "$D" bench --device cpu --train 2 --forward 2 --ddim 2 --min-time 0.01 --json ro/file/b.json
grep -q "^train_step" out.log && bad "bench timed its rows before it found --json unwritable" || ok
must_fail "ro: it is a folder" "$D" train-classifier --data fashion-mnist --limit 64 --epochs 1 --quiet --out ro
grep -q "epoch" out.log && bad "train-classifier trained before it found --out unwritable" || ok
must_fail "already trained" "$D" train "${TINY[@]}" --epochs 1 --out again --resume run/model.safetensors
must_fail "unknown" "$D" train --data fashion-mnist --bogus
must_fail "unknown command" "$D" frobnicate
for d in run resumed cond spiral .; do no_temp_files "$d"; done

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]

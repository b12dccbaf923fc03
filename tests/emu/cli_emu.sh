#!/usr/bin/env bash
# The diffusion program with --device cuda on the CPU emulation of CUDA (tests/emu): the whole
# CUDA backend (cuda_backend.c, cuda_dnn.c, the kernels, cuBLAS and cuDNN stand-ins) with work
# deferred to the synchronisation points as on a GPU. A conditional 2-D model is trained for two
# epochs (recorded and replayed steps, batches uploaded while a step runs, validation, the step
# counter read back into the checkpoint), resumed, and sampled with DDPM, guided DDIM and in
# batches; then the LeNet classifier and FLD, a tiny conditional UNet's guided samples with the
# animation, and `bench --profile`. Every number is compared with the same commands on
# --device cpu. Then the error paths: no GPU, a GPU the build has no code for, no cuDNN
# convolution library, cudnnFind failing, a fault in an own convolution kernel, out of GPU memory.
# Usage: cli_emu.sh DIFFUSION_EMU_BINARY   (run by CTest as emu_cli)
set -u
D=$(realpath "${1:?diffusion-emu binary}")
CMP="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/cmp_outputs.py"
W=$(mktemp -d "${TMPDIR:-/tmp}/cli_emu.XXXXXX")
trap 'rm -rf "$W"' EXIT
cd "$W"
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }
must() { if "$@" >out.log 2>err.log; then ok; else bad "$* -> exit $? ($(tail -3 err.log out.log))"; fi; }

# max |a - b| / max(1, |b|) over two DDRAW1 files, or max relative difference of the loss
# columns of two history.csv files (tests/cmp_outputs.py); prints the value, or a word when the
# files cannot be compared
cmp_raw() { python3 "$CMP" raw "$1" "$2"; }
cmp_hist() { python3 "$CMP" hist "$1" "$2"; }
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

# the LeNet classifier behind FLD (convolutions, max-pooling, cross-entropy), trained for two
# steps on each device, then FLD of training images against the test set's statistics. TF32 off:
# with it, the first Adam steps turn gradients that TF32 rounding moves across zero into +-lr
# updates, so the weights can only be compared in FP32 (measured: 1e-7 after two steps).
# cuDNN for every convolution: auto would time the handwritten kernels, emulated, on the
# evaluation's batch of 256 (minutes); they are checked by conv_emu and emu_gpu_conv.
export DIFFUSION_TF32=0 DIFFUSION_CONV=cudnn
C=(train-classifier --data fashion-mnist --limit 64 --batch 32 --epochs 1 --seed 1 --quiet)
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  must "$D" "${C[@]}" --device cuda --out clf_gpu.safetensors
  must "$D" "${C[@]}" --device cpu --out clf_cpu.safetensors
  within "classifier weights after two steps, emulated cuda vs cpu" \
    "$(python3 - clf_gpu.safetensors clf_cpu.safetensors <<'EOF'
import json, struct, sys
def load(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    return {k: struct.unpack("<%df" % ((v["data_offsets"][1] - v["data_offsets"][0]) // 4),
                             b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]])
            for k, v in h.items() if k != "__metadata__"}
a, b = load(sys.argv[1]), load(sys.argv[2])
if sorted(a) != sorted(b) or not a: print("tensors-differ"); sys.exit()
print(max(max(abs(x - y) for x, y in zip(a[k], b[k])) / max(1e-3, max(abs(y) for y in b[k]))
          for k in a))
EOF
)" 1e-4
  for d in cuda cpu; do # each its own copy: the test set's statistics are cached beside it
    cp clf_cpu.safetensors fldclf_$d.safetensors
    "$D" fld --classifier fldclf_$d.safetensors --against train --n 500 --quiet --device $d > fld_$d.out 2>&1 ||
      bad "fld --device $d: $(tail -1 fld_$d.out)"
  done
  within "FLD of 500 training images, emulated cuda vs cpu" "$(python3 -c "
import re
v = [float(re.search(r'^FLD: *([-0-9.eE+]+)', open(f).read(), re.M).group(1)) for f in ('fld_cuda.out', 'fld_cpu.out')]
print(abs(v[0] - v[1]) / max(1e-6, abs(v[1])))" 2>/dev/null || echo no-fld-value)" 1e-4
  # an image model (a tiny conditional UNet, trained on the CPU): guided DDIM for every class with
  # the animation's per-step read-backs, on both devices (GroupNorm, attention, upsampling and
  # the 2B guided batch on the emulated GPU). TF32 off: with it, this barely trained model's
  # guided chain moves by O(1) (measured 1.35), as test_gpu_train's TF32 tolerance explains.
  # Even in FP32 the chain (eta 1, guidance 2, a model one epoch old) spreads rounding: two
  # emulated runs whose timed GroupNorm launches chose differently came 1.8e-3 and 2.9e-3 from
  # the CPU, and the CPU's two ways to convolve (DIFFUSION_CPU_CONV=gemm and winograd) 6.0e-3
  # from each other. An upsampling kernel that read a neighbour for a quarter of its outputs
  # moved it by 2.0. Hence 1.5e-2.
  must "$D" train --data fashion-mnist --limit 96 --channels 8 --batch 32 --epochs 1 --samples 0 \
    --conditional --quiet --device cpu --out unet
  for d in cuda cpu; do
    DIFFUSION_GN_LOG=1 must "$D" sample --checkpoint unet/model.safetensors --labels all --n 1 --guidance 2 --sampler ddim \
      --steps 5 --eta 1 --seed 2 --animation anim_$d.gif --raw img_$d.raw --out img_$d.png --quiet --device $d
    [ $d = cuda ] && cp err.log gn_log.txt
  done
  within "guided DDIM of the image model, emulated cuda vs cpu" "$(cmp_raw img_cuda.raw img_cpu.raw)" 1.5e-2
  # with DIFFUSION_GN_LOG=1 the cuda run above logged the group norm's timing: a line per
  # forward shape, the fixed choice named among the times
  grep -q -E "^diffusion: group_norm N=[0-9]+ C=8 HW=[0-9]+ G=[0-9]+.*, us: .* \(fixed\).* -> t[0-9]+[vq][0-9]+\$" gn_log.txt &&
    ok || bad "DIFFUSION_GN_LOG=1: $(head -3 gn_log.txt)"
  # the same with the optimisations that can be switched off left out (grouped dense calls and
  # their folded activations, the direct convolutions, the timed group norm launches)
  DIFFUSION_CUDA_OFF=dense-group,direct-conv,gn-tune must "$D" sample --checkpoint unet/model.safetensors \
    --labels all --n 1 --guidance 2 --sampler ddim --steps 5 --eta 1 --seed 2 --raw img_off.raw \
    --out img_off.png --quiet --device cuda
  within "guided DDIM of the image model, emulated cuda with DIFFUSION_CUDA_OFF vs cpu" \
    "$(cmp_raw img_off.raw img_cpu.raw)" 1.5e-2
  [ "$(head -c 6 anim_cuda.gif)" = "GIF89a" ] && ok || bad "anim_cuda.gif is not a GIF"
else
  echo "(Fashion-MNIST not installed: the classifier, FLD and image model part is left out)"
fi
unset DIFFUSION_TF32 DIFFUSION_CONV

# diffusion bench on the emulated GPU (a tiny UNet): the three rows and the per-op profile
must "$D" bench --device cuda --channels 8 --size 12x12 --groups 4 --train 2 --forward 2 --ddim 2 \
  --min-time 0.01 --profile --json bench.json
python3 - bench.json <<'EOF' && ok || bad "bench.json: $(head -c 300 bench.json)"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["backend"] == "cuda" and "emulated" in j["device"], j
assert sorted(r["task"] for r in j["rows"]) == ["ddim20_loop", "denoise_fwd", "train_step"], j
assert all(r["ms"] > 0 and r["batch"] == 2 for r in j["rows"]), j
assert "SMs" in j["device_detail"] and "cuDNN 9.0.0; TF32 on" in j["device_detail"], j
EOF
grep -q "profile of train_step" out.log && grep -q "conv2d" out.log && ok || bad "bench --profile printed no per-op profile: $(head -5 out.log)"

# DIFFUSION_CONV_LOG=1: per shape and direction the cuDNN algorithm and math type, the timings
# and the choice (=2: and a line per direction with every candidate's time); with TF32 off (and
# cuDNN forced) every cuDNN choice has FMA math
B=(bench --device cuda --channels 8 --size 12x12 --groups 4 --train 2 --forward 2 --ddim 2
  --min-time 0.01)
DIFFUSION_CONV_LOG=2 "$D" "${B[@]}" >out.log 2>err.log
rc=$?
n=$(grep -c "^diffusion: conv N=2 .*-> " err.log)
# each times line: cuDNN's kept algorithm, every cuDNN candidate timed, then every own one
A="[a-z0-9-]+/[a-z-]+ [0-9.]+"
nt=$(grep -c -E "^diffusion: conv N=2 .* (forward|backward-data|backward-filter) times, us: cudnn $A \(cudnn candidates, cudnnFind's pick first: $A(, $A)*\)(, [a-z0-9]+ ([0-9.]+|-))+\$" err.log)
re="forward cudnn [a-z0-9-]+/[a-z-]+ [0-9.]+ us, own [a-z0-9]+ [0-9.]+ us -> (own|cudnn).*; backward-data cudnn .* -> (own|cudnn).*; backward-filter cudnn .* -> (own|cudnn)"
[ $rc -eq 0 ] && [ "$n" -ge 3 ] && [ "$(grep -c -E "\(TF32 on\): $re" err.log)" = "$n" ] &&
  [ "$nt" = $((3 * n)) ] && ok || bad "DIFFUSION_CONV_LOG=2 (auto): exit $rc, $n + $nt lines, $(head -4 err.log)"
DIFFUSION_CONV_LOG=1 DIFFUSION_CONV=cudnn DIFFUSION_TF32=0 "$D" "${B[@]}" >out.log 2>err.log
rc=$?
n=$(grep -c "^diffusion: conv N=2 " err.log)
[ $rc -eq 0 ] && [ "$n" -ge 3 ] &&
  [ "$(grep -c -E "\(TF32 off\): cudnn [a-z0-9-]+/fma / [a-z0-9-]+/fma / [a-z0-9-]+/fma " err.log)" = "$n" ] &&
  ok || bad "DIFFUSION_CONV_LOG=1 (cudnn, TF32 off): exit $rc, $n lines, $(head -2 err.log)"

# a GPU with less shared memory a block (64 KiB, as sm_75): the plane configurations that need
# more (pk32x112 80 KiB, pk16x224 67 KiB, pk32x224 86 KiB) are no candidates there, the others
# still are, and nothing fails; with sm_90's 227 KiB they are timed. A two-level UNet without
# attention (12x12 and 6x6 maps), one timed call a candidate: the autotuner's choices, not its
# timings, are what is checked.
timed() { grep -c -E "^diffusion: conv N=2 .* times, us: .* $1 [0-9.]+" "$2"; }
large() { echo $(( $(timed pk32x112 "$1") + $(timed pk16x224 "$1") + $(timed pk32x224 "$1") )); }
SM=(bench --device cuda --channels 8 --size 12x12 --groups 4 --mult 1,2 --no-attention --train 0
  --forward 2 --ddim 0 --min-time 0.01)
DIFFUSION_CONV_TIMING_REPS=1 DIFFUSION_CONV_LOG=2 "$D" "${SM[@]}" >out.log 2>sm227.log
rc227=$?
EMU_SHARED_OPTIN_KB=64 DIFFUSION_CONV_TIMING_REPS=1 DIFFUSION_CONV_LOG=2 "$D" "${SM[@]}" >out.log 2>sm64.log
rc=$?
[ $rc227 -eq 0 ] && [ "$(large sm227.log)" -gt 0 ] && [ $rc -eq 0 ] && ! grep -q "warning" sm64.log &&
  [ "$(large sm64.log)" = 0 ] && [ "$(timed pl32x224 sm64.log)" -gt 0 ] &&
  [ "$(timed pk16x112 sm64.log)" -gt 0 ] && ok ||
  bad "64 KiB of shared memory a block: exit $rc227 and $rc, the large plane kernels timed $(large sm227.log) times at 227 KiB and $(large sm64.log) at 64, $(grep -m2 "warning" sm64.log)"

# a bad setting for the convolution autotuner: one clear line and a non-zero exit
DIFFUSION_CONV_TIMING_REPS=0 "$D" bench --device cuda --channels 8 --size 12x12 --groups 4 \
  --train 2 --forward 2 --ddim 2 --min-time 0.01 >out.log 2>err.log
rc=$?
[ $rc -ne 0 ] && grep -q "DIFFUSION_CONV_TIMING_REPS=0: a count from 1 to 1000" err.log && ok ||
  bad "DIFFUSION_CONV_TIMING_REPS=0: exit $rc, $(tail -3 err.log)"

# bad settings for the switches: one clear line and a non-zero exit
DIFFUSION_CUDA_OFF=dense-group,bogus "$D" "${S[@]}" --n 8 --device cuda --out x.png >out.log 2>err.log
rc=$?
[ $rc -ne 0 ] && grep -q "DIFFUSION_CUDA_OFF: unknown 'bogus'" err.log && [ ! -e x.png ] && ok ||
  bad "DIFFUSION_CUDA_OFF=dense-group,bogus: exit $rc, $(tail -3 err.log)"
DIFFUSION_GN=t7v7 "$D" "${S[@]}" --n 8 --device cuda --out x.png >out.log 2>err.log
rc=$?
[ $rc -ne 0 ] && grep -q "DIFFUSION_GN=t7v7: expected auto, fixed, t32v8" err.log && [ ! -e x.png ] && ok ||
  bad "DIFFUSION_GN=t7v7: exit $rc, $(tail -3 err.log)"

# no GPU: --device cuda fails with one clear line; auto falls back to the CPU
EMU_NO_GPU=1 "$D" "${S[@]}" --n 8 --device cuda --out x.png >out.log 2>err.log
rc=$?
[ $rc -ne 0 ] && grep -q "no usable CUDA GPU" err.log && ok || bad "no GPU, --device cuda: exit $rc, $(cat err.log)"
EMU_NO_GPU=1 "$D" "${S[@]}" --n 8 --device auto --out x.png --raw x.raw >out.log 2>err.log &&
  [ -s x.raw ] && ok || bad "no GPU, --device auto did not fall back to the CPU: $(cat err.log)"
grep -q "warning" err.log && bad "no GPU, --device auto warned: $(cat err.log)" || ok

# a GPU this build has no code for (compute capability 7.5, kernels for 8.0 and 9.0): --device
# cuda fails at start with one line that names the card, its compute capability, the build's
# architectures and the fix; auto warns with the same reason and runs on the CPU
rm -f x.png
EMU_NO_KERNEL_IMAGE=1 "$D" "${S[@]}" --n 8 --device cuda --out x.png >out.log 2>err.log
rc=$?
[ $rc -ne 0 ] && [ "$(wc -l < err.log)" = 1 ] && [ ! -e x.png ] &&
  grep -q "compute capability 7\.5), cannot run this build .*architectures 80 90 only.*CUDAARCHS=75 bash scripts/setup.sh, or cmake -DCMAKE_CUDA_ARCHITECTURES=75 (no kernel image" err.log &&
  ok || bad "no kernel image, --device cuda: exit $rc, $(cat err.log)"
rm -f x.raw
EMU_NO_KERNEL_IMAGE=1 "$D" "${S[@]}" --n 8 --device auto --out x.png --raw x.raw >out.log 2>err.log &&
  [ -s x.raw ] && grep -q "^diffusion: warning: cuda backend unavailable: .*compute capability 7\.5.*; --device auto runs on the CPU" err.log &&
  ok || bad "no kernel image, --device auto: no warning or no CPU run: $(cat err.log)"

# cuDNN's convolution library cannot be loaded: one clear line at start with --device cuda; auto
# warns and falls back to the CPU
EMU_CUDNN_NO_CNN=1 "$D" "${S[@]}" --n 8 --device cuda --out x.png >out.log 2>err.log
rc=$?
[ $rc -ne 0 ] && grep -q "libcudnn_cnn .*CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED" err.log && ok ||
  bad "no libcudnn_cnn, --device cuda: exit $rc, $(cat err.log)"
rm -f x.raw
EMU_CUDNN_NO_CNN=1 "$D" "${S[@]}" --n 8 --device auto --out x.png --raw x.raw >out.log 2>err.log &&
  [ -s x.raw ] && grep -q "warning: .*libcudnn_cnn.*; --device auto runs on the CPU" err.log && ok ||
  bad "no libcudnn_cnn, --device auto did not fall back to the CPU with a warning: $(cat err.log)"

# cudnnFind fails (no room for its buffers): cuDNN's heuristic ranking stands in, one warning a
# shape, and the run goes on
EMU_CUDNN_FIND_FAIL=1 DIFFUSION_CONV=cudnn "$D" "${B[@]}" >out.log 2>err.log
rc=$?
grep "cudnnFindConvolution.*failed .*heuristic" err.log | sed 's/: cudnnFind.*//' > warned.txt
[ $rc -eq 0 ] && grep -q "^train_step " out.log && [ "$(wc -l < warned.txt)" -ge 3 ] &&
  [ -z "$(sort warned.txt | uniq -d)" ] && ok || bad "cudnnFind failing: exit $rc, $(head -3 err.log)"

# a fault in an own conv kernel while it is timed (a sticky error: the CUDA context is lost): the
# run stops, and its error names the shape and configuration that faulted; with
# DIFFUSION_CONV=cudnn that kernel never runs
EMU_FAULT_KERNEL=conv_gemm_kernel "$D" "${B[@]}" >out.log 2>err.log
rc=$?
[ $rc -ne 0 ] && [ "$(wc -l < err.log)" = 1 ] &&
  grep -q "GPU faulted earlier: conv N=2 1->8 12x12 .*timing the own forward configuration" err.log &&
  ok || bad "a fault in an own conv kernel: exit $rc, $(cat err.log)"
EMU_FAULT_KERNEL=conv_gemm_kernel DIFFUSION_CONV=cudnn must "$D" "${B[@]}"

# out of GPU memory: the size asked and what is free, no crash, nothing written
EMU_GPU_MEMORY_MB=40 "$D" "${S[@]}" --n 400000 --device cuda --out oom.png >out.log 2>err.log
rc=$?
[ $rc -ne 0 ] && grep -q "out of GPU memory allocating .* MiB free" err.log && ok ||
  bad "out of memory: exit $rc, $(cat err.log)"
[ ! -e oom.png ] && ok || bad "a failed run wrote oom.png"

echo "cli_emu: $pass passed, $fail failed"
[ "$fail" -eq 0 ]

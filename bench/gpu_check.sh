#!/usr/bin/env bash
# One script for a short lease on a GPU machine (../shared/DEVICE.md): configure and build with
# CUDA, run the GPU tests (once more under compute-sanitizer when the machine allows it), time
# `diffusion bench` and the PyTorch peer, and print one table with the card's name.
#
#   bench/gpu_check.sh [options] [PEER_SCRIPT]
#     PEER_SCRIPT        the PyTorch peer (torch_unet_peer.py); skipped when not given or absent
#     --build-dir DIR    build folder (default: build-gpucheck in the source tree)
#     --deps ARCHIVE     build against the libraries and headers packed by bench/gpu_deps.sh
#                        (for a GPU machine without OpenBLAS, cairo, cJSON, ... and no way to
#                        install them): unpacked into the build folder, found through RPATH
#     --build-only       configure and build, then stop (works without a GPU)
#     --no-sanitizer     skip the compute-sanitizer run
#     --no-peer-compile  skip the peer's torch.compile pass
#     --quick-bench      shorter timings (0.3 s per measurement instead of 1 s)
#     --ncu REGEX        Nsight Compute (ncu) on the kernels whose mangled names match REGEX, during
#                        `diffusion bench --train 256` (the autotuner's timing runs included):
#                        the launches after --ncu-skip N (default 0), --ncu-count N of them
#                        (default 4), in ncu.log; after the bar rows, at most 90 s
#     --pack FILE        at the end, every log and JSON file in one .tar.gz (FILE outside the logs'
#                        folder): for a tool that brings back only a few files from $OUT
#     --bar-repeats N    after the peer, N more rounds of the two bar rows (train step at batch
#                        128, DDIM-20 at 256): ours, then the peer's CUDA graphs, each round in
#                        a fresh process; prints each round's ratios and their median (the DDIM
#                        row moves by about 4% between runs of the same code: one run cannot
#                        settle a 1.5x bar within that)
#     --budget S         seconds for the whole run (default 480): each stage gets its own limit,
#                        cut to what is left; a stage with under 20 s left is skipped
#
# Logs and JSON go to $OUT when it is set, else to BUILD_DIR/gpu_check. Order: build, GPU tests,
# diffusion bench (with DIFFUSION_CONV_LOG=2: each convolution shape's timings, every
# candidate's, and the kernel chosen, in conv_choices.txt; if it fails, once more with cuDNN
# only), PyTorch peer
# (eager and CUDA graphs), the two bar rows beside the peer N more times (--bar-repeats), the
# two bar rows again with cuDNN only, with the handwritten
# tensor-core convolutions only and with CUDA graphs off (what each is worth), the peer under
# torch.compile (slow to start: whatever rows finish in the time left), then compute-sanitizer
# (optional and slow, so last: memcheck on the GPU tests, then synccheck on the non-convolution
# kernels and racecheck on the convolution ones, in what time is left). A stage that
# fails or times out is reported in the table and the script carries on (a failed build skips
# the stages that need it, not the peer); the table is printed on every way out, with the GPU
# tests' failed checks (each names its op and shape). Exit status: 0 when the build and the GPU
# tests passed, 1 when either failed, 2 when there is no GPU (or no nvcc).
set -u

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$SRC/build-gpucheck"
PEER=""
DEPS=""
PACK=""
NCU_RE=""
NCU_SKIP=0
NCU_COUNT=4
BUILD_ONLY=0
SANITIZER=1
PEER_COMPILE=1
MIN_S=1
BUDGET=480
BAR_REPEATS=0
while [ $# -gt 0 ]; do
    case "$1" in
    --build-dir) BUILD="${2:?--build-dir needs a folder}"; shift 2 ;;
    --deps) DEPS="${2:?--deps needs an archive from bench/gpu_deps.sh}"; shift 2 ;;
    --pack) PACK="${2:?--pack needs a file name}"; shift 2 ;;
    --ncu) NCU_RE="${2:?--ncu needs a kernel name regex}"; shift 2 ;;
    --ncu-skip) NCU_SKIP="${2:?--ncu-skip needs a number}"; shift 2 ;;
    --ncu-count) NCU_COUNT="${2:?--ncu-count needs a number}"; shift 2 ;;
    --build-only) BUILD_ONLY=1; shift ;;
    --no-sanitizer) SANITIZER=0; shift ;;
    --no-peer-compile) PEER_COMPILE=0; shift ;;
    --quick-bench) MIN_S=0.3; shift ;;
    --budget) BUDGET="${2:?--budget needs seconds}"; shift 2 ;;
    --bar-repeats) BAR_REPEATS="${2:?--bar-repeats needs a count}"; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
    *) PEER="$1"; shift ;;
    esac
done
for v in "$BUDGET" "$NCU_SKIP" "$NCU_COUNT" "$BAR_REPEATS"; do
    case "$v" in
    '' | *[!0-9]*) echo "gpu_check: --budget, --ncu-skip, --ncu-count and --bar-repeats want whole numbers, got '$v'" >&2; exit 2 ;;
    esac
done
LOGS="${OUT:-$BUILD/gpu_check}"
mkdir -p "$LOGS" || { echo "gpu_check: cannot create $LOGS" >&2; exit 2; }
# a rerun in the same folder must not show the last run's failures or errors
rm -f "$LOGS/gpu_failures.txt" "$LOGS/worst_errors.txt" "$LOGS/bench.json" "$LOGS/peer.json" "$LOGS/bar_rounds.txt" \
    "$LOGS/peer_compile.log" "$LOGS/ncu.log"
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
say() { echo "[gpu_check $(elapsed)s] $*"; }

# results for the final table: "stage|status|note"
RESULTS=()
record() { RESULTS+=("$1|$2|$3"); }
# limit STAGE_SECONDS: the stage's own limit, cut to the budget left (minus 10 s for the table);
# prints 0 when under 20 s would be left (callers skip the stage: `timeout 0` means no limit)
limit() {
    local left=$(( BUDGET - $(elapsed) - 10 ))
    if [ "$left" -lt 20 ]; then echo 0; elif [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}
# the stages that cannot be skipped: out of budget, they time out at once instead
at_least_1() { if [ "$1" = 0 ]; then echo 1; else echo "$1"; fi; }

CARD=""
STATUS=0
BUILT=0
BENCH_JSON=""
PEER_JSON=""
# the machine's python3 with torch (Debian's /usr/bin/python3 when PATH's python3 lacks it)
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch" > /dev/null 2>&1 && [ -x /usr/bin/python3 ] &&
        /usr/bin/python3 -c "import torch" > /dev/null 2>&1; then
    PY=/usr/bin/python3
fi

# ---------------------------------------------------------------- the table, on every way out
finish() {
    {
        echo
        echo "==== gpu_check on ${CARD:-no GPU} ($(elapsed)s) ===="
        local r stage st note
        for r in "${RESULTS[@]}"; do
            IFS='|' read -r stage st note <<< "$r"
            printf "%-18s %-8s %s\n" "$stage" "$st" "$note"
        done
        if [ -s "$LOGS/gpu_failures.txt" ]; then
            echo "GPU test failures (first 25 of $(wc -l < "$LOGS/gpu_failures.txt"); all in ctest_gpu.log):"
            head -n 25 "$LOGS/gpu_failures.txt" | cut -c1-200 | sed 's/^/  /'
        fi
        if [ -s "$LOGS/worst_errors.txt" ]; then
            echo "largest relative errors against the CPU backend:"
            sed 's/^/  /' "$LOGS/worst_errors.txt"
        fi
        if [ -n "$BENCH_JSON$PEER_JSON" ] && "$PY" -c "import json" > /dev/null 2>&1; then
            "$PY" - "$BENCH_JSON" "$PEER_JSON" "$LOGS/peer_compile.log" << 'EOF'
import json, os, re, sys
def load(p):
    try:
        return json.load(open(p)) if p else None
    except Exception as e:
        print("  (cannot read %s: %s)" % (p, e)); return None
ours, peer = load(sys.argv[1]), load(sys.argv[2])
rows = {}
for r in (ours or {}).get("rows", []):
    rows.setdefault((r["task"], r["batch"]), {})["diffusion"] = r["ms"]
for r in (peer or {}).get("rows", []):
    rows.setdefault((r["task"], r["batch"]), {})["torch " + r["mode"]] = r["ms"]
# the torch.compile pass: the rows its log printed (it may have run out of time part way)
if os.path.exists(sys.argv[3]):
    for line in open(sys.argv[3]):
        m = re.match(r"compile\s+(\w+)\s+B=\s*(\d+)\s+([0-9.]+) ms", line)
        if m:
            rows.setdefault((m.group(1), int(m.group(2))), {})["torch compile"] = float(m.group(3))
cols = ["diffusion", "torch eager", "torch graphs", "torch compile"]
cols = [c for c in cols if any(c in v for v in rows.values())]
print("times in ms (median of five; lower is better), card: %s" %
      ((ours or {}).get("device") or (peer or {}).get("device") or "?"))
if (ours or {}).get("device_detail"):
    print("  " + ours["device_detail"])
print("%-12s %6s " % ("work", "batch") + " ".join("%13s" % c for c in cols) +
      ("   best torch / diffusion" if "diffusion" in cols and len(cols) > 1 else ""))
order = {"train_step": 0, "denoise_fwd": 1, "ddim20_loop": 2}
for (task, b) in sorted(rows, key=lambda k: (order.get(k[0], 9), k[1])):
    v = rows[(task, b)]
    line = "%-12s %6d " % (task, b) + " ".join(
        "%13.3f" % v[c] if c in v else "%13s" % "-" for c in cols)
    tb = [v[c] for c in cols if c.startswith("torch") and c in v]
    if "diffusion" in v and tb:
        line += "   %6.2fx" % (min(tb) / v["diffusion"])
    print(line)
if peer and not any("torch compile" in v for v in rows.values()):
    print("torch.compile was not timed in this run: 'best torch' is eager or CUDA graphs")
EOF
        fi
        echo "logs: $LOGS"
    } | tee "$LOGS/summary.txt"
    if [ -n "$PACK" ] && ! tar czf "$PACK" -C "$LOGS" .; then
        echo "gpu_check: cannot pack the logs into $PACK" >&2
    fi
    exit "$1"
}

# ---------------------------------------------------------------- is there anything to run on?
NVCC="$(command -v nvcc || true)"
[ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc
if [ -z "$NVCC" ]; then
    echo "gpu_check: no nvcc (looked in PATH and /usr/local/cuda/bin): cannot build the CUDA backend" >&2
    record "build" "not run" "no nvcc in PATH or /usr/local/cuda/bin"
    finish 2
fi
if command -v nvidia-smi > /dev/null 2>&1; then
    CARD="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2> /dev/null | head -n 1)"
fi
# For checking this script on a machine without a GPU: the stages then fail or skip as they would.
[ -z "$CARD" ] && CARD="${GPU_CHECK_ASSUME_CARD:-}"
if [ -z "$CARD" ] && [ "$BUILD_ONLY" = 0 ]; then
    echo "gpu_check: no NVIDIA GPU visible (nvidia-smi missing or lists none); nothing to run." >&2
    echo "gpu_check: use --build-only to check that the CUDA build configures and compiles." >&2
    record "gpu" "none" "nvidia-smi missing or lists no GPU (--build-only builds without one)"
    finish 2
fi
say "card: ${CARD:-none (build only)}; nvcc: $("$NVCC" --version | tail -n 1)"
{
    echo "card: ${CARD:-none}"
    nvidia-smi 2> /dev/null || true
    "$NVCC" --version
} > "$LOGS/machine.txt" 2>&1

# ---------------------------------------------------------------- configure and build
DEPS_ARGS=()
if [ -n "$DEPS" ]; then
    # the archive's libraries: headers and pkg-config files for the build, DT_RPATH (not RUNPATH,
    # so that the libraries they load in turn come from there too) for the programs it makes
    mkdir -p "$BUILD" && D="$(cd "$BUILD" && pwd)/deps" && rm -rf "$D" && tar -C "$BUILD" -xJf "$DEPS" || {
        echo "gpu_check: cannot unpack $DEPS into $BUILD" >&2
        record "build" "FAILED" "cannot unpack --deps $DEPS"
        finish 1
    }
    export PKG_CONFIG_PATH="$D/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
    command -v pkg-config > /dev/null 2>&1 || export PKG_CONFIG="$D/bin/pkg-config"
    DEPS_ARGS=(-DCMAKE_PREFIX_PATH="$D"
               -DCMAKE_EXE_LINKER_FLAGS="-Wl,--disable-new-dtags -Wl,-rpath,$D/lib -Wl,-rpath-link,$D/lib")
    say "libraries and headers from $DEPS ($(ls "$D/lib" | wc -l) files in $D/lib)"
fi
GEN=()
command -v ninja > /dev/null 2>&1 && GEN=(-G Ninja)
# A build folder configured with another generator cannot be reused: start it afresh.
if [ -f "$BUILD/CMakeCache.txt" ] && ! grep -q "CMAKE_GENERATOR:INTERNAL=${GEN[1]:-Unix Makefiles}\$" "$BUILD/CMakeCache.txt"; then
    rm -rf "$BUILD/CMakeCache.txt" "$BUILD/CMakeFiles"
fi
say "configuring ($BUILD)"
if ! timeout "$(at_least_1 "$(limit 120)")" cmake -S "$SRC" -B "$BUILD" "${GEN[@]}" -DDIFFUSION_CUDA=ON -DDIFFUSION_EMU=OFF \
        -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_BUILD_TYPE=Release "${DEPS_ARGS[@]}" > "$LOGS/configure.log" 2>&1; then
    tail -n 30 "$LOGS/configure.log"
    echo "gpu_check: configure failed (cuDNN is looked for in /usr/local/cuda/{include,lib64} and" \
         "/usr/{include,lib}/x86_64-linux-gnu; log: $LOGS/configure.log)" >&2
    record "build" "FAILED" "configure: $(grep -m1 -E "Error|error" "$LOGS/configure.log" | cut -c1-100) (configure.log)"
    STATUS=1
else
    grep "diffusion: CUDA backend" "$LOGS/configure.log" | sed 's/^-- //'
    say "building with $(nproc) jobs"
    if ! timeout "$(at_least_1 "$(limit 300)")" cmake --build "$BUILD" -j "$(nproc)" > "$LOGS/build.log" 2>&1; then
        grep -E "error|Error" "$LOGS/build.log" | head -n 30
        echo "gpu_check: build failed (log: $LOGS/build.log)" >&2
        record "build" "FAILED" "$(grep -m1 -E "error" "$LOGS/build.log" | sed 's|^[^ ]*/||' | cut -c1-100) (build.log)"
        STATUS=1
    else
        BUILT=1
        WARN=$(grep -c -i "warning" "$LOGS/build.log" || true)
        record "build" "ok" "$WARN warning lines in build.log, $(elapsed)s so far"
        say "built ($WARN warning lines)"
    fi
fi
if [ "$BUILD_ONLY" = 1 ]; then
    say "build only: done"
    finish "$STATUS"
fi

# ---------------------------------------------------------------- GPU tests
if [ "$BUILT" = 0 ]; then
    record "gpu tests" "not run" "no build"
else
    L=$(at_least_1 "$(limit 300)")
    say "GPU tests (ctest -L gpu, limit ${L}s)"
    # -V: every test's output goes to the log, the passing ones' too (their errors are read
    # below); DIFFUSION_CONV_LOG=1: which convolution (cuDNN algorithm and math, or own
    # configuration) each shape got, for reading a failure
    DIFFUSION_CONV_LOG=1 timeout "$L" ctest --test-dir "$BUILD" -L gpu -V --timeout "$L" \
        > "$LOGS/ctest_gpu.log" 2>&1
    RC=$?
    SUMMARY=$(grep -E "tests passed|tests failed" "$LOGS/ctest_gpu.log" | tail -n 1)
    # every failed check, naming its op and shape ("FAIL file:line: what"); ctest -V prefixes
    # each line of a test's output with "N: "
    grep -E "FAIL|FATAL" "$LOGS/ctest_gpu.log" | sed 's/^[0-9]*: //' > "$LOGS/gpu_failures.txt" || true
    if grep -q -E "\(Skipped\)|\*\*\*Skipped" "$LOGS/ctest_gpu.log"; then
        # on a GPU machine a skip means the backend did not come up: that is a failure here
        WHY=$(grep -m1 "SKIPPED" "$LOGS/ctest_gpu.log" | sed 's/^[0-9]*: //' | cut -c1-160)
        record "gpu tests" "FAILED" "skipped on a GPU machine: ${WHY:-see ctest_gpu.log}"
        STATUS=1
    elif [ $RC -eq 0 ]; then
        record "gpu tests" "ok" "$SUMMARY"
    elif [ $RC -eq 124 ]; then
        record "gpu tests" "FAILED" "over the ${L}s limit: ${SUMMARY:-no summary} (ctest_gpu.log)"
        STATUS=1
    else
        record "gpu tests" "FAILED" "rc $RC: $SUMMARY (ctest_gpu.log)"
        STATUS=1
    fi
    grep -E "^ *[0-9]+/[0-9]+ Test" "$LOGS/ctest_gpu.log"
    # the per-op errors closest to their tolerance, for a quick look ("... rel err E (tol T)";
    # lines without a tolerance, such as the graph replay's report, are not ratios)
    grep "rel err" "$LOGS/ctest_gpu.log" | sed 's/^[0-9]*: //' |
        awk '{ e = ""; for (i = 1; i < NF; i++) if ($i == "err") e = $(i + 1);
               t = $NF; gsub(/[()]/, "", t);
               if (e != "" && $(NF - 1) == "(tol" && t + 0 > 0) printf "%.3f %s\n", e / t, $0 }' |
        sort -g -r | head -n 8 | sed 's/^\([^ ]*\) */\1 of tol: /' > "$LOGS/worst_errors.txt" || true
fi

# ---------------------------------------------------------------- diffusion bench
if [ "$BUILT" = 0 ]; then
    record "diffusion bench" "not run" "no build"
elif ! { [ -x "$BUILD/diffusion" ] && "$BUILD/diffusion" --help 2> /dev/null | grep -E "^ +bench " | grep -q -v "not in this build"; }; then
    record "diffusion bench" "skipped" "no bench command in this build"
elif [ "$(limit 240)" = 0 ]; then
    record "diffusion bench" "skipped" "no time left in the budget"
else
    L=$(limit 240)
    say "diffusion bench --device cuda (limit ${L}s)"
    if DIFFUSION_CONV_LOG=2 DIFFUSION_GN_LOG=1 timeout "$L" "$BUILD/diffusion" bench --device cuda --min-time "$MIN_S" \
            --json "$LOGS/bench.json" > "$LOGS/bench.log" 2>&1; then
        BENCH_JSON="$LOGS/bench.json"
        record "diffusion bench" "ok" "bench.json"
    else
        record "diffusion bench" "FAILED" "rc $?: $(tail -n 1 "$LOGS/bench.log" | cut -c1-100)"
        # a handwritten kernel that faults ends the run (the CUDA context is lost): the table
        # still gets our rows, with cuDNN for every convolution
        if [ "$(limit 180)" != 0 ]; then
            L=$(limit 180)
            say "diffusion bench again with DIFFUSION_CONV=cudnn (limit ${L}s)"
            if DIFFUSION_CONV=cudnn timeout "$L" "$BUILD/diffusion" bench --device cuda \
                    --min-time "$MIN_S" --json "$LOGS/bench.json" > "$LOGS/bench_retry_cudnn.log" 2>&1; then
                BENCH_JSON="$LOGS/bench.json"
                record "bench, cuDNN only" "ok" "the table's diffusion column (bench_retry_cudnn.log)"
            else
                record "bench, cuDNN only" "FAILED" "rc $?: $(tail -n 1 "$LOGS/bench_retry_cudnn.log" | cut -c1-90)"
            fi
        fi
    fi
    grep -v -E "^diffusion: (conv|group_norm)" "$LOGS/bench.log"
    # the group norm's forward and backward launches per shape: every candidate's time, the
    # fixed choice marked
    grep -E "^diffusion: (group_norm|warning: group_norm)" "$LOGS/bench.log" > "$LOGS/gn_choices.txt" || true
    if [ -s "$LOGS/gn_choices.txt" ]; then
        # per shape line: the fixed launch's time minus the fastest one's (the chosen one's)
        GNX=$(awk '/^diffusion: group_norm/ {
                   n++; f = 0; b = 1e30; fn = ""
                   for (i = 1; i < NF; i++) {
                       if ($i == "(fixed)") { f = $(i - 1); fn = $(i - 2) }
                       if ($i ~ /^(t[0-9]+[vq][0-9]+|b[0-9]+v[0-9]+|reread)$/ && $(i + 1) + 0 < b) b = $(i + 1) + 0
                   }
                   if (fn == $NF) k++; else s += f - b
               } END { printf "%d shapes, %d kept the fixed launch; %.1f us saved over one call of each", n, k, s }' "$LOGS/gn_choices.txt")
        record "group norm choices" "info" "$GNX (gn_choices.txt)"
    fi
    # which convolution kernel each shape and direction got (handwritten or cuDNN), every
    # candidate's time (DIFFUSION_CONV_LOG=2: what tuning the kernels further can start from), and
    # any handwritten kernel that disagreed with cuDNN and was dropped
    grep -E "^diffusion: conv|disagree" "$LOGS/bench.log" > "$LOGS/conv_choices.txt" || true
    if [ -s "$LOGS/conv_choices.txt" ]; then
        OWN=$(grep -o -- "-> own" "$LOGS/conv_choices.txt" | wc -l)
        CUD=$(grep -o -- "-> cudnn" "$LOGS/conv_choices.txt" | wc -l)
        TCS=$(grep -oE -- "own (tc|st|pl)[0-9a-z]+ [0-9.]+ us -> own" "$LOGS/conv_choices.txt" | wc -l)
        BAD=$(grep -c "disagree" "$LOGS/conv_choices.txt" || true)
        record "conv choices" "info" "$OWN handwritten ($TCS on tensor cores), $CUD cuDNN, $BAD disagreeing (conv_choices.txt)"
    fi
fi

# ---------------------------------------------------------------- PyTorch peer
if [ -z "$PEER" ]; then
    record "pytorch peer" "skipped" "no peer script given"
elif [ ! -f "$PEER" ]; then
    record "pytorch peer" "skipped" "$PEER not found"
elif ! "$PY" -c "import torch" > /dev/null 2>&1; then
    record "pytorch peer" "skipped" "$PY has no torch"
elif [ "$(limit 240)" = 0 ]; then
    record "pytorch peer" "skipped" "no time left in the budget"
else
    L=$(limit 240)
    say "PyTorch peer $PEER (limit ${L}s)"
    if timeout "$L" "$PY" "$PEER" --json "$LOGS/peer.json" --min-s "$MIN_S" > "$LOGS/peer.log" 2>&1; then
        PEER_JSON="$LOGS/peer.json"
        record "pytorch peer" "ok" "peer.json"
    else
        record "pytorch peer" "FAILED" "rc $?: $(tail -n 1 "$LOGS/peer.log" | cut -c1-100)"
    fi
    cat "$LOGS/peer.log"
fi

# ---------------------------------------------------------------- the bar rows, repeated
# --bar-repeats N: ours and the peer's CUDA graphs (its fastest on these two rows in every H200
# run so far, torch.compile included) in turn, each in a fresh process, N rounds
if [ "$BAR_REPEATS" -gt 0 ] && [ -n "$BENCH_JSON" ] && [ -n "$PEER_JSON" ]; then
    R=0
    while [ "$R" -lt "$BAR_REPEATS" ]; do
        L=$(limit 90)
        [ "$L" = 0 ] && break
        R=$((R + 1))
        say "bar rows, round $R of $BAR_REPEATS (limit ${L}s)"
        timeout "$L" "$BUILD/diffusion" bench --device cuda --min-time "$MIN_S" --train 128 \
            --forward 0 --ddim 256 > "$LOGS/bar_ours_$R.log" 2>&1
        L=$(limit 90)
        [ "$L" = 0 ] && break
        timeout "$L" "$PY" "$PEER" --modes graphs --min-s "$MIN_S" > "$LOGS/bar_peer_$R.log" 2>&1
        awk -v r="$R" 'FNR == 1 { f++ }
             f == 1 && $1 == "train_step" && $2 == 128 { ot = $3 }
             f == 1 && $1 == "ddim20_loop" && $2 == 256 { od = $3 }
             f == 2 && $1 == "graphs" && $2 == "train_step" && $4 == 128 { pt = $5 }
             f == 2 && $1 == "graphs" && $2 == "ddim20_loop" && $4 == 256 { pd = $5 }
             END { if (ot && od && pt && pd)
                       printf "%d %.3f %.3f %.3f %.3f %.3f %.3f\n", r, ot, pt, pt / ot, od, pd, pd / od }' \
            "$LOGS/bar_ours_$R.log" "$LOGS/bar_peer_$R.log" >> "$LOGS/bar_rounds.txt"
    done
    if [ -s "$LOGS/bar_rounds.txt" ]; then
        echo "bar rows, ms (round: ours, torch graphs, ratio for train 128; the same for DDIM 256):"
        cat "$LOGS/bar_rounds.txt"
        MED=$(sort -n -k4 "$LOGS/bar_rounds.txt" | awk '{ a[NR] = $4 } END { print a[int((NR + 1) / 2)] }')
        MDD=$(sort -n -k7 "$LOGS/bar_rounds.txt" | awk '{ a[NR] = $7 } END { print a[int((NR + 1) / 2)] }')
        MIN=$(sort -n -k7 "$LOGS/bar_rounds.txt" | awk 'NR == 1 { print $7 }')
        record "bar rows repeated" "info" "$(wc -l < "$LOGS/bar_rounds.txt") rounds; median ratio train 128 ${MED}x, DDIM 256 ${MDD}x (lowest ${MIN}x) (bar_rounds.txt)"
    else
        record "bar rows repeated" "FAILED" "no round finished (bar_ours_1.log, bar_peer_1.log)"
    fi
elif [ "$BAR_REPEATS" -gt 0 ]; then
    record "bar rows repeated" "not run" "needs the bench and the peer to have run"
fi

# ---------------------------------------------------------------- the bar rows, other settings
# train step at batch 128 and DDIM-20 at batch 256 with the decoder's skip convolutions apart
# (not merged with the blocks' first ones), with cuDNN for every convolution, with the
# handwritten tensor-core convolutions for every one (untimed picks), then with CUDA graphs off:
# beside the main bench run (auto: the faster per shape), what each is worth; --profile adds each
# row's time by op (every node timed between synchronizes) to bench_*.log
if [ -n "$BENCH_JSON" ] && [ "$(limit 120)" != 0 ]; then
    for setting in "DIFFUSION_SKIP_MERGE=0" "DIFFUSION_CONV=cudnn" "DIFFUSION_CONV=own-tf32" \
            "DIFFUSION_CUDA_GRAPHS=0" \
            "DIFFUSION_CUDA_OFF=dense-group,direct-conv,gn-tune" "DIFFUSION_GN=fixed"; do
        L=$(limit 60)
        [ "$L" = 0 ] && break
        LOGF="$LOGS/bench_$(echo "$setting" | tr '=,-' '___').log"
        say "diffusion bench (bar rows) with $setting (limit ${L}s)"
        # DIFFUSION_CONV_LOG=1: the shapes' choices and times in the log (with
        # DIFFUSION_SKIP_MERGE=0, the decoder's pairs apart beside conv_choices.txt's merged ones)
        if env "$setting" DIFFUSION_CONV_LOG=1 timeout "$L" "$BUILD/diffusion" bench --device cuda --min-time 0.3 \
                --train 128 --forward 64 --ddim 256 --profile > "$LOGF" 2>&1; then
            ROWS=$(grep -E "^(train_step|ddim20_loop) " "$LOGF" |
                   awk '{ printf "%s %s: %s ms; ", $1, $2, $3 }')
            record "bench $setting" "info" "$ROWS"
        else
            record "bench $setting" "FAILED" "rc $?: $(tail -n 1 "$LOGF" | cut -c1-90)"
        fi
    done
fi

# ---------------------------------------------------------------- Nsight Compute (optional)
# The kernels matching --ncu as the bench runs them (its autotuner times every candidate on each
# new shape first, so the first launches are the first shape's candidates): speed of light,
# occupancy, launch statistics, warp states, memory workload, one kernel after another.
if [ -n "$NCU_RE" ]; then
    NCU="$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2> /dev/null | head -n 1)"
    if [ "$BUILT" = 0 ]; then
        record "ncu" "not run" "no build"
    elif [ -z "$NCU" ]; then
        record "ncu" "skipped" "ncu not found"
    elif [ "$(limit 90)" = 0 ]; then
        record "ncu" "skipped" "no time left in the budget"
    else
        L=$(limit 90)
        say "ncu on /$NCU_RE/ (skip $NCU_SKIP, count $NCU_COUNT; limit ${L}s)"
        # matched against mangled names, so that template arguments can pick one configuration
        # (conv_plane_kernelILb0ELi1ELi7ELi2ELi2ELi1E: pl32x112's forward); the report is
        # printed only after the program ends, so the count must leave time for that
        (cd "$BUILD" && timeout "$L" "$NCU" --clock-control none --kernel-name-base mangled \
            -k "regex:$NCU_RE" --launch-skip "$NCU_SKIP" --launch-count "$NCU_COUNT" \
            --section SpeedOfLight --section Occupancy --section LaunchStats \
            --section WarpStateStats --section InstructionStats --section SchedulerStats \
            --section MemoryWorkloadAnalysis ./diffusion bench --device cuda --train 256 \
            --forward 1 --ddim 0 --min-time 0.05) > "$LOGS/ncu.log" 2>&1
        RC=$?
        N=$(grep -c "^==PROF== Profiling" "$LOGS/ncu.log" || true)
        case $RC in
        0) record "ncu" "ok" "$N kernels profiled (ncu.log)" ;;
        124) record "ncu" "timeout" "over ${L}s, $N kernels profiled (ncu.log)" ;;
        *) record "ncu" "FAILED" "rc $RC, $N kernels: $(grep -m1 -i "error" "$LOGS/ncu.log" | cut -c1-80)" ;;
        esac
    fi
fi

# ---------------------------------------------------------------- PyTorch peer, torch.compile
# Slow to start (it compiles per batch size), so after everything else but the sanitizer; the rows
# it prints before its limit go into the table (peer_compile.log).
if [ "$PEER_COMPILE" = 0 ]; then
    record "peer compile" "skipped" "--no-peer-compile"
elif [ -z "$PEER_JSON" ]; then
    record "peer compile" "not run" "no peer run"
elif [ "$(limit 150)" = 0 ]; then
    record "peer compile" "skipped" "no time left in the budget"
else
    L=$(limit 150)
    say "PyTorch peer under torch.compile (limit ${L}s)"
    timeout "$L" "$PY" "$PEER" --modes compile --min-s "$MIN_S" > "$LOGS/peer_compile.log" 2>&1
    RC=$?
    N=$(grep -c -E "^compile +[a-z_0-9]+ +B=" "$LOGS/peer_compile.log" || true)
    if [ $RC -eq 0 ] && [ "$N" -gt 0 ]; then
        record "peer compile" "ok" "$N rows (peer_compile.log)"
    elif [ $RC -eq 0 ]; then # the peer reports a mode that fails and exits 0
        record "peer compile" "FAILED" "no rows: $(grep -m1 "failed:" "$LOGS/peer_compile.log" | cut -c1-90)"
    elif [ $RC -eq 124 ]; then
        record "peer compile" "timeout" "over ${L}s: the $N rows it finished are in the table"
    else
        record "peer compile" "FAILED" "rc $RC, $N rows: $(tail -n 1 "$LOGS/peer_compile.log" | cut -c1-80)"
    fi
fi

# ---------------------------------------------------------------- compute-sanitizer (optional)
SAN="$(command -v compute-sanitizer || true)"
[ -z "$SAN" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ] && SAN=/usr/local/cuda/bin/compute-sanitizer
# Runs each BIN that was built with --quick under compute-sanitizer TOOL (each at most LIMIT
# seconds, cut to the budget), one after another while they pass, into $LOGS/LOG, and records
# the outcome as NAME; returns 0 (clean), 86 (errors found), 124 (timeout) or another status
# (refused by the machine, or a test failed under the tool).
san_run() { # NAME TOOL LOG LIMIT BIN...
    local name="$1" tool="$2" log="$3" lim rc=0 errs b
    local bins=()
    lim=$(limit "$4")
    shift 4
    for b in "$@"; do [ -x "$BUILD/$b" ] && bins+=("$b"); done
    if [ ${#bins[@]} = 0 ]; then
        record "$name" "skipped" "no $1 binary"
        return 1
    elif [ "$lim" = 0 ]; then
        record "$name" "skipped" "no time left in the budget"
        return 1
    fi
    say "${bins[*]/%/ --quick} under compute-sanitizer $tool (limit ${lim}s each)"
    : > "$LOGS/$log"
    for b in "${bins[@]}"; do
        (cd "$BUILD" && timeout "$lim" "$SAN" --tool "$tool" --error-exitcode 86 "./$b" --quick) \
            >> "$LOGS/$log" 2>&1
        rc=$?
        [ $rc -eq 0 ] || break
    done
    errs=$(grep -m1 -E "ERROR SUMMARY|RACECHECK SUMMARY" "$LOGS/$log" | sed 's/^=* *//' || true)
    case $rc in
    0) record "$name" "ok" "${errs:-clean}" ;;
    86) record "$name" "FAILED" "${errs:-$tool errors} ($log)"; STATUS=1 ;;
    124) record "$name" "timeout" "over ${lim}s; not counted" ;;
    *) record "$name" "not run" "rc $rc: $(grep -m1 -i -E "error|fail" "$LOGS/$log" | cut -c1-100)" ;;
    esac
    return $rc
}
if [ "$SANITIZER" = 0 ]; then
    record "compute-sanitizer" "skipped" "--no-sanitizer"
elif [ "$BUILT" = 0 ]; then
    record "compute-sanitizer" "not run" "no build"
elif [ -z "$SAN" ]; then
    record "compute-sanitizer" "skipped" "not installed"
else
    san_run "compute-sanitizer" memcheck sanitizer.log 150 test_gpu_ops test_gpu_conv
    RC=$?
    # Shared-memory hazards and barriers, which the CPU emulation cannot show on real hardware
    # (the emulation runs a block's threads one at a time, and lands each cp.async at once or
    # at its wait): racecheck on the convolution kernels (cp.async pipelines, one barrier per
    # step), synccheck on the other kernels (block reductions, GroupNorm). Whatever time is left;
    # a timeout is not counted. Only when memcheck ran: the tool works on this machine. Synccheck
    # first: it finishes, while racecheck on the convolutions has outrun 100-120 s on every card
    # so far (sessions 17 and 19), and came last.
    if [ $RC -eq 0 ] || [ $RC -eq 86 ]; then
        san_run "synccheck" synccheck sanitizer_synccheck.log 60 test_gpu_ops
        san_run "racecheck" racecheck sanitizer_racecheck.log 120 test_gpu_conv
    fi
fi

finish "$STATUS"

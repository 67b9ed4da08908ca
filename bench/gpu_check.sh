#!/usr/bin/env bash
# poc59's one-shot GPU check (issue 12): from a fresh checkout on one CUDA machine without network, in under
# 9 minutes, the GPU tests and the GPU benchmark, and one short report.
#
#   bash bench/gpu_check.sh [--wheels DIR] [--total-s 530]
#   OUT=/results POC59_WHEELS=../shared/gpu/wheels bash bench/gpu_check.sh
#
# Steps, each with its own timeout inside one overall deadline (--total-s, default 530 s; a step that finds
# too little time left is SKIP):
#   environment  nvidia-smi, torch, CUDA, capability, bf16 with and without emulation -> env.md
#   packages     Python packages this machine lacks (hydra-core, omegaconf, antlr4, segmentation-models-pytorch,
#                submitit, ...), installed from a wheel folder (--wheels DIR or $POC59_WHEELS, else
#                ../shared/gpu/wheels beside the checkout) with pip install --no-index --no-deps --target:
#                nothing is downloaded and no wheel lives in the repository
#   GPU tests    pytest -m gpu tests/gpu -> gpu_tests.log, gpu_tests.xml
#   benchmark    python bench/gpu.py --budget-s <what is left> -> gpu_results.json, gpu_bench.log
# $OUT (default outputs/gpu_check) gets report.md (a PASS/FAIL/TIMEOUT/SKIP line per step, the benchmark table,
# the key numbers; rewritten after every step, so a killed run still has one) and the logs.
# Safe to run twice: each run clears its results in $OUT and its install folder; the benchmark's generated data
# in the work folder ($POC59_GPU_WORK, default /tmp/poc59-gpu-check-$UID) is reused.
# Exit status: 0 every step passed; 1 a step failed or timed out; 2 the Python environment is unusable (torch or
# another package cannot be imported and no wheel folder provides it); 3 no CUDA device: no GPU step was run.
set -u

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHEELS=${POC59_WHEELS:-}
TOTAL=530
while [ $# -gt 0 ]; do
  case $1 in
    --wheels) WHEELS=${2:?--wheels needs a folder}; shift 2 ;;
    --wheels=*) WHEELS=${1#*=}; shift ;;
    --total-s) TOTAL=${2:?--total-s needs seconds}; shift 2 ;;
    --total-s=*) TOTAL=${1#*=}; shift ;;
    -h|--help) sed -n '2,/^set -u/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench/gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $TOTAL in ''|*[!0-9]*) echo "bench/gpu_check.sh: --total-s must be whole seconds, got $TOTAL" >&2; exit 2 ;; esac

OUT=${OUT:-$REPO/outputs/gpu_check}
WORK=${POC59_GPU_WORK:-${TMPDIR:-/tmp}/poc59-gpu-check-$(id -u)}
PY=${PYTHON:-$(command -v python3 || command -v python)}
mkdir -p "$OUT" "$WORK" || exit 2
OUT=$(cd "$OUT" && pwd); WORK=$(cd "$WORK" && pwd)
rm -rf "$WORK/site" "$WORK/cache"
rm -f "$OUT"/report.md "$OUT"/env.md "$OUT"/steps.txt "$OUT"/packages.log "$OUT"/gpu_tests.* "$OUT"/gpu_bench.log \
  "$OUT"/gpu_results.json
T0=$(date +%s)
cd "$REPO" || exit 2
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 POC59_CACHE="$WORK/cache"
export PYTHONPATH="$REPO/src:$REPO${PYTHONPATH:+:$PYTHONPATH}"
HAVE_TIMEOUT=$(command -v timeout >/dev/null && echo 1 || echo 0)

left() { echo $((TOTAL - ($(date +%s) - T0))); }
say() { echo "$*" | tee -a "$OUT/steps.txt"; }

report() {  # report.md from what exists so far: called after every step
  {
    echo "# poc59 GPU check"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)," \
      "$(($(date +%s) - T0)) s of ${TOTAL} s"
    [ -f "$OUT/env.md" ] && { echo; cat "$OUT/env.md"; }
    echo
    echo "## Steps"
    echo
    echo '```'
    cat "$OUT/steps.txt" 2>/dev/null
    echo '```'
    if [ -f "$OUT/gpu_tests.log" ]; then
      echo
      echo "## GPU tests (pytest -m gpu tests/gpu)"
      echo
      echo '```'
      grep -E "^(FAILED|ERROR|SKIPPED|XFAIL|XPASS) |(passed|failed|skipped|errors?|deselected|no tests ran).* in [0-9.]+s" \
        "$OUT/gpu_tests.log" | cut -c1-300 | tail -n 40
      echo '```'
    fi
    if [ -f "$OUT/gpu_results.json" ]; then
      echo
      echo "## Benchmark (bench/gpu.py; raw figures in gpu_results.json)"
      echo
      "$PY" "$REPO/bench/gpu.py" --table "$OUT/gpu_results.json" 2>&1 | sed 's/^fit >= /- **bar** fit >= /'
    elif [ -f "$OUT/gpu_bench.log" ]; then
      echo
      echo "## Benchmark: no results file; the end of gpu_bench.log"
      echo
      echo '```'
      tail -n 15 "$OUT/gpu_bench.log" | cut -c1-300
      echo '```'
    fi
  } >"$OUT/report.md.tmp" && mv "$OUT/report.md.tmp" "$OUT/report.md"
}

finish() {  # STATUS WHY: the last line of the report, then exit
  say "RESULT   $2 (exit $1, $(($(date +%s) - T0)) s of ${TOTAL} s)"
  report
  exit "$1"
}

step() {  # NAME TIMEOUT LOG CMD...: one line in the report, the command's output in LOG
  local name=$1 t=$2 log=$3 l s rc v
  shift 3
  l=$(left)
  if [ "$l" -lt 30 ]; then say "SKIP     $name (${l}s left of ${TOTAL}s)"; report; return 99; fi
  [ "$t" -gt "$l" ] && t=$l
  s=$(date +%s)
  echo "+ $* (timeout ${t}s)" >"$log"
  if [ "$HAVE_TIMEOUT" = 1 ]; then timeout -k 10 "$t" "$@" >>"$log" 2>&1; else "$@" >>"$log" 2>&1; fi
  rc=$?
  case $rc in 0) v="PASS    " ;; 124|137) v="TIMEOUT " ;; *) v="FAIL rc=$rc" ;; esac
  say "$v $name ($(($(date +%s) - s))s, $(basename "$log"))"
  report
  return $rc
}

# ---- environment ------------------------------------------------------------------------------------------
if [ -z "$PY" ]; then say "FAIL     environment: no python3 on PATH (set PYTHON=/path/to/python)"; finish 2 "no Python"; fi
ENV_PY='
import sys
try:
    import torch
except Exception as e:
    print(f"- torch cannot be imported ({type(e).__name__}: {e}): install a CUDA build of torch"); sys.exit(2)
print(f"- Python {sys.version.split()[0]} ({sys.executable}), torch {torch.__version__}, CUDA build {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
ok = torch.cuda.is_available()
print(f"- torch.cuda.is_available(): {ok}, devices: {torch.cuda.device_count() if ok else 0}")
if ok:
    p = torch.cuda.get_device_properties(0)
    print(f"- GPU 0: {p.name}, capability {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB")
    print(f"- bf16: native {torch.cuda.is_bf16_supported(including_emulation=False)}, with emulation {torch.cuda.is_bf16_supported()}")
sys.exit(0 if ok else 3)
'
ENV_LOG=$OUT/env.log
s=$(date +%s)
(
  echo "## Environment"
  echo
  "$PY" -c "$ENV_PY" 2>"$ENV_LOG"; rc=$?
  if command -v nvidia-smi >/dev/null; then
    echo "- nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>>"$ENV_LOG" | head -n 4 | paste -sd ';')"
  else
    echo "- nvidia-smi: not on PATH"
  fi
  exit $rc
) >"$OUT/env.md"
rc=$?
nvidia-smi >>"$ENV_LOG" 2>&1 || true
case $rc in
  0) say "PASS     environment ($(($(date +%s) - s))s, env.md)" ;;
  3) say "PASS     environment ($(($(date +%s) - s))s, env.md): no CUDA device"
     say "SKIP     packages: no CUDA device, nothing to run"
     say "SKIP     GPU tests: no CUDA device (torch.cuda.is_available() is False)"
     say "SKIP     benchmark bench/gpu.py: no CUDA device"
     finish 3 "no CUDA device: no GPU step was run" ;;
  *) say "FAIL     environment: torch cannot be imported (env.md, env.log)"; finish 2 "the Python environment is unusable" ;;
esac

# ---- packages this machine lacks, from a wheel folder -----------------------------------------------------
NEEDED=(hydra omegaconf segmentation_models_pytorch submitit lightning timm torchmetrics numpy PIL rich tensorboard
  matplotlib safetensors psutil pyarrow)  # what training and the benchmark import; the tests need pytest too
missing() { "$PY" - "$@" <<'EOF'
import importlib, sys
gone = []
for m in sys.argv[1:]:
    try:
        importlib.import_module(m)
    except Exception:
        gone.append(m)
print(" ".join(gone))
EOF
}
MISSING=$(missing "${NEEDED[@]}" pytest)
if [ -n "$MISSING" ] && [ -z "$WHEELS" ]; then
  for d in "$REPO/../shared/gpu/wheels" "$REPO/.gpucheck/wheels"; do ls "$d"/*.whl >/dev/null 2>&1 && { WHEELS=$d; break; }; done
fi
if [ -z "$MISSING" ]; then
  say "PASS     packages: all importable, nothing installed"
elif [ -n "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  s=$(date +%s)
  mkdir -p "$WORK/site"
  (
    echo "missing: $MISSING; installing every wheel of $WHEELS into $WORK/site"
    if "$PY" -m pip --version >/dev/null 2>&1; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$WHEELS"/*.whl
    else  # no pip: a pure-Python wheel is a zip archive laid out for site-packages
      for w in "$WHEELS"/*.whl; do "$PY" -m zipfile -e "$w" "$WORK/site" || exit 1; done
    fi
  ) >"$OUT/packages.log" 2>&1
  rc=$?
  export PYTHONPATH="$PYTHONPATH:$WORK/site"
  STILL=$(missing "${NEEDED[@]}")
  if [ $rc != 0 ] || [ -n "$STILL" ]; then
    say "FAIL     packages: installed from $WHEELS (rc=$rc), still cannot import: ${STILL:-none} (packages.log)"
    finish 2 "the Python environment is unusable"
  fi
  say "PASS     packages: installed $MISSING from $WHEELS ($(($(date +%s) - s))s, packages.log)"
elif [ -n "$(missing "${NEEDED[@]}")" ]; then
  say "FAIL     packages: cannot import: $MISSING; ${WHEELS:+$WHEELS holds no .whl; }pass --wheels DIR or POC59_WHEELS=DIR"
  say "         (wheels from a machine with network: pip download --no-deps --only-binary=:all: -d DIR NAME==VERSION)"
  finish 2 "the Python environment is unusable"
else
  say "PASS     packages: all that training and the benchmark import (pytest is missing and no wheel folder has it)"
fi
report

# ---- the GPU tests, then the benchmark with what is left -------------------------------------------------
FAILED=0
if [ -n "$(missing pytest)" ]; then
  say "FAIL     GPU tests: pytest cannot be imported: add the wheels of pytest, pluggy and iniconfig to the wheel folder"
  FAILED=1
else
  step "GPU tests: pytest -m gpu tests/gpu" 270 "$OUT/gpu_tests.log" \
    "$PY" -m pytest -m gpu tests/gpu -q -rA -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" || FAILED=1
fi

BUDGET=$(($(left) - 45))  # the report and a kill margin after it
if [ "$BUDGET" -lt 60 ]; then
  say "SKIP     benchmark bench/gpu.py: ${BUDGET}s of budget left"
  FAILED=1
else
  step "benchmark: bench/gpu.py --budget-s $BUDGET" $((BUDGET + 35)) "$OUT/gpu_bench.log" \
    "$PY" bench/gpu.py --budget-s "$BUDGET" --output "$OUT/gpu_results.json" --work-dir "$WORK/bench" || FAILED=1
fi
for f in "$OUT"/*.log; do  # keep the logs small enough to bring back
  [ "$(stat -c %s "$f")" -gt 5000000 ] && { tail -c 5000000 "$f" >"$f.t"; mv "$f.t" "$f"; }
done
if [ $FAILED = 0 ]; then finish 0 "every step passed"; else finish 1 "a step failed, timed out or was skipped"; fi

#!/usr/bin/env bash
# Accelerator check: on a machine with an NVIDIA GPU, install the jax[cuda] matching
# the installed jax and the driver's CUDA major version, run `lgrad bench` at full
# sizes and every experiment's --full config that fits the time budget, and write
# everything to results/device/<device-name>/.
#
#   scripts/device_check.sh [--dry-run] [--budget SECONDS] [--factor F] [--wheels DIR]
#
#   --dry-run    list what would run with the estimated time of each step; run nothing
#                (works on a CPU-only machine)
#   --budget S   seconds for the experiments' --full runs together (default 480, ~8 min)
#   --factor F   estimated full-on-device time = F x the committed quick CPU runtime
#                (results/<name>/result.json "runtime_s"); default 1.0, a rough guess:
#                full configs are larger, the device is faster
#   --wheels D   install jax[cuda] from local wheels (pip --no-index --find-links D),
#                for a device machine without network access (prepare them with
#                `pip download "jax[cuda12]==<jax version>" -d D` on a connected machine)
#
# Experiments are taken shortest estimate first until the budget is spent; each runs
# under `timeout` (2 x its estimate, at least 60 s, at most what is left) and a
# timeout or failure is recorded in summary.txt, never hidden.
set -euo pipefail

DRY=0; BUDGET=480; FACTOR=1.0; WHEELS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --budget) BUDGET="$2"; shift ;;
    --factor) FACTOR="$2"; shift ;;
    --wheels) WHEELS="$2"; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "device_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"

# --- the device ------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
  CUDA_MAJOR="$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\).*/\1/p' | head -1)"
else
  GPU_NAME=""; CUDA_MAJOR=""
fi
if [ -z "$GPU_NAME" ] && [ "$DRY" -eq 0 ]; then
  echo "device_check.sh: no NVIDIA GPU found (nvidia-smi); use --dry-run on a CPU machine" >&2
  exit 2
fi
DEVICE="$(echo "${GPU_NAME:-cpu-dry-run}" | tr -c 'A-Za-z0-9._-' '-' | sed 's/-*$//')"
OUT="results/device/$DEVICE"
JAX_VERSION="$(python -c 'import jax; print(jax.__version__)')"
CUDA_EXTRA="cuda${CUDA_MAJOR:-12}"

# --- the plan: bench, then experiments by estimated time -------------------------
PLAN="$(python - "$BUDGET" "$FACTOR" <<'PY'
import json, subprocess, sys
from pathlib import Path
budget, factor = float(sys.argv[1]), float(sys.argv[2])
bench = Path("results/bench.json")
bench_est = json.loads(bench.read_text()).get("runtime_s", 600) * factor if bench.exists() else 600.0
print(f"bench\t-\t{bench_est:.0f}")
names = [line.split()[0] for line in subprocess.run(
    ["lgrad", "list"], capture_output=True, text=True, check=True).stdout.splitlines()
    if line and not line[0].isspace()]
est = {}
for name in names:
    res = Path("results") / name / "result.json"
    quick = json.loads(res.read_text()).get("runtime_s") if res.exists() else None
    est[name] = None if quick is None else float(quick) * factor
left = budget
for name in sorted(names, key=lambda n: (est[n] is None, est[n] or 0.0)):
    e = est[name]
    if e is None:
        print(f"skip\t{name}\t-\tno committed quick runtime to estimate from")
    elif e <= left:
        left -= e
        print(f"run\t{name}\t{e:.0f}")
    else:
        print(f"skip\t{name}\t{e:.0f}\tdoes not fit: {left:.0f} s of the {budget:.0f} s budget left")
PY
)"

echo "device: ${GPU_NAME:-none (dry run on CPU)}  ->  $OUT"
echo "jax $JAX_VERSION; install: jax[$CUDA_EXTRA]==$JAX_VERSION${WHEELS:+ from $WHEELS}"
echo "plan (estimates: --factor $FACTOR x committed quick CPU runtime; experiment budget $BUDGET s):"
TOTAL=0
while IFS=$'\t' read -r what name est why; do
  case "$what" in
    bench) printf '  %-5s %-28s ~%5s s   lgrad bench --out %s\n' "run" "bench (full sizes)" "$est" "$OUT" ;;
    run) printf '  %-5s %-28s ~%5s s   lgrad run %s --full --out %s/%s\n' "run" "$name" "$est" "$name" "$OUT" "$name"
         TOTAL=$((TOTAL + ${est%.*})) ;;
    skip) printf '  %-5s %-28s ~%5s s   (%s)\n' "skip" "$name" "$est" "$why" ;;
  esac
done <<< "$PLAN"
echo "experiments: ~$TOTAL s of $BUDGET s"
[ "$DRY" -eq 1 ] && { echo "dry run: nothing executed"; exit 0; }

# --- install and check the accelerator -------------------------------------------
if ! python -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
  if [ -n "$WHEELS" ]; then
    pip install --no-index --find-links "$WHEELS" "jax[$CUDA_EXTRA]==$JAX_VERSION"
  else
    pip install "jax[$CUDA_EXTRA]==$JAX_VERSION"
  fi
fi
python -c 'import jax; assert jax.default_backend() == "gpu", jax.devices(); print(jax.devices())'

mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
{ echo "device: $GPU_NAME"; echo "jax: $JAX_VERSION ($CUDA_EXTRA)"; date -u +"started: %Y-%m-%dT%H:%M:%SZ"; } > "$SUMMARY"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

START=$(date +%s)
while IFS=$'\t' read -r what name est why; do
  [ "$what" = skip ] && { echo "skipped $name: $why" >> "$SUMMARY"; continue; }
  t0=$(date +%s)
  if [ "$what" = bench ]; then
    set +e; lgrad bench --out "$OUT" --no-progress > "$OUT/bench.txt" 2>&1; rc=$?; set -e
    echo "bench: rc=$rc, $(( $(date +%s) - t0 )) s (estimated $est s)" >> "$SUMMARY"
    START=$(date +%s)  # the experiment budget starts after the bench
    continue
  fi
  left=$(( BUDGET - ($(date +%s) - START) ))
  limit=$(( 2 * ${est%.*} )); [ "$limit" -lt 60 ] && limit=60; [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -le 0 ]; then echo "skipped $name: budget spent" >> "$SUMMARY"; continue; fi
  set +e; timeout "$limit" lgrad run "$name" --full --out "$OUT/$name" > "$OUT/$name.log" 2>&1; rc=$?; set -e
  echo "$name: rc=$rc$([ "$rc" = 124 ] && echo ' (timed out)'), $(( $(date +%s) - t0 )) s (estimated $est s, limit $limit s)" >> "$SUMMARY"
done <<< "$PLAN"
date -u +"finished: %Y-%m-%dT%H:%M:%SZ" >> "$SUMMARY"
cat "$SUMMARY"

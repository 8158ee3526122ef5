#!/usr/bin/env bash
# The model's GPU throughput in one prepared run, under Keras 3's JAX backend in bf16
# (tools/bench_model.py does the timing and counts XLA FLOPs): cxr_tf's resnet50_v1
# (keras.applications' geometry) against keras.applications.ResNet50 at 224 px / batch 256
# and 512 px / batch 64, and densenet121 (CheXNet's network) against
# keras.applications.DenseNet121 on three channels at 224 px / batch 256.
#
#   bash tools/gpu_check.sh                  # on the GPU machine (JAX, no TensorFlow, no Keras)
#   bash tools/gpu_check.sh --fetch-wheels   # here, once before: Keras wheels into .whl/
#   PYTHON=/work/venv/bin/python bash tools/gpu_check.sh --cpu-smoke   # here, no GPU: 32 px
#
# The GPU machine has JAX but neither TensorFlow (too large to carry) nor Keras, so Keras and
# the two packages it needs that the machine lacks (namex, optree) travel as wheels in .whl/
# (ignored by git; name it in the run's `carry`). --fetch-wheels downloads them for the
# machine's Python 3.12 at the versions installed here. From the device tool (three
# configurations of at most 170 s each, inside one 10-minute call):
#   run(command="BENCH_TIMEOUT=170 bash tools/gpu_check.sh", carry=[".whl"], timeout_s=560)
#
# Writes one JSON line per configuration to $OUT/bench_model.jsonl (when $OUT is set) and the
# full logs beside it, then prints a table. Environment:
#   PYTHON              interpreter (default python3)
#   CXR_GPU_CHECK_SMOKE=1   same as --cpu-smoke: resnet18, 32 px, batch 4, 2 steps, 1 repeat
#   BENCH_TIMEOUT       seconds allowed per configuration (default 270), so one hung
#                       configuration cannot eat the whole device lease; 0: no limit
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
SMOKE="${CXR_GPU_CHECK_SMOKE:-0}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-270}"

case "${1:-}" in
  --cpu-smoke) SMOKE=1 ;;
  --fetch-wheels)
    # Versions pinned to what this checkout is tested with (setup.cfg pins keras).
    versions=$("$PYTHON" -c 'import importlib.metadata as m; print(" ".join(f"{p}=={m.version(p)}" for p in ("keras", "namex", "optree")))')
    # One version of each: two of one package stop the whole install there.
    mkdir -p .whl && rm -f .whl/keras-*.whl .whl/namex-*.whl .whl/optree-*.whl
    # shellcheck disable=SC2086
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $versions
    ls -l .whl
    exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--cpu-smoke | --fetch-wheels]" >&2; exit 2 ;;
esac

# The smoke run here uses the local Keras (the wheels in .whl/ are for the machine's Python 3.12).
if [[ "$SMOKE" == 1 ]] && "$PYTHON" -c "import keras" 2>/dev/null; then
  :
elif compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
elif ! "$PYTHON" -c "import keras" 2>/dev/null; then
  echo "gpu_check: $PYTHON cannot import keras and there is no .whl/; run '$0 --fetch-wheels' here and carry .whl" >&2
  exit 1
fi

export KERAS_BACKEND=jax
export PYTHONUNBUFFERED=1

OUT_DIR="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT_DIR"
JSONL="$OUT_DIR/bench_model.jsonl"
: >"$JSONL"

if [[ "$SMOKE" == 1 ]]; then
  # The cheapest arch: the smoke run checks the script and bench_model under JAX, not an arch.
  configs=("resnet18 32 4")
  extra=(--steps=2 --warmup=1 --repeats=1)
else
  configs=("resnet50_v1 224 256" "resnet50_v1 512 64" "densenet121 224 256")
  extra=(--steps=20 --warmup=5 --repeats=5)
fi

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PYTHON" -c 'import jax, keras; print("jax", jax.__version__, jax.devices(), "keras", keras.__version__)'
if [[ "$SMOKE" != 1 ]] && ! "$PYTHON" -c 'import jax, sys; sys.exit(jax.default_backend() == "cpu")'; then
  echo "gpu_check: JAX sees no GPU; the full sizes would take hours on CPU (use --cpu-smoke)" >&2
  exit 1
fi

status=0
for config in "${configs[@]}"; do
  read -r arch size batch <<<"$config"
  log="$OUT_DIR/bench_${arch}_${size}_b${batch}.log"
  echo "== ${arch}, ${size} px, batch ${batch}, bfloat16"
  # timeout 0 runs without a limit (GNU coreutils).
  if timeout "$BENCH_TIMEOUT" "$PYTHON" tools/bench_model.py --arch="$arch" --image_size="$size" \
      --batch_size="$batch" --precision=bfloat16 "${extra[@]}" 2>&1 | tee "$log"; then
    tail -n 1 "$log" >>"$JSONL"
  else
    echo "gpu_check: ${arch} ${size} px / batch ${batch} failed or ran past ${BENCH_TIMEOUT}s; see $log" >&2
    status=1
  fi
done

"$PYTHON" - "$JSONL" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(f"\n{'device':28}{'arch':>13}{'size/batch':>12}{'ours train':>12}{'keras.app':>11}{'ratio':>7}"
      f"{'ours infer':>12}{'keras.app':>11}{'ratio':>7}")
for r in rows:
    print(f"{r['device'][:27]:28}{r['arch']:>13}{str(r['image_size']) + '/' + str(r['batch_size']):>12}"
          f"{r['ours']['train_img_s']:>12,.0f}{r['keras_applications']['train_img_s']:>11,.0f}{r['ratio_train']:>7.3f}"
          f"{r['ours']['infer_img_s']:>12,.0f}{r['keras_applications']['infer_img_s']:>11,.0f}{r['ratio_infer']:>7.3f}")
print(f"(img/s, median of {rows[0]['repeats'] if rows else '?'} repeats; JSON lines in {sys.argv[1]})")
EOF
exit "$status"

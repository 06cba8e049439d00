#!/usr/bin/env bash
# The GPU checks as one command, sized for a lent GPU machine: 15 minutes of device time in all
# (its start takes a minute or more), at most 10 minutes per command. Each step has its own time
# budget; a step that runs out is reported and the next one starts.
#
#   1. `adntn compress` on the device with bf16 autocast for every structure on a small model
#      (demo_vgg, benchmarks/recipes/every-structure-{a,b}.yaml; must finish)
#   2. the bf16-against-float32 error per structure (bench_precision.py)
#   3. the generator benchmark (bench_generators.py)
#   4. the pipeline benchmark (bench_pipeline.py: VGG-16 at 224, batch 128, then channels-last)
#
# or, with --fashion, the CLI check (step 1 above) and the Fashion-MNIST accuracy study on the GPU
# (issue 15; results in benchmarks/results/accuracy-fashion-gpu.*, apart from the CPU grid's,
# whose teacher differs):
#
#   1. `adntn compress` for every structure with bf16, as above
#   2. the teacher: AlexNet at 224x224 on all 60,000 training images, bf16 autocast
#      (fashion_teacher.py --device cuda; cached in benchmarks/accuracy/.cache, which a warm
#      machine keeps between calls)
#   3. the grid with mera and augttn too (study.py --grid fashion --structures ... --budgets
#      20000 77000 2000): every structure at seed 0 first, the budgets of the ADNTN-against-tt
#      target first; it resumes, so a second call continues where the first ran out
#
# The machine has no Fashion-MNIST: copy the IDX files into the git-ignored .data/ and carry it:
#
#   mkdir -p .data && cp -r /usr/share/datasets/fashion-mnist .data/    # 30 MB
#
# then command `bash benchmarks/gpu_checks.sh --fashion`, carry [".whl", ".data"], timeout_s 600
# (the budgets add up to 520 s, 565 s with each step's 15 s to stop; on an H200 the teacher took
# 53 s and a grid cell 55 to 128 s). The teacher is cached on that machine only, and CUDA training
# is not bitwise repeatable: a call on a fresh machine trains another teacher, and the study
# then refuses to add its cells to the results file of the first (bring that one back with
# $OUT, or write to another --out).
#
# Results are rows with `device: cuda` in benchmarks/results/ (other devices' rows are kept),
# archived to $OUT/results.tgz too when $OUT is set (the device tool brings $OUT back: unpack
# it over benchmarks/results/ and commit).
#
# That machine has torch 2.11, torchvision 0.26, typer, rich, opt-einsum, safetensors, onnx and
# onnxruntime, but no pydantic, and it reaches no registry. So, here, once (the folder .whl/ is
# git-ignored and travels with the tree when the device call carries it):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
#     -d .whl pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
#     typing-inspection==0.4.5
#
# then run it through the device tool: command `bash benchmarks/gpu_checks.sh`, carry [".whl"],
# timeout_s 540 (the budgets below add up to 480 s). The script installs the wheels and adntn with --no-deps into /tmp/site, never
# touching the machine's torch (adntn runs from the checkout through PYTHONPATH if the build of
# adntn itself fails there).
#
# Rehearse it here before a GPU is lent, so that its minutes are not spent debugging:
#
#   PYTHON=.venv/bin/python bash benchmarks/gpu_checks.sh --device cpu --tiny   # results in /tmp
#   PYTHON=.venv/bin/python bash benchmarks/gpu_checks.sh --device cpu --tiny --fashion
#
# (a --tiny --fashion rehearsal trains on 256 made-up IDX images, with the study's cache in /tmp,
# and runs one ttn cell: a mera cell materialises FC6's weight at each of 1,000 steps, too slow
# for a CPU rehearsal)
#
# (with FORCE_WHEELS=1 WHEELS=<wheels for the local Python> it also rehearses the install)
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
TINY=0
FASHION=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=${2:?--device needs a value}; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --fashion) FASHION=1; shift ;;
    *) echo "gpu_checks.sh: unknown argument '$1' (valid: --device cpu|cuda, --tiny, --fashion)" >&2
       exit 2 ;;
  esac
done
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PY=${PYTHON:-python3}
RESULTS=benchmarks/results
WORK=$(mktemp -d /tmp/gpu_checks.XXXXXX)
if [ "$TINY" = 1 ]; then RESULTS=$WORK/results; mkdir -p "$RESULTS"; fi
STATUS=()

# -- set-up: what the machine lacks, without touching its torch --------------------------------
# WHEELS (default .whl) holds the carried wheels; FORCE_WHEELS=1 installs them even where pydantic
# exists (a rehearsal of this path with wheels for the local Python).
SITE=$WORK/site
WHEELS=${WHEELS:-.whl}
if [ -n "${FORCE_WHEELS:-}" ] || ! $PY -c "import pydantic" 2>/dev/null; then
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "pydantic is missing and no wheels are in $WHEELS/: see this script's header" >&2
    exit 2
  fi
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHEELS"/*.whl || exit 2
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -n "${FORCE_WHEELS:-}" ] || ! (cd / && $PY -c "import adntn_cli") 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
    --target "$SITE" . >/dev/null 2>&1 || echo "note: adntn not built here; using PYTHONPATH"
  export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
$PY -c "import adntn_cli, pydantic, torch; print('adntn', adntn_cli.__version__, 'from', \
adntn_cli.__file__, 'pydantic', pydantic.__version__, 'from', pydantic.__file__, 'torch', \
torch.__version__, 'cuda', torch.cuda.is_available())" || exit 2
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

step() {  # step NAME BUDGET_SECONDS COMMAND...: run it under its budget, record how it ended
  local name=$1 budget=$2 t0=$SECONDS rc
  shift 2
  echo "== $name (budget ${budget}s)"
  timeout --signal=INT --kill-after=15 "$budget" "$@"
  rc=$?
  [ $rc = 124 ] && echo "== $name ran out of its ${budget}s budget"
  STATUS+=("$name: rc=$rc, $((SECONDS - t0))s")
  archive
}

archive() {  # into $OUT after every step, so that a call cut short still brings back its results
  [ -n "${OUT:-}" ] || return 0  # one archive: the device tool brings back at most 8 files
  printf '%s\n' "${STATUS[@]}" >"$OUT/status.txt"
  (cd "$RESULTS" && tar czf "$OUT/results.tgz" --ignore-failed-read compress.* precision*.* \
    generators.* pipeline.* accuracy-fashion-gpu.* 2>/dev/null)
}

compress_runs() {  # both every-structure recipes through the CLI, then their rows
  $PY -c "import torch; from adntn_cli.models import build_model; torch.manual_seed(0); \
torch.save(build_model('demo_vgg', 10).state_dict(), '$WORK/teacher.pt')" || return 1
  local rc=0 run
  for run in a b; do
    $PY -m adntn_cli compress "$WORK/teacher.pt" --recipe "benchmarks/recipes/every-structure-$run.yaml" \
      --data "synthetic:$1" --device "$DEVICE" --precision bf16 --out "$WORK/run-$run" --quiet \
      || rc=1
  done
  $PY benchmarks/compress_rows.py "$WORK/run-a" "$WORK/run-b" --out "$RESULTS/compress" \
    --command "bash benchmarks/gpu_checks.sh --device $DEVICE (step compress)" || rc=1
  return $rc
}

fashion_data() {  # the IDX folder: carried in .data/, the Debian package's, or made up (--tiny)
  if [ "$TINY" = 1 ]; then
    $PY -c "import sys; sys.path.insert(0, '.'); from tests.cli.test_data_sources import \
idx_folder; idx_folder(__import__('pathlib').Path('$WORK/fashion'), n_train=256, n_val=64)" \
      >/dev/null && echo "$WORK/fashion"
  elif [ -d .data/fashion-mnist ]; then echo .data/fashion-mnist
  else echo /usr/share/datasets/fashion-mnist
  fi
}

export -f compress_runs
export PY DEVICE WORK RESULTS
if [ "$FASHION" = 1 ]; then
  DATA=$(fashion_data) || exit 2
  [ -e "$DATA/train-labels-idx1-ubyte.gz" ] || [ -e "$DATA/train-labels-idx1-ubyte" ] || {
    echo "no Fashion-MNIST in $DATA: see this script's header (carry .data)" >&2; exit 2; }
  GRID=(--grid fashion --device "$DEVICE" --data "$DATA" --out "$RESULTS/accuracy-fashion-gpu.json")
  if [ "$TINY" = 1 ]; then
    export ADNTN_STUDY_CACHE=$WORK/cache  # never the real teacher's cache
    step compress 240 bash -c "compress_runs 64"
    step fashion-teacher 300 $PY benchmarks/accuracy/fashion_teacher.py --device "$DEVICE" \
      --data "$DATA"
    step fashion-grid 300 $PY benchmarks/accuracy/study.py "${GRID[@]}" --structures ttn mera \
      --budgets 20000 2000 --only /2000/ttn/s0
  else
    step compress 90 bash -c "compress_runs 512"
    step fashion-teacher 160 $PY benchmarks/accuracy/fashion_teacher.py --device "$DEVICE" \
      --data "$DATA"
    step fashion-grid 270 $PY benchmarks/accuracy/study.py "${GRID[@]}" \
      --structures tt mera augttn ttn lowrank --budgets 20000 77000 2000
  fi
elif [ "$TINY" = 1 ]; then
  step compress 240 bash -c "compress_runs 64"
  step precision 120 $PY benchmarks/bench_precision.py --device "$DEVICE" --shape 512x512 \
    --batch 16 --out "$RESULTS/precision"
  step generators 240 $PY benchmarks/bench_generators.py --device "$DEVICE" --layers vgg16.fc8 \
    --structures ttn tt --ratios 2000 --batches 16 --repeats 1 --out "$RESULTS"
  step pipeline 240 $PY benchmarks/bench_pipeline.py --device "$DEVICE" --arch demo_vgg \
    --recipe demo --size 32 --batch 16 --repeats 1 --warmup 1 --out "$RESULTS/pipeline.json"
else
  step compress 120 bash -c "compress_runs 512"
  step precision 45 $PY benchmarks/bench_precision.py --device "$DEVICE"
  step generators 150 $PY benchmarks/bench_generators.py --device "$DEVICE" --repeats 5
  step pipeline 90 $PY benchmarks/bench_pipeline.py --device "$DEVICE" --arch vgg16 \
    --recipe vgg16 --size 224 --batch 128
  step pipeline-nhwc 75 $PY benchmarks/bench_pipeline.py --device "$DEVICE" --arch vgg16 \
    --recipe vgg16 --size 224 --batch 128 --channels-last
fi

echo "== summary"
printf '%s\n' "${STATUS[@]}" | tee "$WORK/status.txt"
! printf '%s\n' "${STATUS[@]}" | grep -qv 'rc=0,'

#!/usr/bin/env bash
# The GPU proof in one call: environment, data, then first the issue's GPU goal (airbench94_muon unchanged
# against fast94, >= 20 seeds each), the article's budgets, correctness, throughput, `cifarlab reproduce --tuned`
# and the optional parts (fast94 alone, the legacy airbench anchor, `cifarlab depth`), each a part of
# benchmarks/gpu_proof.py in its own process under its own time limit, all inside one wall-clock budget; then
# report.html and summary.txt. The comparison's budget is checked before anything starts.
# How a lent device runs it: benchmarks/GPU.md. `--help` for the flags.
set -u

usage() {
  cat <<'EOF'
usage: OUT=DIR bash benchmarks/gpu_proof.sh --pack PACK_DIR --airbench CHECKOUT [--budget-s 555] [--snap DIR]
                                            [--compare-seeds 20] [--parts LIST]
       bash benchmarks/gpu_proof.sh --dry-run --data-dir CIFAR_ROOT --airbench CHECKOUT [--out DIR]
       bash benchmarks/gpu_proof.sh --plan [--dry-run] [--budget-s S] [--compare-seeds N]

Writes under OUT: run.log, parts.tsv (a line per part: name, state, exit status, seconds, limit), one
JSON per part (env, data, compare, budgets, correctness, throughput, fast94, airbench, reproduce, depth; each
rewritten as the part goes), report.html (self-contained) and summary.txt. Parts run in that order: the GPU
goal's comparison first (compare: airbench94_muon.py unchanged, then fast94, --compare-seeds runs of each, their
mean accuracy with its 95% interval, mean time in airbench's scope, the ratio, the verdict), then the article's
budgets (budgets: benchmarks/campaign.py, resumable on the same machine). Before any part, the plan: the
expected seconds of env, data and the comparison; a budget they do not fit is refused (exit status 2, one line
naming the seed count that would fit). Each part gets
min(its own limit, budget left - MARGIN) seconds and is skipped when under MIN_PART_S are left; a
part that fails or times out does not stop the next. Exit status 0 when no part failed or timed out.

  --pack DIR       chunk folders c1..cN of `pack_data.py pack`: gathered into GATHER (default /tmp/pack,
                   where earlier calls on the same machine left theirs), unpacked into DATA (/tmp/cifar)
  --data-dir DIR   a CIFAR root in the official layout (cifar-10-batches-py/, cifar-100-python/): the
                   dry run copies 50 images of every file from it; a device run uses it as it is
  --budget-s S     wall seconds for everything (default 555; dry run 180)
  --airbench DIR   a checkout of KellerJordan/cifar10-airbench: compare runs its airbench94_muon.py unchanged;
                   the optional airbench part its airbench94.py (else airbench94_muon.py; AIRBENCH_SCRIPT=NAME)
  --compare-seeds N  runs of each side in compare (default 20, the goal's minimum; dry run 3)
  --plan           print the plan (the order, the expected seconds, the budget check) and exit: 0 when it
                   fits, 2 with the refusal line; with --dry-run the dry run's plan
  --parts LIST     run only these of compare,budgets,correctness,throughput,fast94,airbench,reproduce,depth (env
                   and data always run; default compare,budgets,correctness,throughput,reproduce), e.g.
                   `--parts reproduce` to go on with the study on a warm machine; fast94 (5 seeds alone),
                   airbench (the legacy anchor) and depth (He et al.'s study at the paper's budget, hours on
                   one GPU; each call continues it) run only when named
  --snap DIR       run the code in DIR (DIR/src, DIR/benchmarks; default SNAP, else this script's tree)
  --out DIR        where the results go (default OUT)
  --dry-run        the same parts on the CPU with tiny budgets (1 epoch, a few hundred images, 2-3 seeds,
                   2 small models, the budgets at 1 epoch on 64 images, reproduce at scale 0.01, depth 20,32
                   on 64 images, 1 seed): a rehearsal that checks the order, the commands, the plumbing, the
                   JSON and the report, and prints the device plan at PLAN_BUDGET_S (default 555) with its
                   budget check; its correctness compares the CPU with itself, so it proves no GPU right
  -h, --help       this text

Environment: OUT, SNAP, COMPILE=1 (fast94 compiled; default eager), PLAN_BUDGET_S, BUNDLE (1: every file
but summary.txt, report.html, compare.json, run.log, BENCHMARKS-gpu.md into OUT/parts.tar.gz, as the device
returns at most 8 files; default 1 on the device, 0 in the dry run), DEPTHS (depth's --depths, default
20,32,44,56), DEPTH_SEEDS (default 2), MARGIN (seconds kept for the
report; 15, dry run 2), WORK (scratch that later calls reuse: the study runs, airbench's data;
/tmp/gpu_proof, dry run OUT/work), GATHER, DATA, CAP_<PART> (a part's own limit, e.g.
CAP_THROUGHPUT=200), PYTHON (default python3).
EOF
}

bad() { echo "gpu_proof.sh: $*" >&2; exit 2; }

OPTIONAL=compare,budgets,correctness,throughput,fast94,airbench,reproduce,depth   # the parts --parts chooses from
DEFAULT_PARTS=compare,budgets,correctness,throughput,reproduce    # fast94, airbench, depth only when named
DRY=0 PLAN=0 PACK="" DATA_IN="" BUDGET="" AIRBENCH="" SEEDS="" OUT=${OUT:-} WANTED=$DEFAULT_PARTS
CODE=${SNAP:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
while (( $# )); do
  case $1 in
    --dry-run) DRY=1 ;;
    --plan) PLAN=1 ;;
    -h|--help) usage; exit 0 ;;
    --pack|--data-dir|--budget-s|--airbench|--snap|--out|--parts|--compare-seeds)
      [[ $# -ge 2 && -n $2 && $2 != --* ]] || bad "$1 needs a value"
      case $1 in
        --pack) PACK=$2 ;; --data-dir) DATA_IN=$2 ;; --budget-s) BUDGET=$2 ;;
        --airbench) AIRBENCH=$2 ;; --snap) CODE=$2 ;; --out) OUT=$2 ;; --parts) WANTED=$2 ;;
        --compare-seeds) SEEDS=$2 ;;
      esac
      shift ;;
    *) bad "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[[ -n $OUT ]] || (( PLAN )) || bad "set OUT or --out: the folder for the results"
[[ -z $BUDGET || $BUDGET =~ ^[0-9]+$ ]] || bad "--budget-s takes whole seconds, got '$BUDGET'"
[[ -z $SEEDS || $SEEDS =~ ^[1-9][0-9]*$ ]] || bad "--compare-seeds takes a whole number >= 1, got '$SEEDS'"
[[ -f $CODE/src/cifarlab/__init__.py && -f $CODE/benchmarks/gpu_proof.py ]] || bad "no cifarlab code in '$CODE'"
[[ -z $AIRBENCH || -d $AIRBENCH ]] || bad "--airbench: no folder '$AIRBENCH'"
[[ -z $PACK || -d $PACK ]] || bad "--pack: no folder '$PACK'"
[[ -z $DATA_IN || -d $DATA_IN/cifar-10-batches-py ]] || bad "--data-dir: no cifar-10-batches-py/ in '$DATA_IN'"
for name in ${WANTED//,/ }; do
  [[ ,$OPTIONAL, == *,$name,* ]] || bad "--parts: no part '$name' (choose from $OPTIONAL)"
done
if (( PLAN )); then
  :
elif (( DRY )); then
  [[ -n $DATA_IN && -z $PACK ]] || bad "--dry-run takes --data-dir DIR (and no --pack)"
else
  [[ -n $PACK || -n $DATA_IN ]] || bad "give --pack PACK_DIR (or --data-dir DIR, or --dry-run)"
fi

# Each mode's settings; a part's own limit (seconds) may be changed with CAP_<PART>.
declare -A LIMIT
if (( DRY )); then
  DEVICE=cpu MODE=dry BUDGET=${BUDGET:-180} MARGIN=${MARGIN:-2} MIN_PART_S=5 RESERVE=3 SEEDS=${SEEDS:-3}
  WORK=${WORK:-$OUT/work}
  DATA=$WORK/data DATA_ARGS=(--copy-from "$DATA_IN" --images 50)
  # inductor's C++ builds take minutes on 2 cores, and fp16 autocast runs resnet18 7x slower than fp32 there
  CORRECTNESS_ARGS=(--images 8 --compile-backend eager --autocast bf16)
  THROUGHPUT_ARGS=(--precision fp32 --models basic-cnn,fast94 --no-compile --epochs 2 --limit-train 64
                   --batch-size 32)
  FAST94_ARGS=(--seeds 2 --epochs 1 --limit-train 64)
  COMPARE_ARGS=(--epochs 1 --limit-train 64)
  BUDGETS_ARGS=(--extra=--epochs=1 --extra=--limit-train=64 --grace-s 5)
  REPRODUCE_ARGS=(--scale 0.01 --grace-s 5)
  DEPTH_ARGS=(--depths 20,32 --seeds 1 --epochs 1 --limit-train 64 --val-size 20 --grace-s 5)
  LIMIT=([env]=30 [data]=30 [compare]=60 [budgets]=25 [correctness]=40 [throughput]=30 [fast94]=40 [airbench]=30 [reproduce]=22
         [depth]=120)
else
  DEVICE=cuda MODE=device BUDGET=${BUDGET:-555} MARGIN=${MARGIN:-15} MIN_PART_S=20 RESERVE=10 SEEDS=${SEEDS:-20}
  WORK=${WORK:-/tmp/gpu_proof} GATHER=${GATHER:-/tmp/pack}
  if [[ -n $PACK ]]; then DATA=${DATA:-/tmp/cifar} DATA_ARGS=(--pack "$GATHER"); else DATA=$DATA_IN DATA_ARGS=(); fi
  CORRECTNESS_ARGS=(--images 64 --compile-backend inductor)
  THROUGHPUT_ARGS=(--precision bf16 --epochs 3 --limit-train 10000 --batch-size 256)
  FAST94_ARGS=(--seeds 5)
  COMPARE_ARGS=()
  BUDGETS_ARGS=(--grace-s 20)
  REPRODUCE_ARGS=(--scale 1 --grace-s 20)
  DEPTH_ARGS=(--depths "${DEPTHS:-20,32,44,56}" --seeds "${DEPTH_SEEDS:-2}" --grace-s 20)
  LIMIT=([env]=60 [data]=120 [compare]=420 [budgets]=600 [correctness]=150 [throughput]=150 [fast94]=120 [airbench]=90 [reproduce]=600
         [depth]=600)
fi
for name in "${!LIMIT[@]}"; do
  var=CAP_${name^^}
  [[ -z ${!var:-} ]] || LIMIT[$name]=${!var}
done
(( ${COMPILE:-0} )) && FAST94_ARGS+=(--compile)
PY=${PYTHON:-python3}
P=$CODE/benchmarks/gpu_proof.py
export PYTHONPATH=$CODE/src PYTHONUNBUFFERED=1
T0=$(date +%s)

wanted() { [[ $1 == env || $1 == data || ,$WANTED, == *,$1,* ]]; }
left() { echo $(( BUDGET - ($(date +%s) - T0) - MARGIN )); }
log() { echo "== [t=$(( $(date +%s) - T0 )) s] $*"; }
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$OUT/parts.tsv"; }   # name state rc seconds limit

# skip NAME REASON: the part does not run; its JSON and parts.tsv say why
skip() {
  printf '{"part": "%s", "status": "skipped", "reason": "%s"}\n' "$1" "$2" > "$OUT/$1.json.tmp"
  mv "$OUT/$1.json.tmp" "$OUT/$1.json"
  record "$1" skipped - 0 0
  log "$1: skipped ($2)"
}

# part NAME ARGS...: gpu_proof.py NAME under `timeout min(its limit, budget left)`; status 0 when it went well
part() {
  local name=$1 limit=${LIMIT[$1]} spare start rc state
  shift
  if ! wanted "$name"; then skip "$name" "not in --parts $WANTED"; return 0; fi
  spare=$(left)
  (( spare < limit )) && limit=$spare
  if (( limit < MIN_PART_S )); then skip "$name" "budget spent: $spare s left"; return 1; fi
  log "$name: start, limit $limit s"
  start=$(date +%s)
  timeout -k 10 "$limit" "$PY" "$P" "$name" --json "$OUT/$name.json" --budget-s $(( limit - RESERVE )) "$@"
  rc=$?
  case $rc in 0) state=ok ;; 124|137) state="timed out" ;; *) state=failed ;; esac
  record "$name" "$state" "$rc" $(( $(date +%s) - start )) "$limit"
  log "$name: $state (exit status $rc) in $(( $(date +%s) - start )) s"
  return $rc
}

# The chunk folders of this call and of earlier calls on the same machine, in one place.
gather() {
  mkdir -p "$GATHER"
  cp -rn "$PACK"/c[0-9]* "$GATHER"/ 2>/dev/null || log "no chunk folder c1..cN in $PACK"
  ls -la "$GATHER"/*
}

# plan MODE SEEDS BUDGET: the comparison's budget arithmetic (gpu_proof.py plan); its refusal line on stderr,
# exit status 2 when env, data and the comparison do not fit
plan() { "$PY" "$P" plan --mode "$1" --seeds "$2" --budget-s "$3" --margin-s "$4"; }

# The plan, before anything starts: a device run whose budget cannot hold the comparison is refused here, in one
# line; the dry run rehearses the device's arithmetic at PLAN_BUDGET_S and goes on (a rehearsal refuses nothing).
check_plan() {
  local err rc
  err=$(plan "$MODE" "$SEEDS" "$BUDGET" $(( MARGIN + RESERVE )) 2>&1 >/dev/null) && rc=0 || rc=$?
  if (( PLAN )); then
    plan "$MODE" "$SEEDS" "$BUDGET" $(( MARGIN + RESERVE )) 2>/dev/null
    (( rc )) && bad "$err"
    exit 0
  fi
  (( rc == 0 )) || bad "$err"
}

# with_airbench NAME ARGS...: the part, or its skip line when no checkout was given
with_airbench() {
  if wanted "$1" && [[ -z $AIRBENCH ]]; then skip "$1" "no --airbench CHECKOUT given"; return 0; fi
  part "$@" --airbench "$AIRBENCH"
}

main() {
  log "gpu_proof.sh: $( (( DRY )) && echo "dry run on the CPU (a rehearsal)" || echo "device run" ), budget $BUDGET s," \
      "code $CODE, results $OUT, scratch $WORK"
  log "order: env, data, compare (the GPU goal, first), budgets, correctness, throughput, fast94, airbench," \
      "reproduce, depth; wanted: $WANTED"
  if wanted compare; then
    plan "$MODE" "$SEEDS" "$BUDGET" $(( MARGIN + RESERVE ))
    if (( DRY )); then
      log "the device's plan, rehearsed (PLAN_BUDGET_S=${PLAN_BUDGET_S:-555}, 20 seeds):"
      plan device 20 "${PLAN_BUDGET_S:-555}" 25 2>&1 | sed 's/^budget:/rehearsal: a device run would refuse: budget:/'
    fi
  fi
  part env --device "$DEVICE"
  [[ -z $PACK ]] || gather
  if part data --data-dir "$DATA" "${DATA_ARGS[@]}"; then
    with_airbench compare --data-dir "$DATA" --device "$DEVICE" --seeds "$SEEDS" --work "$WORK/airbench" \
      --log "$OUT/compare-airbench.log" "${COMPARE_ARGS[@]}"
    part budgets --data-dir "$DATA" --device "$DEVICE" --study "$WORK/budgets" --figures "$OUT/BENCHMARKS-gpu.md" \
      --log "$OUT/budgets.log" "${BUDGETS_ARGS[@]}"
    part correctness --data-dir "$DATA" --device "$DEVICE" "${CORRECTNESS_ARGS[@]}"
    part throughput --data-dir "$DATA" --device "$DEVICE" "${THROUGHPUT_ARGS[@]}"
    part fast94 --data-dir "$DATA" --device "$DEVICE" "${FAST94_ARGS[@]}"
    with_airbench airbench --data-dir "$DATA" --device "$DEVICE" --work "$WORK/airbench" \
      --log "$OUT/airbench.log" ${AIRBENCH_SCRIPT:+--script "$AIRBENCH_SCRIPT"}
    part reproduce --data-dir "$DATA" --device "$DEVICE" --study "$WORK/reproduce" --log "$OUT/reproduce.log" \
      "${REPRODUCE_ARGS[@]}"
    part depth --data-dir "$DATA" --device "$DEVICE" --study "$WORK/depth" --log "$OUT/depth.log" "${DEPTH_ARGS[@]}"
  else
    for name in compare budgets correctness throughput fast94 airbench reproduce depth; do skip "$name" "no data: the data part failed"; done
  fi
  log "report"
  local report=0
  timeout 120 "$PY" "$P" report --out "$OUT" || report=$?
  (( report )) || cat "$OUT/summary.txt"
  log "gpu_proof.sh: done (report: exit status $report)"
  (( ! report )) && ! cut -f2 "$OUT/parts.tsv" | grep -qE '^(failed|timed out)$'
}

(( PLAN )) || ! wanted compare || [[ -n $AIRBENCH ]] || (( DRY )) \
  || bad "compare (the GPU goal) needs --airbench CHECKOUT (or leave it out with --parts)"
wanted compare && check_plan
(( PLAN )) && { echo "plan: compare not in --parts $WANTED: nothing to check"; exit 0; }
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd) CODE=$(cd "$CODE" && pwd)   # absolute: the parts run some programs in other folders
: > "$OUT/parts.tsv"
# The device returns at most 8 files from $OUT: the comparison, the summary, the page, the log and the figures
# as they are, every other file in one archive (BUNDLE=1, the default of a device run; the dry run keeps them).
bundle() {
  local keep=" summary.txt report.html compare.json run.log BENCHMARKS-gpu.md " rest=() f
  for f in "$OUT"/*; do
    [[ -f $f && $keep != *" ${f##*/} "* ]] && rest+=("${f##*/}")
  done
  (( ${#rest[@]} )) || return 0
  tar -czf "$OUT/parts.tar.gz.tmp" -C "$OUT" "${rest[@]}" && mv "$OUT/parts.tar.gz.tmp" "$OUT/parts.tar.gz" \
    && (cd "$OUT" && rm -f "${rest[@]}") && echo "== bundled into parts.tar.gz: ${rest[*]}"
}

main 2>&1 | tee -a "$OUT/run.log"
rc=${PIPESTATUS[0]}
(( ${BUNDLE:-$(( ! DRY ))} )) && bundle
exit "$rc"

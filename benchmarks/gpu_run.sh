#!/usr/bin/env bash
# The whole device job in one command (run from the repository root on the device machine):
#   OUT=$OUT bash benchmarks/gpu_run.sh PACK_DIR BUDGET_S   (SNAP=.carry/snap to run a snapshot)
# PACK_DIR: chunk folders c1..cN of `pack_data.py pack` (earlier calls may have left some in /tmp/pack).
# BUDGET_S: wall seconds for everything; every part gets min(its own cap, what is left - margin).
# Writes under $OUT (7 files): nvidia-smi.txt, run.log, fast94.json, correctness.json, end_to_end.json,
# throughput.json, summary.txt.
set -u
PACK=${1:?usage: gpu_run.sh PACK_DIR BUDGET_S}
BUDGET=${2:?usage: gpu_run.sh PACK_DIR BUDGET_S}
OUT=${OUT:?set OUT}
SNAP=${SNAP:-.}          # the code to run: the checkout, or a snapshot of it (.carry/snap)
DATA=/tmp/cifar            # the full CIFAR-10, unpacked and checked
MINI=/tmp/cifar-mini       # 1000 images per batch file, for the throughput table
MARGIN=${MARGIN:-15}
T0=$(date +%s)
export PYTHONPATH=$SNAP/src PYTHONUNBUFFERED=1
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1

left() { echo $(( BUDGET - ($(date +%s) - T0) - MARGIN )); }
cap() { local l; l=$(left); (( l < $1 )) && echo $(( l > 0 ? l : 1 )) || echo "$1"; }
part() {  # part NAME CAP command...: run with its own time limit, log its status and wall time
  local name=$1 c; c=$(cap "$2"); shift 2
  if (( $(left) < 20 )); then echo "== $name: SKIPPED (only $(left) s left)"; return; fi
  echo "== $name: start, limit ${c} s (t=$(( $(date +%s) - T0 )) s)"
  local s=$(date +%s)
  timeout -k 5 "$c" "$@"; local rc=$?
  echo "== $name: rc=$rc$([[ $rc == 124 || $rc == 137 ]] && echo ' (TIMED OUT)') in $(( $(date +%s) - s )) s"
}

echo "== gpu_run.sh budget ${BUDGET} s, pack ${PACK}, $(date -u +%FT%TZ)"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >> "$OUT/nvidia-smi.txt"
python3 -c "import torch, numpy, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'numpy', numpy.__version__, 'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"

mkdir -p /tmp/pack && cp -rn "$PACK"/c[0-9]* /tmp/pack/ 2>/dev/null; ls -la /tmp/pack/*
part unpack 120 python3 $SNAP/benchmarks/pack_data.py unpack --pack /tmp/pack --out $DATA
if ! python3 -c "from cifarlab.data.sources import load_dataset; d=load_dataset('cifar10','$DATA',download_missing=False); print('cifarlab loads', len(d.train), 'train', len(d.test), 'test')"; then
  echo "== data not loadable: stopping"; exit 3
fi
part make-mini 30 python3 $SNAP/benchmarks/gpu_parts.py make-mini --full $DATA --out $MINI --per-batch 1000

P=$SNAP/benchmarks/gpu_parts.py
part fast94 ${FAST94_CAP:-230} python3 $P fast94 --data-dir $DATA --seeds 5 --budget-s $(( $(cap ${FAST94_CAP:-230}) - 10 )) --json $OUT/fast94.json
part correctness ${CORR_CAP:-150} python3 $P correctness --data-dir $DATA --json $OUT/correctness.json
part end-to-end ${E2E_CAP:-120} python3 $P end-to-end --data-dir $DATA --json $OUT/end_to_end.json
part throughput ${TP_CAP:-400} python3 $P throughput --data-dir $MINI --budget-s $(( $(cap ${TP_CAP:-400}) - 10 )) \
  --models fast94,resnet18,basic-cnn,deeper-cnn,preact-resnet18,resnet34,wrn-16-8,vgg16-bn,resnet50,vit-tiny,wrn-28-10 \
  --json $OUT/throughput.json

python3 - "$OUT" > "$OUT/summary.txt" 2>&1 <<'EOF'
import json, sys, traceback
from pathlib import Path
out = Path(sys.argv[1])
def load(n):
    p = out / n
    return json.loads(p.read_text()) if p.is_file() else None
def fast94():
    f = load("fast94.json")
    if not f:
        return print("fast94: no result")
    print(f"device {f['device']} torch {f['torch']} cuda {f['cuda']} cudnn {f['cudnn']}")
    for r in f["runs"]:
        print("fast94 seed", r["seed"], "ERROR" if "error" in r else
              f"final {r['final_test_acc']:.2f}% time_to_94 {r['time_to_target_s']} train_time {r['train_time_s']:.2f} s")
    print(f"fast94 mean final {f.get('final_test_acc_mean')} +- {f.get('final_test_acc_std')}; reached {f.get('reached')}; "
          f"time to 94 mean {f.get('time_to_target_mean_s')} +- {f.get('time_to_target_std_s')}; {f.get('stopped', '')}")
def correctness():
    c = load("correctness.json")
    if not c:
        return print("correctness: no result")
    for m, r in c["correctness"].items():
        print("correctness", m, "ok" if r["ok"] else "NOT OK",
              {k: round(v, 6) for k, v in r.items() if isinstance(v, float)})
def end_to_end():
    e = load("end_to_end.json")
    if not e:
        return print("end-to-end: no result")
    s = e["end_to_end"].get("summary") or {}
    print("end-to-end rc", e["end_to_end"]["returncode"], "final", s.get("final_test_acc"),
          "train_time", s.get("train_time_s"), "img/s", s.get("images_per_s"))
def throughput():
    t = load("throughput.json")
    if not t:
        return print("throughput: no result")
    for m, r in t["models"].items():
        print("throughput", m, r.get("images_per_s", "ERROR"), r.get("first_epoch_s"), r.get("last_epoch_s"))
    if t.get("stopped"):
        print("throughput stopped:", t["stopped"])
for section in (fast94, correctness, end_to_end, throughput):
    try:
        section()
    except Exception:
        print(section.__name__, "summary failed:", traceback.format_exc()[-500:])
EOF
cat "$OUT/summary.txt"
echo "== gpu_run.sh done in $(( $(date +%s) - T0 )) s"
sleep 1  # let tee write the end of run.log

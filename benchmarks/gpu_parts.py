"""Run benchmarks/gpu_check.py's checks one at a time, each writing its own JSON as it goes.

gpu_check.py runs its four checks in one process with no time limit of their own (its fast94 part
alone may take up to 900 s); on a lent GPU with a few minutes in all, each part must have its own
limit and keep what it finished. This wrapper imports the checks from gpu_check.py unchanged:

    gpu_parts.py make-mini --full DIR --out DIR --per-batch 1000
    gpu_parts.py correctness --data-dir DIR --json F
    gpu_parts.py fast94 --data-dir FULL --seeds 5 --budget-s 200 --json F      # per seed, in one process
    gpu_parts.py end-to-end --data-dir DIR --json F
    gpu_parts.py throughput --data-dir DIR --models a,b,c --budget-s 120 --json F   # all eager, then compiled
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import gpu_check  # noqa: E402  (the tracked checks, unchanged)

# GPU_PARTS_DRY=1: rehearse the whole device script on a machine without CUDA (plumbing, files, time
# limits): "cuda" becomes the CPU and fast94 trains 1 epoch. Never set on the device.
DRY = bool(__import__("os").environ.get("GPU_PARTS_DRY"))
FAST94_EXTRA = {"epochs": 1} if DRY else {}
if DRY:
    _build = gpu_check.build_config
    gpu_check.build_config = lambda d, *a: _build({**d, "device": "cpu"} if d.get("device") == "cuda" else d, *a)
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self


def dump(path: str, obj) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def env() -> dict:
    out = {"torch": torch.__version__, "cuda": torch.version.cuda}
    for key, get in (("cudnn", lambda: torch.backends.cudnn.version()),
                     ("device", lambda: torch.cuda.get_device_name(0)),
                     ("capability", lambda: list(torch.cuda.get_device_capability(0)))):
        try:
            out[key] = get()
        except Exception as e:  # noqa: BLE001 - a description must not cost the measurement
            out[key] = f"{type(e).__name__}: {e}"
    return out


def make_mini(full: str, out: str, per_batch: int) -> None:
    """A cifar-mini-sized copy (the first `per_batch` images of every batch file) of a full CIFAR-10."""
    import pack_data
    src, dst = Path(full) / "cifar-10-batches-py", Path(out) / "cifar-10-batches-py"
    dst.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        obj = pack_data.read_pickle(src / name)
        obj = {k: (v[:per_batch] if k in (b"data", b"labels", b"filenames") else v) for k, v in obj.items()}
        pack_data.write_py2_pickle(obj, dst / name)
    pack_data.write_py2_pickle(pack_data.read_pickle(src / "batches.meta"), dst / "batches.meta")
    print(f"make-mini: {per_batch} images per batch file -> {dst}")


def fast94(data_dir: str, seeds: int, budget_s: float, path: str) -> None:
    import time_to_accuracy as tta
    args = argparse.Namespace(model="fast94", dataset="cifar10", recipe="fast94", target=94.0,
                              data_dir=data_dir, device="cpu" if DRY else "cuda")
    report = {**env(), "recipe": "fast94", "target": 94.0, "runs": [], "budget_s": budget_s}
    t0, longest = time.perf_counter(), 0.0
    for seed in range(seeds):
        spent = time.perf_counter() - t0
        if seed and spent + 1.25 * longest + 5 > budget_s:
            report["stopped"] = f"seed {seed} not started: {spent:.0f} s spent, a seed takes up to {longest:.0f} s"
            break
        s0 = time.perf_counter()
        try:
            run = tta.one_run(args, seed, dict(FAST94_EXTRA))
        except Exception:  # noqa: BLE001 - keep the seeds that ran
            run = {"seed": seed, "error": traceback.format_exc()[-3000:]}
        run["wall_s"] = time.perf_counter() - s0
        longest = max(longest, run["wall_s"])
        report["runs"].append(run)
        good = [r for r in report["runs"] if "error" not in r]
        finals = [r["final_test_acc"] for r in good]
        times = [r["time_to_target_s"] for r in good if r["time_to_target_s"] is not None]
        report.update(
            seeds_done=len(report["runs"]), reached=f"{len(times)}/{len(good)}",
            final_test_acc_mean=statistics.mean(finals) if finals else None,
            final_test_acc_std=statistics.stdev(finals) if len(finals) > 1 else 0.0,
            time_to_target_mean_s=statistics.mean(times) if times else None,
            time_to_target_std_s=statistics.stdev(times) if len(times) > 1 else 0.0,
            train_time_mean_s=statistics.mean(r["train_time_s"] for r in good) if good else None)
        dump(path, report)
        if "error" in run:
            print(f"fast94 seed {seed}: ERROR\n{run['error']}", flush=True)
            break
        hit = run["time_to_target_s"]
        print(f"fast94 seed {seed}: final {run['final_test_acc']:.2f}%, time to 94%: "
              f"{'not reached' if hit is None else f'{hit:.2f} s'}, train_time {run['train_time_s']:.2f} s, "
              f"wall {run['wall_s']:.1f} s; curve " + ", ".join(f"{c['seconds']:.1f}s:{c['test_acc']:.2f}"
                                                                 for c in run["curve"]), flush=True)
    dump(path, report)


def one_throughput(data_dir: str, name: str, compiled: bool) -> dict:
    """gpu_check.throughput's measurement for one (model, eager|compiled) variant: the same config."""
    with tempfile.TemporaryDirectory() as run:
        cfg = gpu_check.build_config({"model": name, "dataset": "cifar10", "data_dir": data_dir, "epochs": 3,
                                      "batch_size": 256, "augment": ["crop", "flip"], "quiet": True, "out": run,
                                      "compile": compiled, "tensorboard": False, "device": "cuda"})
        gpu_check.fit(cfg)
        rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return {"images_per_s": rows[-1]["images_per_s"], "first_epoch_s": rows[0]["epoch_time_s"],
            "last_epoch_s": rows[-1]["epoch_time_s"]}


def throughput(data_dir: str, models: list[str], budget_s: float, path: str) -> None:
    """Every model eager first, then compiled in the same order, until the budget is spent."""
    report = {**env(), "data_dir": data_dir, "models": {}, "wall_s": {}}
    t0, longest = time.perf_counter(), {False: 0.0, True: 0.0}
    for compiled in (False, True):
        for name in models:
            key = f"{name}{' compiled' if compiled else ''}"
            spent = time.perf_counter() - t0
            if spent + 1.1 * longest[compiled] > budget_s:
                report.setdefault("stopped", f"{key} not started: {spent:.0f} s spent of {budget_s:.0f}")
                continue
            m0 = time.perf_counter()
            try:
                report["models"][key] = one_throughput(data_dir, name, compiled)
            except Exception:  # noqa: BLE001
                report["models"][key] = {"error": traceback.format_exc()[-3000:]}
            report["wall_s"][key] = wall = time.perf_counter() - m0
            longest[compiled] = max(longest[compiled], wall)
            dump(path, report)
            r = report["models"][key]
            print(f"throughput {key}: " + (f"{r['images_per_s']:.0f} img/s (epochs {r['first_epoch_s']:.2f} s .. "
                                          f"{r['last_epoch_s']:.2f} s)" if "error" not in r
                                          else f"ERROR {r['error'][-400:]}") + f", wall {wall:.0f} s", flush=True)
    dump(path, report)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=("make-mini", "correctness", "fast94", "end-to-end", "throughput"))
    p.add_argument("--data-dir")
    p.add_argument("--full")
    p.add_argument("--out")
    p.add_argument("--per-batch", type=int, default=1000)
    p.add_argument("--json")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=200)
    p.add_argument("--models", default="fast94,resnet18,basic-cnn,deeper-cnn")
    a = p.parse_args()
    if a.part == "make-mini":
        return make_mini(a.full, a.out, a.per_batch)
    if not torch.cuda.is_available() and not DRY:
        raise SystemExit("gpu_parts: no CUDA device")
    t0, info = time.perf_counter(), env()
    if a.part == "correctness":
        dump(a.json, {**info, "correctness": gpu_check.correctness(a.data_dir), "wall_s": time.perf_counter() - t0})
        print(json.dumps(json.loads(Path(a.json).read_text())["correctness"], indent=1), flush=True)
    elif a.part == "end-to-end":
        r = gpu_check.end_to_end(a.data_dir)
        dump(a.json, {**info, "data_dir": a.data_dir, "end_to_end": r, "wall_s": time.perf_counter() - t0})
        s = r.get("summary") or {}
        print(f"end-to-end: rc {r['returncode']}, final test {s.get('final_test_acc')}, train_time "
              f"{s.get('train_time_s')}, images/s {s.get('images_per_s')}; stderr tail: {r['stderr'][-500:]}",
              flush=True)
    elif a.part == "fast94":
        fast94(a.data_dir, a.seeds, a.budget_s, a.json)
    else:
        throughput(a.data_dir, [m for m in a.models.split(",") if m], a.budget_s, a.json)


if __name__ == "__main__":
    main()

"""Part 5, fast94: time to 94% on CIFAR-10, seed after seed in one process."""

from __future__ import annotations

import argparse
import statistics

from gpu_part import Budget, PartFile, mean_std


def fast94_summary(runs: list[dict]) -> dict:
    """Mean ± std over the seeds so far. Times are over the warm seeds (1, 2, ...): seed 0 also pays the
    process's CUDA start-up and cuDNN autotuning. cifarlab's clocks read perf_counter after a device sync
    at each epoch end, so the training-only time is the GPU's time, not the queue's.
    warm_time_to_result_mean_s is the figure to set beside airbench's time_mean_s: the same scope (whitening
    init + training + the final TTA evaluation, without data loading or compile warm-up; time_scope says so)."""
    warm = [r for r in runs if r["seed"] > 0]
    reached = [r for r in runs if r["time_to_target_s"] is not None]
    acc, train_only = mean_std(r["final_test_acc"] for r in runs), mean_std(r["train_only_time_s"] for r in warm)
    to_result = mean_std(r["time_to_result_s"] for r in warm)
    return {"seeds_done": len(runs), "reached": f"{len(reached)}/{len(runs)}",
            "final_test_acc_mean": acc[0], "final_test_acc_std": acc[1],
            "final_test_acc_median": statistics.median(r["final_test_acc"] for r in runs), "warm_seeds": len(warm),
            "warm_time_to_result_mean_s": to_result[0], "warm_time_to_result_std_s": to_result[1],
            "time_scope": runs[0]["time_scope"],
            "warm_train_only_time_mean_s": train_only[0], "warm_train_only_time_std_s": train_only[1],
            "warm_train_and_eval_time_mean_s": mean_std(r["train_and_eval_time_s"] for r in warm)[0],
            "warm_wall_time_mean_s": mean_std(r["wall_time_s"] for r in warm)[0],
            "train_only_to_target_mean_s": mean_std(r["train_only_to_target_s"] for r in reached)[0]}


def part_fast94(args, out: PartFile) -> None:
    """fast94's time to 94% on CIFAR-10 (time_to_accuracy.one_run), seeds 0, 1, ... in one process."""
    import time_to_accuracy

    from cifarlab.recipes import chosen_recipe, load_recipe

    # fast94 chooses by device (fast94-muon on CUDA): the part records the recipe the runs got
    recipe = chosen_recipe("fast94", args.device)
    settings = argparse.Namespace(model="fast94", dataset="cifar10", recipe=recipe, target=94.0,
                                  data_dir=args.data_dir, device=args.device)
    extra = {k: v for k, v in (("epochs", args.epochs), ("limit_train", args.limit_train)) if v is not None}
    extra.update({"compile": True} if args.compile else {})
    out.update(device=args.device, recipe=recipe, target=94.0, settings=extra, compiled=args.compile,
               epochs=extra.get("epochs", load_recipe(recipe)["epochs"]), runs=[])
    budget = Budget(args.budget_s)
    for seed in range(args.seeds):
        why = budget.refuses("seed")
        if why:
            out.update(stopped=f"seed {seed} {why}")
            break
        with budget.item("seed"):
            run = time_to_accuracy.one_run(settings, seed, dict(extra))
        out.data["runs"].append(run)
        out.update(**fast94_summary(out.data["runs"]))
        hit = run["time_to_target_s"]
        print(f"fast94 seed {seed}: final {run['final_test_acc']:.2f}%, 94% "
              f"{'not reached' if hit is None else f'after {hit:.2f} s'}, airbench's scope {run['time_to_result_s']:.2f} s, "
              f"training alone {run['train_only_time_s']:.2f} s, "
              f"wall {run['wall_time_s']:.1f} s", flush=True)

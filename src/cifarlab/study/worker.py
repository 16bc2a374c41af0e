"""A study's run worker, `python -m cifarlab.study.worker` (started by launch.py): it trains the configs sent
to it one after another, one JSON line each on its stdin, and answers each with a line {"code": EXIT} on its
stdout, so torch is imported once per worker, not once per run. Each run trains exactly what the sequential
study would (run_or_reuse: the same seeds, the same code path), its output appended to RUN/train.log.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from cifarlab.errors import CifarlabError, Interrupted, UsageError
from cifarlab.study.launch import LOG, cores


def serve() -> int:
    """The worker's loop: train each config read from stdin, its output in RUN/train.log, and answer it."""
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)              # stray output between runs goes to stderr, never into the answers
    try:
        while line := sys.stdin.readline():
            if not line.strip():
                continue
            code = train_logged(json.loads(line))
            answers.write(json.dumps({"code": code}) + "\n")
            answers.flush()
            if code in (130, 143):   # stopped by a signal: the study is stopping
                return code
    except KeyboardInterrupt:    # the study's SIGINT, forwarded between two runs
        return 130
    return 0


def train_logged(settings: dict) -> int:
    """One run, everything it prints (Python's and the libraries' own, at the descriptor level) appended to
    RUN/train.log; its exit code."""
    out = Path(settings["out"])
    out.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(out / LOG, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            return train_one(settings)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def train_one(settings: dict) -> int:
    """run_or_reuse for one config, as the sequential study would train it; its exit code."""
    from cifarlab.settings import TrainConfig
    from cifarlab.study.runs import run_or_reuse
    from cifarlab.validation import validate

    try:
        cfg = TrainConfig(**settings)
        validate(cfg)
        if not cfg.quiet:
            import torch
            threads = cfg.threads or torch.get_num_threads()
            where = cores()
            print(f"cifarlab: worker {os.getpid()} on CPU{'s' if len(where) > 1 else ''} "
                  f"{','.join(map(str, where))}, {threads} thread{'s' if threads > 1 else ''}", flush=True)
        run_or_reuse(cfg)
    except Interrupted as e:
        print(f"cifarlab: {e}", file=sys.stderr)
        return e.exit_code
    except CifarlabError as e:
        print(f"cifarlab: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except KeyboardInterrupt:           # a second Ctrl-C: stop now
        print("cifarlab: interrupted", file=sys.stderr)
        return 130
    except Exception:                   # a bug or a crash in this run: its log says where; the next run goes on
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(serve())

"""--diagnostics N: the gradient flow recorded (training/diagnostics.py), resumed, drawn (`cifarlab diagnose`,
report/gradients.py) and read from Python (Run.diagnostics, Run.plot("gradients"))."""

from __future__ import annotations

import json
import shutil
import statistics

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from cifarlab.errors import UsageError
from cifarlab.models import build_model
from cifarlab.recipes import build_config
from cifarlab.run import load_run
from cifarlab.training import engine
from cifarlab.training.diagnostics import Diagnostics

from conftest import StopAtStep, run_cli, without_timing

EVERY = 10


def settings(data_dir, out, **extra) -> dict:
    # 200 sample images in batches of 16: 12 steps an epoch (the last part-batch dropped), 24 in all;
    # recorded: steps 1, 11 (epoch 1) and 21 (epoch 2)
    return {"model": "basic-cnn", "dataset": "cifar10", "data_dir": str(data_dir), "epochs": 2, "batch_size": 16,
            "quiet": True, "tensorboard": False, "out": str(out), **extra}


def rows_of(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "diagnostics.jsonl").read_text().splitlines()]


def metrics_of(folder) -> list[dict]:
    return without_timing([json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()])


@pytest.fixture(scope="module")
def recorded(cifar_sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("diag") / "recorded"
    engine.fit(build_config(settings(cifar_sample, out, diagnostics=EVERY, tensorboard=True)))
    return out


@pytest.fixture(scope="module")
def plain(cifar_sample, tmp_path_factory):
    """The same run without --diagnostics, its gradients read by torch's optimizer step hooks: the k-th step's
    .grad and the weights before and after it."""
    out = tmp_path_factory.mktemp("diag") / "plain"
    seen: dict[int, dict] = {}
    build = engine.build_optimizer

    def watched(model, cfg):
        optimizer = build(model, cfg)
        layers = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        before = {}

        def pre(*_):
            before.update({name: m.weight.detach().clone() for name, m in layers.items()})

        def post(*_):
            seen[len(seen) + 1] = {name: (torch.linalg.vector_norm(m.weight.grad).item(),
                                          torch.linalg.vector_norm(before[name]).item(),
                                          torch.linalg.vector_norm(m.weight.detach() - before[name]).item())
                                   for name, m in layers.items()}
        optimizer.register_step_pre_hook(pre)
        optimizer.register_step_post_hook(post)
        return optimizer
    engine.build_optimizer = watched
    try:
        engine.fit(build_config(settings(cifar_sample, out)))
    finally:
        engine.build_optimizer = build
    return out, seen


def test_diagnostics_10_on_basic_cnn_writes_a_row_for_every_conv_and_linear_every_10_steps(recorded):
    layers = [(name, type(m).__name__) for name, m in build_model("basic-cnn", 10).named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 4
    rows = rows_of(recorded)
    assert sorted({r["step"] for r in rows}) == [1, 11, 21]
    for step, epoch in ((1, 1), (11, 1), (21, 2)):
        at = [r for r in rows if r["step"] == step]
        assert [(r["layer"], r["kind"]) for r in at] == layers
        assert [r["depth"] for r in at] == [0, 1, 2, 3] and {r["epoch"] for r in at} == {epoch}
        assert all(r["grad_norm"] > 0 and r["weight_norm"] > 0 and 0 < r["update_ratio"] < 1 for r in at)
        assert all(0 <= r["relu_zero"] <= 1 for r in at[:3]) and at[3]["relu_zero"] is None   # no ReLU after the last
        assert all(r["act_std"] > 0 for r in at)


def test_tensorboard_gets_the_rows_as_scalars_and_each_gradient_as_a_histogram(recorded):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(recorded / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0}).Reload()
    rows = rows_of(recorded)
    for row in rows:
        for key in ("grad_norm", "weight_norm", "update_ratio", "act_std"):
            scalars = {e.step: e.value for e in events.Scalars(f"diagnostics/{key}/{row['layer']}")}
            assert scalars[row["step"]] == pytest.approx(row[key], rel=1e-6)
    assert "diagnostics/relu_zero/features.0" in events.Tags()["scalars"]
    assert "diagnostics/relu_zero/classifier.4" not in events.Tags()["scalars"]     # no ReLU after it: no value
    histogram = {e.step: e.histogram_value for e in events.Histograms("gradients/features.3")}
    assert sorted(histogram) == [1, 11, 21]
    # its squares sum to the squared gradient norm
    norm = next(r["grad_norm"] for r in rows if r["step"] == 11 and r["layer"] == "features.3")
    assert histogram[11].sum_squares == pytest.approx(norm ** 2, rel=1e-4)
    assert histogram[11].num == 64 * 32 * 3 * 3


def test_a_rows_gradient_norm_is_the_vector_norm_of_that_layers_grad_at_that_step(recorded, plain):
    _, seen = plain
    assert len(seen) == 24
    for row in rows_of(recorded):
        grad, weight, update = seen[row["step"]][row["layer"]]
        assert row["grad_norm"] == pytest.approx(grad, rel=1e-6)
        assert row["weight_norm"] == pytest.approx(weight, rel=1e-6)
        assert row["update_ratio"] == pytest.approx(update / weight, rel=1e-5)


def test_recording_changes_no_number_of_the_run_nor_its_fingerprint(recorded, plain):
    out, _ = plain
    assert not (out / "diagnostics.jsonl").exists()
    assert metrics_of(recorded) == metrics_of(out)
    a, b = load_file(str(recorded / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    configs = [json.loads((f / "config.json").read_text()) for f in (recorded, out)]
    assert configs[0]["diagnostics"] == EVERY and configs[1]["diagnostics"] == 0
    assert configs[0]["fingerprint"] == configs[1]["fingerprint"]


@pytest.mark.slow                 # trains four times
def test_resumed_runs_continue_the_file_exactly(recorded, cifar_sample, tmp_path, monkeypatch):
    # stopped mid-epoch 2 (after step 16 of 24), by Ctrl-C: last.pt holds step 16, the file steps 1 and 11
    stopped = tmp_path / "stopped"
    monkeypatch.setattr(engine, "StopSignals", StopAtStep(16))
    with pytest.raises(Exception, match="stopped by SIGINT"):
        engine.fit(build_config(settings(cifar_sample, stopped, diagnostics=EVERY)))
    monkeypatch.undo()
    assert sorted({r["step"] for r in rows_of(stopped)}) == [1, 11]
    engine.fit(build_config(settings(cifar_sample, stopped, diagnostics=EVERY)), resume=True)
    assert rows_of(stopped) == rows_of(recorded)

    # failed after epoch 2's rows were written but before its checkpoint: those steps train again, written once
    failed = tmp_path / "failed"

    def fail_at_2(row):
        if row["epoch"] == 2:
            raise RuntimeError("failed")
    with pytest.raises(RuntimeError):
        engine.fit(build_config(settings(cifar_sample, failed, diagnostics=EVERY)), on_epoch=fail_at_2)
    assert sorted({r["step"] for r in rows_of(failed)}) == [1, 11, 21]
    engine.fit(build_config(settings(cifar_sample, failed, diagnostics=EVERY)), resume=True)
    assert rows_of(failed) == rows_of(recorded)


def test_relu_zero_fraction_activation_statistics_and_update_ratio_on_a_known_case():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(4))
        model[0].bias.zero_()
    x = torch.tensor([[1.0, -1.0, 2.0, -2.0], [3.0, -3.0, -1.0, 0.0]])    # 5 of 8 values <= 0: zero after ReLU
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    diagnostics = Diagnostics(model, every=5)
    diagnostics.start(2, 1)                                  # not a recorded step: no hooks, no rows
    assert not model[0]._forward_hooks and diagnostics.finish() == []
    diagnostics.start(6, 1)
    assert model[0]._forward_hooks and model[1]._forward_hooks
    loss = model(x).square().sum()
    loss.backward()
    diagnostics.before_update(optimizer)
    optimizer.step()
    diagnostics.after_update()
    first, last = diagnostics.finish()
    assert not model[0]._forward_hooks and not model[1]._forward_hooks
    assert first["step"] == 6 and first["relu_zero"] == 5 / 8 and last["relu_zero"] is None
    assert first["act_mean"] == pytest.approx(x.mean().item()) and first["act_std"] == pytest.approx(x.std().item())
    grad = torch.linalg.vector_norm(model[0].weight.grad).item()
    assert first["grad_norm"] == pytest.approx(grad)
    assert first["weight_norm"] == pytest.approx(2.0)                       # the 4x4 identity
    assert first["update_ratio"] == pytest.approx(0.1 * grad / 2.0)       # plain SGD moves lr x the gradient


def test_diagnose_draws_the_figures_and_prints_the_first_to_last_ratio(recorded, tmp_path):
    from cifarlab.report.gradients import diagnose

    result = diagnose([recorded], tmp_path / "flow")
    for name in ("depth.png", f"heatmap-1-{recorded.name}.png", "report.md", "report.html"):
        assert (tmp_path / "flow" / name).stat().st_size > 1000 or name.endswith(".md")
    rows = rows_of(recorded)
    first = {r["step"]: r["grad_norm"] for r in rows if r["layer"] == "features.0"}
    last = {r["step"]: r["grad_norm"] for r in rows if r["layer"] == "classifier.4"}
    text = str(result)
    assert f"{first[1] / last[1]:.3g} (step 1)" in text and f"{first[21] / last[21]:.3g} (step 21)" in text
    assert "depth.png" in (tmp_path / "flow" / "report.md").read_text()


def test_diagnose_gives_mean_and_std_over_the_seeds_of_one_configuration(recorded, tmp_path):
    from cifarlab.report.gradients import diagnose

    other = tmp_path / "seed1"     # the same configuration but for the seed, with other gradients
    shutil.copytree(recorded, other)
    config = json.loads((other / "config.json").read_text())
    config["seed"] = config["fingerprint"]["seed"] = 1
    (other / "config.json").write_text(json.dumps(config))
    rows = rows_of(recorded)
    for r in rows:
        r["grad_norm"] *= 2 if r["layer"] == "features.0" else 1
    (other / "diagnostics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ratios = [first / last for first, last in ((r0["grad_norm"], r3["grad_norm"]) for r0, r3 in
              ((rows_of(f)[0], rows_of(f)[3]) for f in (recorded, other)))]
    text = str(diagnose([recorded, other], tmp_path / "flow"))
    assert "basic-cnn on cifar10 (2 seeds)" in text
    assert f"{statistics.mean(ratios):.3g} ± {statistics.stdev(ratios):.3g}" in text


def test_diagnose_refuses_a_run_without_diagnostics_in_one_line(plain):
    out, _ = plain
    result = run_cli("diagnose", str(out))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"cifarlab: error: {out}: no diagnostics.jsonl; train with --diagnostics N "
                                      "(e.g. --diagnostics 50) to record the gradient flow")
    with pytest.raises(UsageError, match="train with --diagnostics N"):
        load_run(out).diagnostics()


def test_run_diagnostics_returns_the_rows_and_plot_gradients_draws_them(recorded):
    run = load_run(recorded)
    assert run.diagnostics() == rows_of(recorded)
    figure = run.plot("gradients")
    titles = [ax.get_title() for ax in figure.axes]
    assert "basic-cnn on cifar10: log10 gradient norm" in titles and "first step (step 1)" in titles
    with pytest.raises(UsageError, match="unknown kind 'nope'"):
        run.plot("nope")


def test_diagnostics_is_checked_and_may_change_on_resume(recorded):
    from cifarlab.validation import resume_config

    with pytest.raises(UsageError, match="--diagnostics must be a number of steps >= 0"):
        build_config({"model": "basic-cnn", "dataset": "cifar10", "diagnostics": -1})
    cfg = resume_config(json.loads((recorded / "config.json").read_text()), {"diagnostics": 3}, str(recorded))
    assert cfg.diagnostics == 3


def test_a_compiled_models_step_records_the_gradients_but_no_activations():
    # the engine passes hooks=False while the model is compiled: hooks would make torch.compile recompile
    torch.manual_seed(0)       # weights whose ReLUs pass something, so both layers get a gradient
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    diagnostics = Diagnostics(model, every=1)
    diagnostics.start(1, 1, hooks=False)
    assert not model[0]._forward_hooks and not model[1]._forward_hooks
    model(torch.ones(2, 4)).sum().backward()
    diagnostics.before_update(optimizer)
    optimizer.step()
    diagnostics.after_update()
    rows = diagnostics.finish()
    assert [r["layer"] for r in rows] == ["0", "2"]
    assert all(r["grad_norm"] > 0 and r["act_mean"] is None and r["relu_zero"] is None for r in rows)


def test_a_residual_nets_shortcuts_are_flagged_and_its_main_path_numbered_like_its_plain_twin():
    from cifarlab.models import build_model

    def layers(skip):
        model = build_model("resnet18", 10, skip=skip)
        d = Diagnostics(model, every=1)
        d.start(1, 1)
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        d.before_update()
        d.after_update()
        return d.finish()

    residual, plain = layers(True), layers(False)
    shortcuts = [r["layer"] for r in residual if r["shortcut"]]
    assert shortcuts == ["layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"]
    main = [(r["layer"], r["depth"]) for r in residual if not r["shortcut"]]
    assert main == [(r["layer"], r["depth"]) for r in plain] and main[-1] == ("fc", 17)
    assert next(r["depth"] for r in residual if r["layer"] == "layer2.0.downsample.0") == \
        next(r["depth"] for r in residual if r["layer"] == "layer2.0.conv2")


def test_an_fp16_overflow_step_records_no_norm_and_no_update_and_draws_no_histogram():
    from cifarlab.training.diagnostics import histogram

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    diagnostics = Diagnostics(model, every=1)
    diagnostics.start(1, 1)
    model(torch.ones(2, 4)).sum().backward()
    model[2].weight.grad[0, 0] = float("inf")          # what an fp16 overflow leaves after unscaling
    diagnostics.before_update()
    diagnostics.after_update()                          # the scaler skips the step: the weights do not move
    rows = diagnostics.finish()
    assert rows[1]["grad_norm"] is None and rows[0]["grad_norm"] > 0
    assert [r["update_ratio"] for r in rows] == [None, None]
    assert histogram(model[2].weight.grad) is None and histogram(model[0].weight.grad) is not None


def test_a_line_cut_short_by_a_kill_is_not_a_row(tmp_path):
    from cifarlab.runfolder import RunFolder

    run = RunFolder(tmp_path)
    run.diagnostics_path.write_text(json.dumps({"step": 1, "layer": "0"}) + "\n" + '{"step": 11, "lay')
    assert run.diagnostics_rows() == [{"step": 1, "layer": "0"}]

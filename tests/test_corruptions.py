"""CIFAR-10-C-style corruptions on real CIFAR-10 test images: seeded bytes, each corruption's direction, severity
1 < 5, the cache, the official -C layout reader, and `evaluate --corruptions` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cifarlab.data import corruption_ops as ops
from cifarlab.data.corruptions import NAMES, corrupt, corrupted_sets, parse_corruptions, parse_severities, \
    read_official, set_cache_path
from cifarlab.errors import UsageError
from conftest import run_cli

# the corruptions whose output depends on random draws (the others are fixed functions of the image)
RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost", "fog",
          "elastic_transform"}


@pytest.fixture(scope="module")
def images(cifar10_sample) -> torch.Tensor:
    """32 real CIFAR-10 test images, uint8 (32, 3, 32, 32)."""
    return cifar10_sample.test.images[:32].clone()


def _f(x: torch.Tensor) -> torch.Tensor:
    return x.double() / 255


def high_frequency(x: torch.Tensor) -> float:
    """Mean squared difference of neighbouring pixels: the energy a blur removes and noise adds."""
    x = _f(x)
    return float(((x[..., 1:, :] - x[..., :-1, :]) ** 2).mean() + ((x[..., :, 1:] - x[..., :, :-1]) ** 2).mean())


def rms_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()) ** 2).mean().sqrt())


def test_the_fifteen_corruptions_of_cifar10c():
    assert NAMES == ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
                     "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform",
                     "pixelate", "jpeg_compression")
    assert parse_corruptions("fog,gaussian_noise") == ["gaussian_noise", "fog"]
    assert parse_severities("2-4") == [2, 3, 4] and parse_severities("5,1") == [1, 5]
    with pytest.raises(UsageError, match="unknown corruption 'rain'"):
        parse_corruptions("fog,rain")
    with pytest.raises(UsageError, match="severities run from 1 to 5"):
        parse_severities("0-5")


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_the_same_bytes(images, name):
    first = corrupt(images[:8], name, 3, seed=7)
    assert first.dtype == torch.uint8 and first.shape == images[:8].shape
    assert torch.equal(first, corrupt(images[:8], name, 3, seed=7))
    assert not torch.equal(first, images[:8])
    if name in RANDOM:
        assert not torch.equal(first, corrupt(images[:8], name, 3, seed=8))


@pytest.mark.parametrize("name", NAMES)
def test_an_images_bytes_do_not_depend_on_the_batch_it_is_in(cifar10_sample, name, monkeypatch):
    # so the sets of `--limit 500` are the first 500 images of the full sets
    x = cifar10_sample.test.images[:64]
    assert torch.equal(corrupt(x[:8], name, 4, seed=2), corrupt(x, name, 4, seed=2)[:8])
    monkeypatch.setattr("cifarlab.data.corruptions.BLOCK", 16)     # across block boundaries, a partial block
    assert torch.equal(corrupt(x[:40], name, 4, seed=2), corrupt(x, name, 4, seed=2)[:40])


def test_the_thread_count_changes_no_byte(images):
    threads = torch.get_num_threads()
    made = {}
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            made[count] = [corrupt(images, name, 5, seed=1) for name in ("glass_blur", "elastic_transform", "fog")]
            assert torch.get_num_threads() == count                   # given back as it was
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(made[1], made[2]))
    assert corrupt(images[:0], "fog", 1).shape == (0, 3, 32, 32)


def test_values_are_truncated_to_8_bits_as_their_np_uint8(cifar10_sample):
    # contrast recomputed as their script does it, in float64 numpy; rounding instead would differ in half the
    # values, float32 against float64 in a few near a whole level
    images = cifar10_sample.test.images
    x = images.permute(0, 2, 3, 1).numpy() / 255.0
    means = x.mean(axis=(1, 2), keepdims=True)
    theirs = np.uint8(np.clip((x - means) * 0.15 + means, 0, 1) * 255)
    ours = corrupt(images, "contrast", 5).permute(0, 2, 3, 1).numpy()
    assert (ours != theirs).mean() < 0.01 and np.abs(ours.astype(int) - theirs).max() <= 1


def test_only_32x32_images_are_corrupted(images):
    bigger = torch.nn.functional.interpolate(images[:2].float(), size=(64, 64)).to(torch.uint8)
    with pytest.raises(UsageError, match="the images are 64x64; the severity constants are CIFAR's, for 32x32"):
        corrupt(bigger, "pixelate", 1)


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise"])
def test_noise_raises_pixel_variance_and_high_frequency_energy(images, name):
    out = corrupt(images, name, 3)
    assert high_frequency(out) > 1.3 * high_frequency(images)
    assert float(_f(out).var(dim=(2, 3)).mean()) > float(_f(images).var(dim=(2, 3)).mean())


@pytest.mark.parametrize("name", ["defocus_blur", "motion_blur", "zoom_blur", "fog"])
def test_blur_and_fog_lower_high_frequency_energy(images, name):
    assert high_frequency(corrupt(images, name, 3)) < 0.8 * high_frequency(images)


@pytest.mark.parametrize("name", ["pixelate", "jpeg_compression"])
def test_pixelate_and_jpeg_lose_detail(images, name):
    assert high_frequency(corrupt(images, name, 5)) < 0.95 * high_frequency(images)


def test_glass_blur_moves_each_pixel_from_a_neighbour_up_or_left(images):
    # at severity 1 the Gaussian (sigma 0.05) leaves every pixel as it was: only the local moves remain, and (as
    # in the official files, see glass_blur) each pixel from row/column 2 on takes the clean value of itself or
    # of its left, upper or upper-left neighbour
    out = corrupt(images, "glass_blur", 1).long()
    clean = images.long()
    inner = out[:, :, 2:, 2:]
    candidates = torch.stack([clean[:, :, 2 - dy:32 - dy, 2 - dx:32 - dx] for dy in (0, 1) for dx in (0, 1)])
    assert bool((candidates == inner[None]).all(2).any(0).all())
    assert torch.equal(out[:, :, :2], clean[:, :, :2]) and rms_change(out, images) > 5


@pytest.mark.parametrize("name", ["snow", "frost", "brightness"])
def test_weather_and_brightness_make_images_brighter(images, name):
    assert float(_f(corrupt(images, name, 3)).mean()) > float(_f(images).mean()) + 0.03


def test_brightness_raises_the_largest_channel_by_its_constant(images):
    out = _f(corrupt(images, "brightness", 5)).amax(1)          # severity 5 adds 0.3 to HSV's value
    expected = (_f(images).amax(1) + 0.3).clamp(max=1)
    assert float((out - expected).abs().max()) <= 1 / 255 + 1e-9


def test_contrast_scales_each_channels_spread_by_its_constant(images):
    out = _f(corrupt(images, "contrast", 5))                      # severity 5 keeps 15% of the spread
    ratio = out.std(dim=(2, 3)) / _f(images).std(dim=(2, 3))
    assert float((ratio - 0.15).abs().max()) < 0.01
    assert float((out.mean(dim=(2, 3)) - _f(images).mean(dim=(2, 3))).abs().max()) < 1 / 255   # each channel's mean


def test_elastic_transform_moves_pixels_and_keeps_the_colours(images):
    out = corrupt(images, "elastic_transform", 3)
    assert rms_change(out, images) > 10
    assert float((_f(out).mean(dim=(2, 3)) - _f(images).mean(dim=(2, 3))).abs().mean()) < 0.03


@pytest.mark.parametrize("name", [n for n in NAMES if n != "elastic_transform"])
def test_severity_5_distorts_more_than_severity_1(images, name):
    assert rms_change(corrupt(images, name, 5), images) > rms_change(corrupt(images, name, 1), images)


def test_elastic_local_warp_grows_with_severity(images):
    # CIFAR-10-C's elastic constants shrink the random affine (2.56 px at severity 1, 0.96 px at 5) as they grow
    # the local warp, so the whole transform's pixel change falls; the local warp alone grows
    x = images.float() / 255
    change = []
    for strength, smoothness, _ in ((0, 0, 0.08 * 32), (3.2, 0.03 * 32, 0.03 * 32)):
        out = ops.elastic_transform(x, (strength, smoothness, 0.0), torch.Generator().manual_seed(0))
        change.append(float(((out - x) ** 2).mean().sqrt()))
    assert change[0] < 1e-6 < 0.02 < change[1]


def test_generated_sets_are_cached_by_images_seed_and_version(images, tmp_path, monkeypatch):
    from cifarlab.data import corruptions as cc

    monkeypatch.setenv("CIFARLAB_CACHE", str(tmp_path))
    made = []
    real_corrupt = cc.corrupt
    monkeypatch.setattr(cc, "corrupt", lambda *a: made.append(a[1:]) or real_corrupt(*a))

    def sets(x, seed=3):
        return {(n, s): out for n, s, out in corrupted_sets(x, ["fog"], [1, 5], seed=seed, identity="abc")}

    first = sets(images[:8])
    assert made == [("fog", 1, 3), ("fog", 5, 3)] and len(list((tmp_path / "corruptions").rglob("*.npy"))) == 2
    again = sets(images[:8])
    assert len(made) == 2 and all(torch.equal(first[k], again[k]) for k in first)    # read, not made again
    assert torch.equal(first["fog", 5], real_corrupt(images[:8], "fog", 5, seed=3))
    next((tmp_path / "corruptions").rglob("fog-5.npy")).write_bytes(b"")             # an emptied file
    assert torch.equal(sets(images[:8])["fog", 5], first["fog", 5]) and made[2:] == [("fog", 5, 3)]
    other = sets(images[8:16])                                                        # other images
    assert len(made) == 5 and not torch.equal(other["fog", 5], first["fog", 5])
    sets(images[:8], seed=4)                                                          # another seed
    assert len(made) == 7
    monkeypatch.setattr(cc, "CODE_VERSION", cc.CODE_VERSION + "-next")               # newer code
    assert torch.equal(sets(images[:8])["fog", 5], first["fog", 5]) and len(made) == 9
    path = set_cache_path("h", "abc", "fog", 5, 3)
    assert path != set_cache_path("h", "abd", "fog", 5, 3)
    import PIL

    for module in (torch, PIL):                       # torch's random streams, Pillow's JPEG codec
        with monkeypatch.context() as m:
            m.setattr(module, "__version__", "0.0-other")
            assert set_cache_path("h", "abc", "fog", 5, 3) != path


def write_official(folder, images: torch.Tensor, labels: torch.Tensor, names, seed: int = 0):
    """NAME.npy (5*N, H, W, 3) uint8, severities 1..5 in order, and labels.npy (5*N,) uint8: CIFAR-10-C's layout."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        sets = [corrupt(images, name, s, seed).permute(0, 2, 3, 1).numpy() for s in range(1, 6)]
        np.save(folder / f"{name}.npy", np.concatenate(sets).astype(np.uint8))
    np.save(folder / "labels.npy", np.tile(labels.numpy(), 5).astype(np.uint8))


def test_official_layout_reader_gives_back_each_severity(images, cifar10_sample, tmp_path):
    labels = cifar10_sample.test.labels[:32]
    write_official(tmp_path, images, labels, ["fog", "pixelate"])
    got = list(read_official(tmp_path, ["fog", "pixelate"], [2, 5], (3, 32, 32)))
    assert [(n, s) for n, s, _, _ in got] == [("fog", 2), ("fog", 5), ("pixelate", 2), ("pixelate", 5)]
    for name, severity, x, y in got:
        assert torch.equal(x, corrupt(images, name, severity)) and torch.equal(y, labels)


def test_official_layout_refused_in_one_line(images, cifar10_sample, tmp_path):
    write_official(tmp_path, images, cifar10_sample.test.labels[:32], ["fog"])
    with pytest.raises(UsageError, match="no snow.npy"):
        list(read_official(tmp_path, ["fog", "snow"], [1], (3, 32, 32)))
    np.save(tmp_path / "fog.npy", np.zeros((150, 32, 32, 3), np.uint8))
    with pytest.raises(UsageError, match=r"fog.npy is uint8 \(150, 32, 32, 3\); expected uint8 \(160, 32, 32, 3\)"):
        list(read_official(tmp_path, ["fog"], [1], (3, 32, 32)))
    (tmp_path / "labels.npy").unlink()
    with pytest.raises(UsageError, match="no labels.npy"):
        list(read_official(tmp_path, ["fog"], [1], (3, 32, 32)))


@pytest.mark.parametrize("broken", ["object-array", "pickled", "truncated", "empty"])
@pytest.mark.parametrize("which", ["labels.npy", "fog.npy"])
def test_unreadable_official_files_are_refused_naming_the_file(images, cifar10_sample, tmp_path, broken, which):
    import pickle

    write_official(tmp_path, images[:4], cifar10_sample.test.labels[:4], ["fog"])
    path = tmp_path / which
    good = path.read_bytes()
    if broken == "object-array":
        np.save(path, np.array([{"label": 1}] * 20, dtype=object), allow_pickle=True)
    elif broken == "pickled":
        path.write_bytes(pickle.dumps(np.load(path)))
    else:
        path.write_bytes(good[:len(good) // 2] if broken == "truncated" else b"")
    with pytest.raises(UsageError, match=f"--corruptions-dir: {tmp_path / which} is not a readable .npy array"):
        list(read_official(tmp_path, ["fog"], [1], (3, 32, 32)))


@pytest.fixture(scope="module")
def sample_run(cifar_sample, tmp_path_factory):
    """A basic-cnn trained for one epoch on the shipped sample (one subprocess)."""
    out = tmp_path_factory.mktemp("corrupt") / "run"
    result = run_cli("train", "--model", "basic-cnn", "--dataset", "cifar10", "--data-dir", str(cifar_sample),
                     "--epochs", "1", "--quiet", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def test_official_files_score_as_the_same_sets_generated_here(sample_run, cifar10_sample, tmp_path, monkeypatch):
    from cifarlab import load_run

    monkeypatch.setenv("CIFARLAB_CACHE", str(tmp_path / "cache"))
    test = cifar10_sample.test
    write_official(tmp_path / "c10c", test.images[:40], test.labels[:40], ["gaussian_noise", "contrast"], seed=5)
    run = load_run(sample_run)
    made = run.evaluate_corruptions("gaussian_noise,contrast", "1,5", limit=40, seed=5, progress=False)
    read = run.evaluate_corruptions("contrast,gaussian_noise", [1, 5], limit=40, corruptions_dir=tmp_path / "c10c",
                                    progress=False)
    assert made["accuracy"] == read["accuracy"] and made["images"] == read["images"] == 40
    assert made["mean_accuracy"] == pytest.approx(np.mean([v for by in made["accuracy"].values()
                                                           for v in by.values()]))
    assert "gaussian_noise" in str(made) and "ratio to clean" in str(made)
    figure = made.plot()                                         # what a notebook shows: one line per corruption
    assert len([line for line in figure.axes[0].get_lines() if line.get_label() in ("gaussian_noise", "contrast")]) == 2
    assert json.loads((sample_run / "evaluation-corruptions-dir" / "corruptions.json").read_text())["generated"] \
        is False
    # the generated sets say how they differ from the official ones, in the table and the JSON; the files do not
    saved = json.loads((sample_run / "evaluation-corruptions" / "corruptions.json").read_text())
    assert set(saved["differences"]) >= {"frost", "motion_blur"} and "photographs" in saved["differences"]["frost"]
    assert "CIFAR-10-C-style sets, generated here" in str(made) and "  frost: a procedural texture" in str(made)
    assert read["differences"] is None and "CIFAR-10-C-style" not in str(read)


def test_generated_corruptions_refuse_a_run_that_is_not_32x32(sample_run, cifar10_sample, monkeypatch):
    from cifarlab import load_run
    from cifarlab.data.formats import Split

    test = cifar10_sample.test                          # as a run trained with --image-size 64 sees its test split
    bigger = Split(torch.nn.functional.interpolate(test.images[:8].float(), size=(64, 64)).to(torch.uint8),
                   test.labels[:8])
    monkeypatch.setattr("cifarlab.robustness._test_split", lambda cfg, limit: (bigger, cifar10_sample.info))
    with pytest.raises(UsageError, match="the images are 64x64; the severity constants are CIFAR's, for 32x32"):
        load_run(sample_run).evaluate_corruptions("fog", progress=False)


def test_official_files_of_another_dataset_are_refused(sample_run, cifar10_sample, tmp_path):
    from cifarlab import load_run

    test = cifar10_sample.test
    write_official(tmp_path, test.images[:20], (test.labels[:20] + 1) % 10, ["fog"])
    with pytest.raises(UsageError, match="labels.npy \\(severity 1\\) differs from the labels of cifar10's test"):
        load_run(sample_run).evaluate_corruptions("fog", limit=20, corruptions_dir=tmp_path, progress=False)


def test_cli_refuses_a_wrong_corruptions_dir_in_one_line(sample_run, tmp_path):
    result = run_cli("evaluate", str(sample_run), "--corruptions-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"cifarlab: error: --corruptions-dir {tmp_path}: no labels.npy "
                                                  f"(the official CIFAR-10-C layout: one NAME.npy per corruption "
                                                  f"and labels.npy)"]


@pytest.mark.slow
def test_evaluate_all_corruptions_writes_json_and_figures(sample_run, tmp_path):
    env = {**__import__("os").environ, "CIFARLAB_CACHE": str(tmp_path)}
    result = run_cli("evaluate", str(sample_run), "--corruptions", "all", "--limit", "500", env=env)
    assert result.returncode == 0, result.stderr
    folder = sample_run / "evaluation-corruptions"
    saved = json.loads((folder / "corruptions.json").read_text())
    assert list(saved["accuracy"]) == list(NAMES) and all(len(by) == 5 for by in saved["accuracy"].values())
    assert saved["images"] == 100                                 # the sample's whole test split: a cap, not a demand
    assert saved["mean_accuracy"] == pytest.approx(np.mean([v for by in saved["accuracy"].values()
                                                             for v in by.values()]))
    assert f"mean corruption accuracy {saved['mean_accuracy']:.2f}%" in result.stdout
    for png in ("corruptions.png", "corruption-examples.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_limit_below_one_is_refused(sample_run):
    from cifarlab import load_run

    with pytest.raises(UsageError, match="--limit must be >= 1, got 0"):
        load_run(sample_run).evaluate_corruptions("fog", limit=0, progress=False)


@pytest.mark.slow
def test_speed_benchmark_times_generation_and_evaluation(cifar_sample):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "corruptions_speed.py"
    result = subprocess.run([sys.executable, str(script), "--sample", "--images", "20", "--names", "fog,contrast"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(figures["per_corruption_s"]) == {"fog", "contrast"} and figures["images"] == 20
    assert figures["ratio"] == pytest.approx(figures["generate_s"] / figures["evaluate_s"])
    assert figures["extrapolated_full_generate_s"] == pytest.approx(figures["generate_s"] * 500)
    assert "extrapolated linearly to 10,000 test images x 10 sets (not measured)" in result.stdout


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_pixelate_is_pils_box_resize_down_and_up(cifar10_sample, severity):
    """Their pixelate: Image.resize(BOX) to int(32 c) and back to 32, on the uint8 image; ours must be exact."""
    from PIL import Image

    from cifarlab.data.corruptions import CORRUPTIONS

    images = cifar10_sample.test.images                  # the sample's 100 real test images
    side = int(32 * CORRUPTIONS["pixelate"][1][severity - 1])
    theirs = [np.asarray(Image.fromarray(im).resize((side, side), Image.BOX).resize((32, 32), Image.BOX))
              for im in images.permute(0, 2, 3, 1).numpy()]
    ours = corrupt(images, "pixelate", severity).permute(0, 2, 3, 1).numpy()
    assert side < 32 and np.array_equal(ours, np.stack(theirs))


def test_helpers_agree_with_the_libraries_their_script_calls(images):
    """clipped_zoom (scipy's zoom, order 1), the Gaussian blurs (scipy's gaussian_filter, which skimage calls)
    and brightness (an HSV round trip, here Python's colorsys) recomputed independently on real images."""
    import colorsys

    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    x = images[:2].double() / 255
    hwc = x[0].permute(1, 2, 0).numpy()
    for factor in (1.03, 1.25, 2.25):
        crop, top = int(np.ceil(32 / factor)), (32 - int(np.ceil(32 / factor))) // 2
        zoomed = scipy_ndimage.zoom(hwc[top:top + crop, top:top + crop], (factor, factor, 1), order=1)
        trim = (zoomed.shape[0] - 32) // 2
        ours = ops.clipped_zoom(x[:1].float(), factor)[0].permute(1, 2, 0).numpy()
        assert np.abs(zoomed[trim:trim + 32, trim:trim + 32] - ours).max() < 1e-5
    for sigma, ours_mode, scipy_mode, truncate in ((0.4, "edge", "nearest", 4.0), (6.4, "symmetric", "reflect", 3.0)):
        ref = scipy_ndimage.gaussian_filter(hwc, (sigma, sigma, 0), mode=scipy_mode, truncate=truncate)
        ours = ops.gaussian_blur(x[:1].float(), sigma, ours_mode, truncate)[0].permute(1, 2, 0).numpy()
        assert np.abs(ref - ours).max() < 1e-5
    ours = ops.brightness(x.float(), 0.3, None).permute(0, 2, 3, 1).numpy()
    for n, i, j in ((0, 0, 0), (0, 5, 17), (1, 31, 31), (1, 12, 3)):
        h, s, v = colorsys.rgb_to_hsv(*x[n, :, i, j].tolist())
        assert np.abs(np.array(colorsys.hsv_to_rgb(h, s, min(v + 0.3, 1.0))) - ours[n, i, j]).max() < 1e-5

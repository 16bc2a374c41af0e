"""`cifarlab export` and `cifarlab predict` on a real (tiny) trained run: exported models agree with PyTorch."""

import json

import pytest
import torch
from conftest import run_cli

from cifarlab.data.formats import Split
from cifarlab.data.loader import DeviceLoader
from cifarlab.run import load_run

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def run(cifar_sample, tmp_path_factory):
    """A basic-cnn trained for one epoch on the shipped sample's 200 CIFAR-10 images (in a subprocess: the tests
    taking it are marked slow)."""
    out = tmp_path_factory.mktemp("export") / "run"
    result = run_cli("train", "--model", "basic-cnn", "--dataset", "cifar10", "--data-dir", str(cifar_sample),
                     "--epochs", "1", "--quiet", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def _batches(split: Split, info, batch_size: int = 250):
    """The split normalised exactly as cifarlab evaluates it, in order."""
    return DeviceLoader(split, batch_size, info.mean, info.std, CPU, shuffle=False)


def _eager_logits(run, split, info) -> torch.Tensor:
    model = load_run(run).model()
    with torch.inference_mode():
        return torch.cat([model(x) for x, _ in _batches(split, info)])


@pytest.mark.slow
def test_onnx_export_agrees_with_pytorch_on_all_the_samples_test_images(run, cifar10_sample):
    import onnx
    import onnxruntime

    result = run_cli("export", str(run), "--format", "onnx")
    assert result.returncode == 0, result.stderr
    path = run / "model.onnx"
    assert str(path) in result.stdout and "dynamo" in result.stdout

    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == ("images", "logits")
    assert inp.type.tensor_type.shape.dim[0].dim_param        # a named, dynamic batch dimension
    metadata = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert metadata["classes"] == cifar10_sample.classes and metadata["mean"] == list(cifar10_sample.info.mean)

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def onnx_logits_of(x):
        return torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])

    # Batches of 250 and of 1 (the exporter traced a batch of 2): the batch dimension really is dynamic.
    test = cifar10_sample.test
    onnx_logits = torch.cat([onnx_logits_of(x) for x, _ in _batches(test, cifar10_sample.info)])
    first, _ = next(iter(_batches(test, cifar10_sample.info, 1)))
    torch.testing.assert_close(onnx_logits_of(first), onnx_logits[:1], rtol=0, atol=1e-4)
    eager = _eager_logits(run, test, cifar10_sample.info)
    assert onnx_logits.shape == eager.shape == (100, 10)
    agreement = (onnx_logits.argmax(1) == eager.argmax(1)).float().mean().item()
    assert agreement >= 0.999
    assert (onnx_logits - eager).abs().max().item() < 1e-3


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_to_out_matches_eager_within_1e_5(run, cifar10_sample, tmp_path):
    target = tmp_path / "nested" / "basic.pt"
    result = run_cli("export", str(run), "--format", "torchscript", "--out", str(target))
    assert result.returncode == 0, result.stderr
    assert target.is_file() and not (run / "model.torchscript.pt").exists()
    extra = {"cifarlab.json": ""}
    scripted = torch.jit.load(str(target), _extra_files=extra)
    assert json.loads(extra["cifarlab.json"])["model"] == "basic-cnn"
    x, _ = next(iter(_batches(cifar10_sample.test, cifar10_sample.info, 64)))
    eager = load_run(run).model()
    with torch.inference_mode():
        torch.testing.assert_close(scripted(x), eager(x), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_safetensors_export_round_trips_weights_and_metadata(run, cifar10_sample):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from cifarlab.models import build_model

    result = run_cli("export", str(run), "--format", "safetensors")
    assert result.returncode == 0, result.stderr
    path = run / "model.export.safetensors"
    with safe_open(str(path), "pt") as f:
        metadata = json.loads(f.metadata()["cifarlab"])
    assert (metadata["model"], metadata["dataset"]) == ("basic-cnn", "cifar10")
    assert metadata["classes"] == cifar10_sample.classes
    weights = load_file(str(path))
    original = load_run(run).model().state_dict()
    assert weights.keys() == original.keys()
    assert all(torch.equal(weights[k], original[k]) for k in original)
    rebuilt = build_model(metadata["model"], metadata["num_classes"], metadata["in_channels"],
                          metadata["image_size"])
    rebuilt.load_state_dict(weights)
    x, _ = next(iter(_batches(cifar10_sample.test, cifar10_sample.info, 16)))
    with torch.inference_mode():
        assert torch.equal(rebuilt.eval()(x), load_run(run).model()(x))


def test_export_of_a_folder_that_is_not_a_run_exits_2(tmp_path):
    result = run_cli("export", str(tmp_path), "--format", "onnx")
    assert result.returncode == 2
    assert result.stderr.strip() == f"cifarlab: error: {tmp_path}: not a cifarlab run folder (no config.json)"
    (tmp_path / "config.json").write_text("{}")
    result = run_cli("export", str(tmp_path), "--format", "onnx")
    assert result.returncode == 2
    assert result.stderr.strip() == f"cifarlab: error: {tmp_path}: no checkpoint or model.safetensors in this " \
                                    "run folder"


@pytest.fixture(scope="module")
def image_files(cifar10_sample, tmp_path_factory):
    """The first 4 test images as 32x32 PNGs, and image 0 again as a 64x48 JPEG (another size and codec)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    pngs = []
    for i in range(4):
        pixels = cifar10_sample.test.images[i].permute(1, 2, 0).numpy()       # HWC uint8, as Pillow wants
        pngs.append(folder / f"test{i}.png")
        Image.fromarray(pixels).save(pngs[-1])
    jpeg = folder / "test0-64x48.jpg"
    Image.fromarray(cifar10_sample.test.images[0].permute(1, 2, 0).numpy()).resize((64, 48)).save(jpeg, quality=90)
    return pngs, jpeg


@pytest.mark.slow
def test_predict_top1_for_32x32_pngs_equals_the_in_process_prediction(run, cifar10_sample, image_files):
    pngs, jpeg = image_files
    result = run_cli("predict", str(run), *map(str, pngs), str(jpeg), "--top-k", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(p) for p in pngs] + [str(jpeg)]
    printed_top1 = [line.split(": ", 1)[1].split(",")[0].rsplit(" ", 1)[0] for line in lines]
    eager = _eager_logits(run, Split(cifar10_sample.test.images[:4], cifar10_sample.test.labels[:4]), cifar10_sample.info)
    assert printed_top1[:4] == [cifar10_sample.classes[i] for i in eager.argmax(1).tolist()]
    assert printed_top1[4] in cifar10_sample.classes
    assert all(len(line.split(", ")) == 3 for line in lines)


@pytest.mark.slow
def test_predict_json_gives_sorted_top_k_probabilities(run, cifar10_sample, image_files):
    pngs, jpeg = image_files
    result = run_cli("predict", str(run), str(pngs[0]), str(jpeg), "--top-k", "4", "--json")
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    assert [r["image"] for r in results] == [str(pngs[0]), str(jpeg)]
    for r in results:
        probs = [t["probability"] for t in r["top"]]
        assert len(probs) == 4 and probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 1 + 1e-6
        assert all(cifar10_sample.classes[t["index"]] == t["label"] for t in r["top"])


@pytest.mark.slow
def test_predict_on_a_text_file_exits_2_with_one_line_naming_it(run, image_files, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    result = run_cli("predict", str(run), str(image_files[0][0]), str(notes))
    assert result.returncode == 2
    assert result.stdout == ""                 # nothing is printed for the good image either
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"cifarlab: error: {notes}: ")


def test_read_image_converts_to_grayscale_and_resizes_for_mnist_models(tmp_path):
    from PIL import Image

    from cifarlab.predict import read_image

    path = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 100, 50)).save(path)
    pixels = read_image(path, channels=1, size=28)
    assert pixels.shape == (1, 28, 28) and pixels.dtype == torch.uint8
    # ITU-R 601 luma of (200, 100, 50), as Pillow's "L" conversion computes it.
    assert pixels.unique().tolist() == [round(200 * 0.299 + 100 * 0.587 + 50 * 0.114)]

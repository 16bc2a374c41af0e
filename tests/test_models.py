import pytest
import torch

from cifarlab.models import MODELS, build_model, count_params

# The article's published parameter counts: part of the contract, compared exactly.
EXPECTED = {
    ("basic-cnn", 10, 3, 32): 545_098,
    ("basic-cnn", 100, 3, 32): 556_708,
    ("basic-cnn", 10, 1, 28): 421_642,
    ("deeper-cnn", 10, 3, 32): 7_320_394,
    ("deeper-cnn", 100, 3, 32): 7_366_564,
    ("deeper-cnn", 10, 1, 28): 5_746_378,
    ("resnet18", 10, 3, 32): 11_173_962,
    ("resnet18", 100, 3, 32): 11_220_132,
    ("resnet18", 10, 1, 28): 11_172_810,
}


@pytest.mark.parametrize("key", list(EXPECTED), ids=lambda k: f"{k[0]}-{k[1]}cls-{k[2]}ch")
def test_parameter_count_is_exact(key):
    name, classes, channels, size = key
    model = build_model(name, classes, channels, size)
    assert count_params(model) == EXPECTED[key]
    out = model.eval()(torch.zeros(2, channels, size, size))
    assert out.shape == (2, classes)


def test_no_batchnorm_removes_every_norm_layer():
    model = build_model("deeper-cnn", 10, batchnorm=False)
    assert not any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in model.modules())
    # 3840 conv-BN + 3072 FC-BN parameters go away.
    assert count_params(model) == 7_320_394 - 3840 - 3072


def test_no_dropout_sets_every_dropout_rate_to_zero():
    model = build_model("deeper-cnn", 10, dropout=False)
    rates = [m.p for m in model.modules() if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d))]
    assert rates and all(p == 0.0 for p in rates)
    with_dropout = [m.p for m in build_model("deeper-cnn", 10).modules() if isinstance(m, torch.nn.Dropout2d)]
    assert with_dropout == [0.25] * 4


@pytest.mark.parametrize("init,expected_std", [("kaiming", (2 / (256 * 9)) ** 0.5), ("xavier", None)])
def test_init_schemes_set_the_documented_spread(init, expected_std):
    torch.manual_seed(0)
    model = build_model("deeper-cnn", 10, init=init)
    conv = model.features[3][0]   # the 256 -> 512 conv: fan_in 256 * 9
    std = conv.weight.std().item()
    if expected_std is None:      # xavier uniform: bound sqrt(6 / (fan_in + fan_out))
        bound = (6 / (256 * 9 + 512 * 9)) ** 0.5
        assert conv.weight.abs().max().item() <= bound
        assert std == pytest.approx(bound / 3 ** 0.5, rel=0.05)
    else:
        assert std == pytest.approx(expected_std, rel=0.05)
    assert torch.all(conv.bias == 0)


def test_every_registered_model_trains_one_step_on_mnist_shapes():
    for name in (n for n, spec in MODELS.items() if spec.min_size <= 28):   # VGG's 5 pools need 32x32
        model = build_model(name, 10, 1, 28)
        loss = model(torch.randn(2, 1, 28, 28)).logsumexp(1).mean()   # 2: BN still sees >1 value per channel
        loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)   # fast94 freezes some


def test_basic_cnn_pool_before_relu_matches_the_article_order():
    """Pooling first is a speed rewrite: outputs and gradients equal ReLU -> pool."""
    torch.manual_seed(0)
    model = build_model("basic-cnn", 10).eval()
    conv1, conv2 = model.features[0], model.features[3]
    classifier = model.classifier
    x = torch.randn(8, 3, 32, 32)

    def article_order(inp):
        f = torch.nn.functional
        h = f.max_pool2d(f.relu(conv1(inp)), 2)
        return classifier(f.max_pool2d(f.relu(conv2(h)), 2))

    ours = model(x)
    ours.square().sum().backward()
    ours_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    reference = article_order(x)
    reference.square().sum().backward()
    assert torch.equal(ours, reference)
    for got, want in zip(ours_grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)

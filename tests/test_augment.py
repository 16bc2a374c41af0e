import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cifarlab.data import augment
from cifarlab.data.formats import Split
from cifarlab.data.loader import AugmentSettings, DeviceLoader
from cifarlab.data.sources import class_balanced_split


def _images(b=16, c=3, h=32, w=32, seed=0):
    return torch.randint(0, 256, (b, c, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_flip_is_a_mirror_or_the_identity():
    x = _images()
    y = augment.random_flip(x, torch.Generator().manual_seed(1))
    mirrored = [torch.equal(y[i], x[i].flip(2)) for i in range(len(x))]
    same = [torch.equal(y[i], x[i]) for i in range(len(x))]
    assert all(m or s for m, s in zip(mirrored, same))
    assert 0 < sum(mirrored) < len(x)      # both outcomes happen in a batch of 16


@settings(max_examples=25, deadline=None)
@given(padding=st.integers(0, 6), seed=st.integers(0, 2**31 - 1), size=st.sampled_from([28, 32]))
def test_crop_keeps_the_pixels_it_keeps(padding, seed, size):
    x = _images(b=4, h=size, w=size, seed=seed % 1000)
    y = augment.random_crop(x, padding, torch.Generator().manual_seed(seed))
    assert y.shape == x.shape and y.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    for i in range(len(x)):
        # The output is exactly one window of the zero-padded image.
        windows = [(dy, dx) for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
                   if torch.equal(padded[i, :, dy:dy + size, dx:dx + size], y[i])]
        assert windows


@settings(max_examples=25, deadline=None)
@given(strength=st.floats(0.0, 0.9), seed=st.integers(0, 2**31 - 1))
def test_color_jitter_stays_in_range_and_zero_strength_is_identity(strength, seed):
    x = _images(b=8).float() / 255
    y = augment.color_jitter(x.clone(), strength, torch.Generator().manual_seed(seed))
    assert y.min() >= 0 and y.max() <= 1
    if strength == 0.0:
        assert torch.allclose(y, x, atol=1e-6)


def test_cutout_zeroes_one_square_per_image():
    x = torch.ones(32, 3, 32, 32)
    y = augment.cutout(x, 8, torch.Generator().manual_seed(0))
    zeros = (y[:, 0] == 0).sum(dim=(1, 2))
    assert torch.all(zeros <= 64) and torch.all(zeros > 0)
    assert torch.equal(y[:, 0] == 0, y[:, 2] == 0)     # same square on every channel


def test_normalize_with_cifar10_statistics():
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    x = mean[None, :, None, None].expand(2, 3, 4, 4)
    assert torch.allclose(augment.normalize(x, mean, std), torch.zeros(2, 3, 4, 4), atol=1e-6)


def _loader(seed, ops=()):
    split = Split(_images(b=100), torch.arange(100) % 10)
    return DeviceLoader(split, 32, (0.5,) * 3, (0.25,) * 3, torch.device("cpu"), shuffle=True,
                        augment=AugmentSettings(tuple(ops)), seed=seed)


def test_loader_epochs_are_seeded_permutations():
    a, b, c = _loader(7), _loader(7), _loader(8)
    first = torch.cat([y for _, y in a])
    assert torch.equal(first, torch.cat([y for _, y in b]))          # same seed, same order
    assert not torch.equal(first, torch.cat([y for _, y in c]))      # other seed, other order
    second = torch.cat([y for _, y in a])
    assert not torch.equal(first, second)                            # a new order every epoch
    assert sorted(second.tolist()) == sorted((torch.arange(100) % 10).tolist())  # each image once


def test_loader_batches_are_normalised_floats():
    x, _ = next(iter(_loader(0, ("crop", "flip", "jitter", "cutout"))))
    assert x.dtype == torch.float32 and x.shape == (32, 3, 32, 32)
    assert x.min() >= (0 - 0.5) / 0.25 - 1e-5 and x.max() <= (1 - 0.5) / 0.25 + 1e-5


def test_val_split_is_class_balanced_disjoint_and_seeded():
    labels = torch.arange(1000) % 10
    train, val = class_balanced_split(labels, 105, seed=3)
    assert len(val) == 105 and len(train) == 895
    assert set(train.tolist()).isdisjoint(val.tolist())
    counts = torch.bincount(labels[val], minlength=10)
    assert counts.max() - counts.min() <= 1
    assert torch.equal(val, class_balanced_split(labels, 105, seed=3)[1])
    assert not torch.equal(val, class_balanced_split(labels, 105, seed=4)[1])


def test_loader_restarted_mid_epoch_yields_exactly_the_remaining_batches():
    ops = ("crop", "flip", "jitter", "cutout")
    whole = _loader(5, ops)
    next(iter(whole))                                                # epoch 0
    epoch1 = list(whole)                                             # epoch 1, 3 full batches + 1
    restarted = _loader(5, ops)
    restarted.set_position(1, 2)
    tail = list(restarted)
    assert len(tail) == len(epoch1) - 2
    for (xa, ya), (xb, yb) in zip(epoch1[2:], tail):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)

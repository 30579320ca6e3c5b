"""The final recipe's augmentation, weight EMA and BatchNorm recalibration (nas.train.recipe)."""

import pytest
import torch

from nas.blocks.model import build_model
from nas.data import load_dataset
from nas.space import decode
from nas.train.recipe import Augment, default_augment, flip_valid, recalibrate_batchnorm
from nas.train.trainer import train


def _shifted(img, dy, dx, pad, fill):
    """The crop at offset (dy, dx) of `img` padded by `pad` with `fill`, written out by loops."""
    c, h, w = img.shape
    out = torch.full_like(img, 0.0)
    for ch in range(c):
        for i in range(h):
            for j in range(w):
                si, sj = i + dy - pad, j + dx - pad
                out[ch, i, j] = img[ch, si, sj] if 0 <= si < h and 0 <= sj < w else fill[ch]
    return out


def test_crop_is_a_shift_with_black_padding_and_each_image_draws_its_own():
    x = torch.randn(16, 2, 6, 7)
    fill = torch.tensor([-0.4, -1.5])
    y = Augment(pad=2)(x, fill, torch.Generator().manual_seed(3))
    offsets = set()
    for n in range(len(x)):
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(y[n], _shifted(x[n], dy, dx, 2, fill))]
        assert len(matches) == 1, n
        offsets.add(matches[0])
    assert len(offsets) > 4  # not one offset for the whole batch


def test_flip_and_determinism():
    x = torch.randn(64, 1, 5, 5)
    a = Augment(pad=0, flip=True)(x, torch.zeros(1), torch.Generator().manual_seed(0))
    b = Augment(pad=0, flip=True)(x, torch.zeros(1), torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    flipped = [torch.equal(a[n], x[n].flip(2)) for n in range(len(x))]
    kept = [torch.equal(a[n], x[n]) for n in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 16 < sum(flipped) < 48


def test_erasing_blanks_one_rectangle_of_2_to_20_percent():
    x = torch.randn(32, 1, 20, 20) + 10.0  # no pixel equals the fill by chance
    y = Augment(pad=0, erasing=1.0)(x, torch.tensor([-3.0]), torch.Generator().manual_seed(1))
    for n in range(len(x)):
        erased = (y[n, 0] == -3.0)
        rows, cols = erased.any(1).nonzero().flatten(), erased.any(0).nonzero().flatten()
        assert erased.sum() == len(rows) * len(cols)  # a rectangle
        assert rows.max() - rows.min() + 1 == len(rows) and cols.max() - cols.min() + 1 == len(cols)
        assert 0.005 * 400 <= erased.sum() <= 0.25 * 400


def test_flip_only_where_labels_survive_it_and_pad_scales_with_the_image():
    assert flip_valid("fashion-mnist") and flip_valid("cifar10")
    assert not flip_valid("digits") and not flip_valid(None)
    assert default_augment("digits", 8) == Augment(pad=1, flip=False)
    assert default_augment("fashion-mnist", 28) == Augment(pad=3, flip=True)
    with pytest.raises(ValueError, match="pad=-1"):
        Augment(pad=-1)


def test_batchnorm_recalibration_gives_the_batches_own_statistics():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3))
    batches = [(torch.randn(8, 1, 6, 6) * 2 + 1, None) for _ in range(3)]
    recalibrate_batchnorm(net, batches)
    with torch.no_grad():
        feats = [net[0](x) for x, _ in batches]
    bn = net[1]  # update_bn: the average over the batches of each batch's statistics
    assert torch.allclose(bn.running_mean, torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, torch.stack([f.var((0, 2, 3)) for f in feats]).mean(0), rtol=1e-4)
    assert bn.momentum == 0.1 and net.training  # left as it was


def test_train_with_the_full_recipe_records_it_and_ends_on_the_average():
    data = load_dataset("digits")
    arch = decode("in_r8_c1-stem_c8_k3_s1_w8_a8-ir_r1_k3_s2_e2_c16_w8_a8-head_c0_w8_a8-fc_n10_w8_a8")
    torch.manual_seed(0)
    plain = build_model(arch)
    r0 = train(plain, data, epochs=4, batch_size=32, progress=False, measure_inference=False)
    torch.manual_seed(0)
    model = build_model(arch)
    r1 = train(model, data, epochs=4, batch_size=32, progress=False, measure_inference=False,
               augment=default_augment("digits", 8), ema_decay="auto", recalibrate_bn=200)
    assert r0.augment is None and r0.ema_decay is None and r0.recalibrate_bn == 0
    assert r1.augment == {"pad": 1, "flip": False, "erasing": 0.0}
    assert r1.ema_decay == pytest.approx(1 - 10 / r1.steps) and r1.recalibrate_bn == 200
    assert r1.steps == r0.steps  # the same batches, augmented
    assert not torch.equal(next(plain.parameters()), next(model.parameters()))
    assert r0.accuracy > 0.6 and r1.accuracy > 0.4  # both learn, well above chance (augmented: slower)

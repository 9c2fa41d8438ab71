"""Tests for :mod:`optuna_deelbo.regularizers._mixing`: targets, pixel bookkeeping, sampling statistics, bad input.

Images where every example is a distinct nonzero constant make pasted and zeroed pixels detectable;
one-hot targets of distinct classes reveal the pairing permutation a mix used.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from _hypothesis_profiles import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import Tensor

from optuna_deelbo._errors import ConfigError
from optuna_deelbo.regularizers._mixing import (
    BatchMixing,
    cutmix,
    cutout,
    mixup,
    one_hot_targets,
    random_erasing,
    sample_beta,
    soft_cross_entropy,
)

torch.set_num_threads(1)

F64 = torch.float64
SETTINGS = settings(max_examples=examples(40), deadline=None)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
alphas = st.sampled_from([0.1, 0.4, 1.0, 5.0])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _constant_batch(batch: int, channels: int, height: int, width: int) -> Tensor:
    """Image ``i`` is the constant ``i + 1`` in every channel and pixel."""
    values = torch.arange(1, batch + 1, dtype=F64)
    return values[:, None, None, None].expand(batch, channels, height, width).clone()


def _identity_targets(batch: int) -> Tensor:
    """One-hot targets where example ``i`` is class ``i``."""
    return torch.eye(batch, dtype=F64)


def _recover_perm(mixed_targets: Tensor, lam: float) -> Tensor:
    """``perm`` from ``lam * e_i + (1 - lam) * e_perm[i]`` (needs ``lam < 1``)."""
    batch = mixed_targets.shape[0]
    return (mixed_targets - lam * torch.eye(batch, dtype=mixed_targets.dtype)).argmax(dim=1)


def _is_one_rectangle(mask: Tensor) -> bool:
    """True if the true entries of a 2-d bool mask are exactly a (non-empty) axis-aligned rectangle."""
    rows = mask.any(dim=1).nonzero().flatten()
    cols = mask.any(dim=0).nonzero().flatten()
    if rows.numel() == 0:
        return False
    box = torch.zeros_like(mask)
    box[int(rows[0]) : int(rows[-1]) + 1, int(cols[0]) : int(cols[-1]) + 1] = True
    return torch.equal(box, mask)


def _zeroed(out: Tensor) -> Tensor:
    """``(B, H, W)`` mask of pixels that are zero in every channel; asserts channels agree."""
    zero = out == 0
    assert torch.equal(zero.all(dim=1), zero.any(dim=1)), "channels were zeroed differently"
    return zero.all(dim=1)


# --- targets and loss -------------------------------------------------------------------------
@SETTINGS
@given(seed=seeds, batch=st.integers(0, 9), n_classes=st.integers(1, 12), eps=st.floats(0.0, 0.99))
def test_one_hot_targets_rows_sum_to_one(seed: int, batch: int, n_classes: int, eps: float) -> None:
    y = torch.randint(0, n_classes, (batch,), generator=_gen(seed))
    targets = one_hot_targets(y, n_classes, eps, dtype=F64)
    assert targets.shape == (batch, n_classes) and targets.dtype == F64
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(batch, dtype=F64))
    expected = (1 - eps) * F.one_hot(y, n_classes).to(F64) + eps / n_classes
    torch.testing.assert_close(targets, expected)


def test_one_hot_targets_default_dtype_and_values() -> None:
    targets = one_hot_targets(torch.tensor([2, 0]), 4, 0.2)
    assert targets.dtype == torch.get_default_dtype()
    expected = torch.tensor([[0.05, 0.05, 0.85, 0.05], [0.85, 0.05, 0.05, 0.05]])
    torch.testing.assert_close(targets, expected)


@SETTINGS
@given(seed=seeds, batch=st.integers(1, 9), n_classes=st.integers(2, 12), eps=st.floats(0.0, 0.99))
def test_soft_cross_entropy_matches_torch(seed: int, batch: int, n_classes: int, eps: float) -> None:
    gen = _gen(seed)
    logits = 3 * torch.randn(batch, n_classes, generator=gen, dtype=F64)
    y = torch.randint(0, n_classes, (batch,), generator=gen)
    plain = F.cross_entropy(logits, y)
    torch.testing.assert_close(soft_cross_entropy(logits, one_hot_targets(y, n_classes, dtype=F64)), plain)
    torch.testing.assert_close(soft_cross_entropy(logits, y), plain)
    smoothed = soft_cross_entropy(logits, one_hot_targets(y, n_classes, eps, dtype=F64))
    torch.testing.assert_close(smoothed, F.cross_entropy(logits, y, label_smoothing=eps))


def test_soft_cross_entropy_gradient_flows() -> None:
    logits = torch.zeros(2, 3, dtype=F64, requires_grad=True)
    targets = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    loss = soft_cross_entropy(logits, targets)
    assert loss.item() == pytest.approx(math.log(3))
    loss.backward()
    assert logits.grad is not None
    torch.testing.assert_close(logits.grad, (torch.softmax(logits.detach(), dim=1) - targets) / 2)


# --- Beta sampling ----------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_sample_beta_mean_variance_and_distribution(alpha: float) -> None:
    gen = _gen(12345)
    draws = torch.tensor([sample_beta(alpha, gen) for _ in range(20_000)], dtype=F64)
    assert draws.min() >= 0 and draws.max() <= 1
    variance = 1 / (4 * (2 * alpha + 1))
    assert abs(draws.mean().item() - 0.5) < 5 * math.sqrt(variance / draws.numel())
    assert draws.var().item() == pytest.approx(variance, rel=0.05)
    assert stats.kstest(draws.numpy(), stats.beta(alpha, alpha).cdf).pvalue > 1e-4


def test_sample_beta_reproducible_from_generator_and_global_seed() -> None:
    gen_a, gen_b = _gen(3), _gen(3)
    first = [sample_beta(0.7, gen_a) for _ in range(4)]
    assert first == [sample_beta(0.7, gen_b) for _ in range(4)]
    assert len(set(first)) == 4
    assert sample_beta(0.7, _gen(3)) != sample_beta(0.7, _gen(4))
    torch.manual_seed(11)
    a = sample_beta(2.0)
    torch.manual_seed(11)
    assert sample_beta(2.0) == a


# --- mixup ------------------------------------------------------------------------------------
@SETTINGS
@given(seed=seeds, batch=st.integers(1, 8), alpha=alphas)
def test_mixup_blends_pairs(seed: int, batch: int, alpha: float) -> None:
    gen = _gen(seed)
    x = torch.randn(batch, 2, 3, 4, generator=gen, dtype=F64)
    x_before = x.clone()
    targets = _identity_targets(batch)
    mixed_x, mixed_targets, lam = mixup(x, targets, alpha, gen)
    assert torch.equal(x, x_before)
    assert 0.0 <= lam <= 1.0
    torch.testing.assert_close(mixed_targets.sum(dim=1), torch.ones(batch, dtype=F64))
    if lam == 1.0:
        torch.testing.assert_close(mixed_x, x)
        return
    perm = _recover_perm(mixed_targets, lam)
    assert sorted(perm.tolist()) == list(range(batch))
    torch.testing.assert_close(mixed_x, lam * x + (1 - lam) * x[perm], rtol=0, atol=1e-12)
    torch.testing.assert_close(mixed_targets, lam * targets + (1 - lam) * targets[perm], rtol=0, atol=1e-12)


def test_mixup_seeded_generator_reproduces() -> None:
    x = torch.randn(6, 3, 5, 5, generator=_gen(0))
    targets = one_hot_targets(torch.arange(6) % 4, 4, 0.1)
    a = mixup(x, targets, 0.4, _gen(7))
    b = mixup(x, targets, 0.4, _gen(7))
    c = mixup(x, targets, 0.4, _gen(8))
    assert a[2] == b[2] and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[2] != c[2]


# --- cutmix -----------------------------------------------------------------------------------
@SETTINGS
@given(
    seed=seeds,
    batch=st.integers(2, 6),
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    alpha=alphas,
)
def test_cutmix_pixel_fraction_equals_one_minus_lam(
    seed: int, batch: int, height: int, width: int, alpha: float
) -> None:
    x = _constant_batch(batch, 3, height, width)
    x_before = x.clone()
    targets = _identity_targets(batch)
    mixed_x, mixed_targets, lam = cutmix(x, targets, alpha, _gen(seed))
    assert torch.equal(x, x_before)
    assert 0.0 <= lam <= 1.0
    torch.testing.assert_close(mixed_targets.sum(dim=1), torch.ones(batch, dtype=F64))
    pasted_pixels = (1 - lam) * height * width
    assert abs(pasted_pixels - round(pasted_pixels)) < 1e-9
    if lam == 1.0:
        assert torch.equal(mixed_x, x)
        return
    perm = _recover_perm(mixed_targets, lam)
    assert sorted(perm.tolist()) == list(range(batch))
    torch.testing.assert_close(mixed_targets, lam * targets + (1 - lam) * targets[perm], rtol=0, atol=1e-12)
    boxes = []
    for i in range(batch):
        changed = (mixed_x[i] != x[i]).any(dim=0)
        # every pixel is either its own constant or its partner's
        own = (mixed_x[i] == i + 1).all(dim=0)
        partner = (mixed_x[i] == perm[i].item() + 1).all(dim=0)
        assert torch.all(own | partner)
        if perm[i] == i:
            assert not changed.any()
            continue
        assert changed.sum().item() == round(pasted_pixels)
        assert changed.sum().item() / (height * width) == pytest.approx(1 - lam, abs=1e-12)
        assert _is_one_rectangle(changed)
        boxes.append(changed)
    for box in boxes[1:]:
        assert torch.equal(box, boxes[0]), "cutmix uses one box for the whole batch"


def test_cutmix_seeded_generator_reproduces_and_boxes_vary() -> None:
    x = _constant_batch(4, 1, 16, 16)
    targets = _identity_targets(4)
    a = cutmix(x, targets, 1.0, _gen(5))
    b = cutmix(x, targets, 1.0, _gen(5))
    assert a[2] == b[2] and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    lams = {cutmix(x, targets, 1.0, _gen(seed))[2] for seed in range(20)}
    assert len(lams) > 5


# --- cutout -----------------------------------------------------------------------------------
def test_cutout_zeroes_full_square_inside_and_clipped_at_border() -> None:
    batch, size, side = 400, 6, 16
    x = torch.ones(batch, 3, side, side)
    out = cutout(x, size, _gen(0))
    assert torch.equal(x, torch.ones(batch, 3, side, side))
    zeroed = _zeroed(out)
    inside = clipped = 0
    tops = set()
    for i in range(batch):
        mask = zeroed[i]
        assert _is_one_rectangle(mask)
        rows = mask.any(dim=1).nonzero().flatten()
        cols = mask.any(dim=0).nonzero().flatten()
        top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        tops.add((top, left))
        touches_border = top == 0 or left == 0 or bottom == side or right == side
        if bottom - top == size and right - left == size:
            inside += 1
            assert mask.sum().item() == size * size
        else:
            clipped += 1
            assert touches_border
            assert bottom - top <= size and right - left <= size
            assert mask.sum().item() < size * size
        if not touches_border:
            assert mask.sum().item() == size * size
    # centres uniform over 16 pixels per axis: the square fits for 11 of them, so ~47% fit
    assert 0.35 * batch < inside < 0.6 * batch
    assert clipped > 0
    assert len(tops) > 50, "each image gets its own centre"


def test_cutout_size_zero_and_oversized() -> None:
    x = torch.randn(3, 2, 5, 7, generator=_gen(1))
    assert torch.equal(cutout(x, 0, _gen(0)), x)
    assert torch.equal(cutout(x, 20, _gen(0)), torch.zeros_like(x))
    assert torch.equal(cutout(x, 4, _gen(9)), cutout(x, 4, _gen(9)))


@SETTINGS
@given(seed=seeds, size=st.integers(1, 9), height=st.integers(1, 10), width=st.integers(1, 10))
def test_cutout_area_matches_clipped_square(seed: int, size: int, height: int, width: int) -> None:
    out = cutout(torch.ones(5, 1, height, width), size, _gen(seed))
    zeroed = _zeroed(out)
    for mask in zeroed:
        assert _is_one_rectangle(mask)
        rows = mask.any(dim=1).sum().item()
        cols = mask.any(dim=0).sum().item()
        assert rows <= min(size, height) and cols <= min(size, width)
        assert rows >= min(size - size // 2, height) and cols >= min(size - size // 2, width)


# --- random erasing ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scale", "ratio"), [((0.02, 0.33), (0.3, 3.3)), ((0.1, 0.2), (0.5, 2.0)), ((0.5, 1.0), (1, 1))]
)
def test_random_erasing_area_within_scale(scale: tuple[float, float], ratio: tuple[float, float]) -> None:
    batch, side = 600, 32
    x = torch.ones(batch, 3, side, side)
    out = random_erasing(x, scale=scale, ratio=ratio, p=0.5, generator=_gen(2))
    zeroed = _zeroed(out)
    erased = zeroed.flatten(1).any(dim=1)
    n_erased = int(erased.sum())
    assert abs(n_erased - batch / 2) < 5 * math.sqrt(batch / 4)
    fractions = []
    for mask in zeroed[erased]:
        assert _is_one_rectangle(mask)
        fraction = mask.sum().item() / side**2
        assert scale[0] <= fraction <= scale[1]
        fractions.append(fraction)
        h, w = mask.any(dim=1).sum().item(), mask.any(dim=0).sum().item()
        assert ratio[0] / 1.5 <= h / w <= ratio[1] * 1.5
    assert max(fractions) - min(fractions) > 0.3 * (scale[1] - scale[0])
    assert torch.equal(out[~erased], x[~erased])


def test_random_erasing_probability_extremes() -> None:
    x = torch.ones(200, 1, 16, 16)
    assert torch.equal(random_erasing(x, p=0.0, generator=_gen(0)), x)
    always = _zeroed(random_erasing(x, p=1.0, generator=_gen(0)))
    assert bool(always.flatten(1).any(dim=1).all())
    # a rectangle that can never fit leaves every image unchanged
    assert torch.equal(random_erasing(x, scale=(0.5, 0.5), ratio=(50.0, 60.0), p=1.0, generator=_gen(0)), x)
    assert torch.equal(random_erasing(x, p=0.7, generator=_gen(4)), random_erasing(x, p=0.7, generator=_gen(4)))


# --- BatchMixing ------------------------------------------------------------------------------
@SETTINGS
@given(
    seed=seeds,
    mixup_alpha=st.sampled_from([0.0, 0.2, 1.0]),
    cutmix_alpha=st.sampled_from([0.0, 1.0]),
    cutout_size=st.integers(0, 4),
    erasing_p=st.sampled_from([0.0, 0.5, 1.0]),
    smoothing=st.sampled_from([0.0, 0.1, 0.5]),
)
def test_batch_mixing_targets_sum_to_one(
    seed: int, mixup_alpha: float, cutmix_alpha: float, cutout_size: int, erasing_p: float, smoothing: float
) -> None:
    mixing = BatchMixing(7, mixup_alpha, cutmix_alpha, cutout_size, erasing_p, smoothing)
    gen = _gen(seed)
    x = torch.randn(5, 3, 8, 8, generator=gen)
    y = torch.randint(0, 7, (5,), generator=gen)
    x_before = x.clone()
    out, targets = mixing(x, y, gen)
    assert torch.equal(x, x_before)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert targets.shape == (5, 7) and targets.dtype == x.dtype
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(5))
    assert bool((targets >= 0).all())
    if mixing.is_identity:
        assert out is x
        torch.testing.assert_close(targets, F.one_hot(y, 7).float())


def test_batch_mixing_chooses_mixup_or_cutmix_evenly() -> None:
    """MixUp keeps every constant image constant; CutMix pastes a box, so some image is not constant."""
    mixing = BatchMixing(n_classes=4, mixup_alpha=1.0, cutmix_alpha=1.0)
    x = _constant_batch(4, 1, 8, 8)
    y = torch.arange(4)
    gen = _gen(0)
    chose_cutmix = []
    for _ in range(200):
        out, targets = mixing(x, y, gen)
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(4, dtype=F64))
        if torch.equal(out, x):
            continue  # empty box or identity permutation: cannot tell which was used
        flat = out.flatten(1)
        chose_cutmix.append(bool((flat != flat[:, :1]).any()))
    assert len(chose_cutmix) > 150
    assert abs(sum(chose_cutmix) - len(chose_cutmix) / 2) < 5 * math.sqrt(len(chose_cutmix) / 4)


def test_batch_mixing_reproducible_and_identity() -> None:
    mixing = BatchMixing(10, mixup_alpha=0.3, cutmix_alpha=1.0, cutout_size=3, erasing_p=0.5, label_smoothing=0.1)
    assert not mixing.is_identity
    x = torch.randn(8, 3, 12, 12, generator=_gen(0))
    y = torch.randint(0, 10, (8,), generator=_gen(1))
    a = mixing(x, y, _gen(42))
    b = mixing(x, y, _gen(42))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    identity = BatchMixing(10)
    assert identity.is_identity
    out, targets = identity(x, y)
    assert out is x
    assert torch.equal(targets, F.one_hot(y, 10).float())
    assert not BatchMixing(10, label_smoothing=0.1).is_identity
    assert not BatchMixing(10, cutout_size=1).is_identity


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batch_mixing_on_cuda_with_cpu_generator_matches_cpu() -> None:
    mixing = BatchMixing(10, mixup_alpha=0.3, cutmix_alpha=1.0, cutout_size=3, erasing_p=0.5, label_smoothing=0.1)
    x = torch.randn(16, 3, 12, 12, generator=_gen(0))
    y = torch.randint(0, 10, (16,), generator=_gen(1))
    for seed in range(10):
        cpu = mixing(x, y, _gen(seed))
        cuda = mixing(x.cuda(), y.cuda(), _gen(seed))
        assert cuda[0].is_cuda and cuda[1].is_cuda
        torch.testing.assert_close(cuda[0].cpu(), cpu[0])
        torch.testing.assert_close(cuda[1].cpu(), cpu[1])
    cuda_gen = torch.Generator(device="cuda").manual_seed(0)
    out, targets = mixing(x.cuda(), y.cuda(), cuda_gen)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(16, device="cuda"))
    torch.manual_seed(0)
    out, targets = mixing(x.cuda(), y.cuda())
    assert out.is_cuda


# --- bad input --------------------------------------------------------------------------------
X = torch.zeros(4, 3, 8, 8)
T = torch.full((4, 5), 0.2)
Y = torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (
            lambda: mixup(torch.zeros(3, 8, 8), T, 1.0),
            r"images x must have shape \(B, C, H, W\), got shape \(3, 8, 8\)",
        ),
        (lambda: cutmix(torch.zeros(1, 4, 3, 8, 8), T, 1.0), r"got shape \(1, 4, 3, 8, 8\)"),
        (lambda: cutout(torch.zeros(8, 8), 2), r"got shape \(8, 8\)"),
        (lambda: random_erasing(torch.zeros(3, 8, 8)), r"got shape \(3, 8, 8\)"),
        (lambda: mixup(X.long(), T, 1.0), "images x must be a floating-point tensor, got a torch.int64"),
        (lambda: mixup(X, T, -0.5), "mixup alpha must be a positive finite number, got -0.5"),
        (lambda: mixup(X, T, 0.0), "mixup alpha"),
        (lambda: cutmix(X, T, -1.0), "cutmix alpha must be a positive finite number, got -1.0"),
        (lambda: cutmix(X, T, math.nan), "cutmix alpha"),
        (lambda: sample_beta(0.0), "Beta alpha"),
        (lambda: mixup(X, T[:3], 1.0), "the batch has 4 images but 3 target rows"),
        (lambda: cutmix(X, T[:, None], 1.0), r"soft targets must have shape \(B, K\), got shape \(4, 1, 5\)"),
        (lambda: mixup(X, Y, 1.0), "soft targets must be a floating-point tensor"),
        (lambda: cutout(X, -1), "cutout size must be an integer >= 0, got -1"),
        (lambda: cutout(X, 2.5), "cutout size must be an integer >= 0, got 2.5"),  # type: ignore[arg-type]
        (lambda: cutout(X, True), "cutout size must be an integer >= 0, got True"),
        (lambda: random_erasing(X, p=1.5), r"erasing probability must be in \[0, 1\], got 1.5"),
        (lambda: random_erasing(X, p=-0.1), "erasing probability"),
        (lambda: random_erasing(X, scale=(0.3, 0.1)), r"erasing scale must have low <= high, got \(0.3, 0.1\)"),
        (lambda: random_erasing(X, scale=(0.1, 1.5)), r"erasing scale must lie in \(0, 1.0\]"),
        (lambda: random_erasing(X, scale=(0.0, 0.5)), "erasing scale low must be a positive finite number, got 0.0"),
        (lambda: random_erasing(X, ratio=(2.0, 1.0)), "erasing ratio must have low <= high"),
        (lambda: random_erasing(X, ratio=(1.0,)), r"erasing ratio must be a pair \(low, high\)"),  # type: ignore[arg-type]
        (lambda: one_hot_targets(Y, 4, 1.0), r"label smoothing must be in \[0, 1\), got 1.0"),
        (lambda: one_hot_targets(Y, 4, -0.1), "label smoothing must be a finite number >= 0, got -0.1"),
        (lambda: one_hot_targets(Y, 3), r"labels must be class indices in \[0, 3\), got 3"),
        (lambda: one_hot_targets(Y - 1, 4), r"labels must be class indices in \[0, 4\), got -1"),
        (lambda: one_hot_targets(Y.float(), 4), "labels y must be an int64 tensor of class indices"),
        (lambda: one_hot_targets(Y[None], 4), r"labels y must have shape \(B,\), got shape \(1, 4\)"),
        (lambda: one_hot_targets(Y, 0), "n_classes must be a positive integer, got 0"),
        (lambda: one_hot_targets(Y, 4, dtype=torch.int64), "target dtype must be floating point"),
        (lambda: soft_cross_entropy(torch.zeros(4), Y), r"logits must have shape \(B, K\), got shape \(4,\)"),
        (lambda: soft_cross_entropy(torch.zeros(4, 5), T[:3]), r"logits' shape \(4, 5\), got shape \(3, 5\)"),
        (lambda: soft_cross_entropy(torch.zeros(3, 5), Y), "logits have 3 rows but there are 4 labels"),
        (lambda: soft_cross_entropy(torch.zeros(4, 3), Y), r"class indices in \[0, 3\), got 3"),
        (lambda: BatchMixing(4)(X, Y[:3]), "the batch has 4 images but 3 labels"),
        (lambda: BatchMixing(4)(X[0], Y), r"got shape \(3, 8, 8\)"),
    ],
)
def test_bad_arguments_raise(call: Callable[[], object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        call()


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"n_classes": 0}, "n_classes must be a positive integer, got 0"),
        ({"n_classes": 2.5}, "n_classes must be a positive integer, got 2.5"),
        ({"n_classes": 4, "mixup_alpha": -0.1}, "mixup alpha must be a finite number >= 0, got -0.1"),
        ({"n_classes": 4, "cutmix_alpha": math.inf}, "cutmix alpha must be a finite number >= 0, got inf"),
        ({"n_classes": 4, "cutout_size": -2}, "cutout size must be an integer >= 0, got -2"),
        ({"n_classes": 4, "cutout_size": 1.5}, "cutout size must be an integer >= 0, got 1.5"),
        ({"n_classes": 4, "erasing_p": 1.01}, r"erasing probability must be in \[0, 1\], got 1.01"),
        ({"n_classes": 4, "erasing_p": -0.5}, "erasing probability must be a finite number >= 0, got -0.5"),
        ({"n_classes": 4, "label_smoothing": 1.0}, r"label smoothing must be in \[0, 1\), got 1.0"),
        ({"n_classes": 4, "label_smoothing": math.nan}, "label smoothing must be a finite number >= 0, got nan"),
    ],
)
def test_batch_mixing_bad_fields_raise(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        BatchMixing(**kwargs)  # type: ignore[arg-type]


def test_batch_mixing_fields_normalised() -> None:
    mixing = BatchMixing(4.0, mixup_alpha=1, erasing_p=1)  # type: ignore[arg-type]
    assert mixing.n_classes == 4 and isinstance(mixing.n_classes, int)
    assert isinstance(mixing.mixup_alpha, float) and isinstance(mixing.erasing_p, float)

"""Batch-level label-mixing augmentations for image batches: MixUp, CutMix, Cutout and Random Erasing.

Shapes: images ``x`` are ``(B, C, H, W)`` floating point, labels ``y`` are ``(B,)`` int64 class
indices, and soft targets are ``(B, K)`` floating point with every row summing to 1. Each function
treats the whole batch at once on ``x``'s device (masks are built from ``arange`` comparisons;
there is no Python loop over images) and returns new tensors: inputs are never modified.

Randomness comes from ``generator`` when one is given (a ``torch.Generator`` on any device: draws
are made on its device and moved to ``x``'s, so a CPU generator reproduces a run on any device),
otherwise from torch's global RNG (so ``torch.manual_seed`` reproduces it).

Typical use in a training step::

    mixing = BatchMixing(n_classes=10, mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1)
    x_aug, targets = mixing(x, y, generator)
    loss = soft_cross_entropy(model(x_aug), targets)     # nats per example
"""

from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import nonnegative_finite, positive_finite, positive_int

__all__ = [
    "BatchMixing",
    "cutmix",
    "cutout",
    "mixup",
    "one_hot_targets",
    "random_erasing",
    "sample_beta",
    "soft_cross_entropy",
]

#: Attempts per image at drawing an erasing rectangle that fits (as torchvision's RandomErasing).
_ERASING_ATTEMPTS = 10


# --- argument checks ------------------------------------------------------------------------
def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _check_images(x: object) -> tuple[int, int, int, int]:
    """``(B, C, H, W)`` of a floating-point image batch, else ConfigError."""
    if not isinstance(x, Tensor) or not torch.is_floating_point(x):
        raise ConfigError(f"images x must be a floating-point tensor, got {_describe(x)}")
    if x.ndim != 4:
        raise ConfigError(f"images x must have shape (B, C, H, W), got shape {tuple(x.shape)}")
    batch, channels, height, width = (int(n) for n in x.shape)
    return batch, channels, height, width


def _check_targets(targets: object, batch: int) -> Tensor:
    """``targets`` if it is a floating-point ``(batch, K)`` tensor, else ConfigError."""
    if not isinstance(targets, Tensor) or not torch.is_floating_point(targets):
        raise ConfigError(f"soft targets must be a floating-point tensor, got {_describe(targets)}")
    if targets.ndim != 2:
        raise ConfigError(f"soft targets must have shape (B, K), got shape {tuple(targets.shape)}")
    if targets.shape[0] != batch:
        raise ConfigError(f"the batch has {batch} images but {targets.shape[0]} target rows")
    return targets


def _check_labels(y: object, n_classes: int, check_range: bool = True) -> Tensor:
    """``y`` if it is an int64 ``(B,)`` tensor of class indices in ``[0, n_classes)``, else ConfigError.

    ``check_range=False`` skips the value check, which reads the labels back to the host (a
    device synchronisation); the training loop's labels are checked once, up front, instead.
    """
    if not isinstance(y, Tensor) or y.dtype != torch.int64:
        raise ConfigError(f"labels y must be an int64 tensor of class indices, got {_describe(y)}")
    if y.ndim != 1:
        raise ConfigError(f"labels y must have shape (B,), got shape {tuple(y.shape)}")
    if check_range and y.numel() > 0:
        low, high = (int(v) for v in torch.stack(torch.aminmax(y)).tolist())
        if low < 0 or high >= n_classes:
            bad = low if low < 0 else high
            raise ConfigError(f"labels must be class indices in [0, {n_classes}), got {bad}")
    return y


def _nonnegative_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise ConfigError(f"{what} must be an integer >= 0, got {value!r}")
    return int(value)


def _probability(value: object, what: str) -> float:
    number = nonnegative_finite(value, what)
    if number > 1:
        raise ConfigError(f"{what} must be in [0, 1], got {value!r}")
    return number


def _smoothing(value: object) -> float:
    number = nonnegative_finite(value, "label smoothing")
    if number >= 1:
        raise ConfigError(f"label smoothing must be in [0, 1), got {value!r}")
    return number


def _range_pair(value: object, what: str, upper: float | None) -> tuple[float, float]:
    """``(low, high)`` with ``0 < low <= high`` (``<= upper`` when given), else ConfigError."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(f"{what} must be a pair (low, high), got {value!r}")
    low = positive_finite(value[0], f"{what} low")
    high = positive_finite(value[1], f"{what} high")
    if low > high:
        raise ConfigError(f"{what} must have low <= high, got {value!r}")
    if upper is not None and high > upper:
        raise ConfigError(f"{what} must lie in (0, {upper}], got {value!r}")
    return low, high


# --- random draws ---------------------------------------------------------------------------
def _draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Float32 uniforms in ``[0, 1)`` of ``shape`` on ``device``."""
    draw = torch.rand(shape, generator=generator, device=_draw_device(generator, device), dtype=torch.float32)
    return draw.to(device)


def _randint(high: int, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Int64 integers uniform in ``[0, high)`` of ``shape`` on ``device``."""
    return torch.randint(0, high, shape, generator=generator, device=_draw_device(generator, device)).to(device)


def _randperm(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.randperm(n, generator=generator, device=_draw_device(generator, device)).to(device)


def _host_randint(high: int, generator: torch.Generator | None) -> int:
    """One integer uniform in ``[0, high)``; drawn on the CPU unless ``generator`` lives elsewhere."""
    device = generator.device if generator is not None else torch.device("cpu")
    return int(torch.randint(0, high, (1,), generator=generator, device=device).item())


def sample_beta(alpha: float, generator: torch.Generator | None = None) -> float:
    """One draw of ``lam ~ Beta(alpha, alpha)``, reproducible from ``generator``.

    ``torch.distributions.Beta`` cannot take a generator, so a 62-bit seed is drawn from
    ``generator`` (or torch's global RNG) and the variate comes from the standard library's
    exact ``random.Random(seed).betavariate`` (two Gamma draws, ``G1 / (G1 + G2)``).

    Args:
        alpha: both concentration parameters, finite, > 0.
        generator: source of randomness; ``None`` uses torch's global CPU RNG.

    Returns:
        ``lam`` in ``[0, 1]``, with mean 1/2 and variance ``1 / (4 (2 alpha + 1))``.
    """
    alpha = positive_finite(alpha, "Beta alpha")
    return random.Random(_host_randint(2**62, generator)).betavariate(alpha, alpha)


# --- targets and loss -----------------------------------------------------------------------
def one_hot_targets(
    y: Tensor,
    n_classes: int,
    label_smoothing: float = 0.0,
    *,
    dtype: torch.dtype | None = None,
    check_range: bool = True,
) -> Tensor:
    """Soft targets ``(1 - eps) * onehot(y) + eps / K``, rows summing to 1.

    Args:
        y: int64 class indices in ``[0, K)``, shape ``(B,)``.
        n_classes: ``K``, a positive integer.
        label_smoothing: ``eps`` in ``[0, 1)``.
        dtype: floating dtype of the result; ``None`` means torch's default dtype.
        check_range: verify ``0 <= y < K`` (one host synchronisation on a GPU).

    Returns:
        ``(B, K)`` tensor on ``y``'s device.
    """
    n_classes = positive_int(n_classes, "n_classes")
    eps = _smoothing(label_smoothing)
    y = _check_labels(y, n_classes, check_range)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not dtype.is_floating_point:
        raise ConfigError(f"target dtype must be floating point, got {dtype}")
    targets = torch.full((int(y.shape[0]), n_classes), eps / n_classes, dtype=dtype, device=y.device)
    return targets.scatter_(1, y[:, None], 1.0 - eps + eps / n_classes)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over the batch of ``-sum_k targets_k * log_softmax(logits)_k``, in nats per example.

    Args:
        logits: unnormalised class scores, shape ``(B, K)``, floating point.
        targets: soft targets of shape ``(B, K)`` (rows summing to 1), or int64 class indices of
            shape ``(B,)`` (then this is plain ``F.cross_entropy``).

    Returns:
        0-d tensor.
    """
    if not isinstance(logits, Tensor) or not torch.is_floating_point(logits):
        raise ConfigError(f"logits must be a floating-point tensor, got {_describe(logits)}")
    if logits.ndim != 2:
        raise ConfigError(f"logits must have shape (B, K), got shape {tuple(logits.shape)}")
    if not isinstance(targets, Tensor):
        raise ConfigError(f"targets must be a tensor, got {_describe(targets)}")
    if not torch.is_floating_point(targets):
        labels = _check_labels(targets, int(logits.shape[1]))
        if labels.shape[0] != logits.shape[0]:
            raise ConfigError(f"logits have {logits.shape[0]} rows but there are {labels.shape[0]} labels")
        return F.cross_entropy(logits, labels)
    if targets.shape != logits.shape:
        raise ConfigError(
            f"soft targets must have the logits' shape {tuple(logits.shape)}, got shape {tuple(targets.shape)}"
        )
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


# --- batch mixing ---------------------------------------------------------------------------
def mixup(
    x: Tensor, targets: Tensor, alpha: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, float]:
    """MixUp (Zhang et al. 2018): blend every example with a random partner from the batch.

    Draws ``lam ~ Beta(alpha, alpha)`` (:func:`sample_beta`) and a random permutation ``perm`` of
    the batch, in that order.

    Args:
        x: images, shape ``(B, C, H, W)``.
        targets: soft targets, shape ``(B, K)``.
        alpha: Beta concentration, finite, > 0.
        generator: source of randomness (see the module docstring).

    Returns:
        ``(lam * x + (1 - lam) * x[perm], lam * targets + (1 - lam) * targets[perm], lam)``.
    """
    batch = _check_images(x)[0]
    targets = _check_targets(targets, batch)
    alpha = positive_finite(alpha, "mixup alpha")
    lam = sample_beta(alpha, generator)
    perm = _randperm(batch, generator, x.device)
    mixed_x = lam * x + (1.0 - lam) * x[perm]
    mixed_targets = lam * targets + (1.0 - lam) * targets[perm.to(targets.device)]
    return mixed_x, mixed_targets, lam


def cutmix(
    x: Tensor, targets: Tensor, alpha: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, float]:
    """CutMix (Yun et al. 2019): paste a box from a random partner into every example.

    Draws ``lam ~ Beta(alpha, alpha)``, a permutation ``perm``, and a box of side
    ``floor(sqrt(1 - lam) * H) x floor(sqrt(1 - lam) * W)`` centred at a uniformly random pixel,
    clipped to the image. As in the paper's reference code, the *same* box is used for the whole
    batch. The returned ``lam`` is corrected to ``1 - box_area / (H * W)``, the exact fraction of
    each image's pixels that are its own, so the targets match the pixels.

    Args:
        x: images, shape ``(B, C, H, W)``.
        targets: soft targets, shape ``(B, K)``.
        alpha: Beta concentration, finite, > 0.
        generator: source of randomness (see the module docstring).

    Returns:
        ``(mixed x, lam * targets + (1 - lam) * targets[perm], lam)``; ``lam`` is 1 when the box is empty.
    """
    batch, _, height, width = _check_images(x)
    targets = _check_targets(targets, batch)
    alpha = positive_finite(alpha, "cutmix alpha")
    lam = sample_beta(alpha, generator)
    perm = _randperm(batch, generator, x.device)
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    centre_y, centre_x = _host_randint(height, generator), _host_randint(width, generator)
    top = min(max(centre_y - cut_h // 2, 0), height)
    bottom = min(max(centre_y - cut_h // 2 + cut_h, 0), height)
    left = min(max(centre_x - cut_w // 2, 0), width)
    right = min(max(centre_x - cut_w // 2 + cut_w, 0), width)
    mixed_x = x.clone()
    mixed_x[:, :, top:bottom, left:right] = x[perm, :, top:bottom, left:right]
    lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    mixed_targets = lam * targets + (1.0 - lam) * targets[perm.to(targets.device)]
    return mixed_x, mixed_targets, lam


def _box_mask(top: Tensor, bottom: Tensor, left: Tensor, right: Tensor, height: int, width: int) -> Tensor:
    """``(B, H, W)`` bool mask, true on rows ``[top_b, bottom_b)`` and columns ``[left_b, right_b)``."""
    rows = torch.arange(height, device=top.device)
    cols = torch.arange(width, device=top.device)
    in_rows = (rows >= top[:, None]) & (rows < bottom[:, None])
    in_cols = (cols >= left[:, None]) & (cols < right[:, None])
    return in_rows[:, :, None] & in_cols[:, None, :]


def cutout(x: Tensor, size: int, generator: torch.Generator | None = None) -> Tensor:
    """Cutout (DeVries & Taylor 2017): zero a ``size x size`` square in every image.

    Each image gets an independent centre, uniform over its pixels; the square covers rows
    ``[cy - size // 2, cy - size // 2 + size)`` (likewise columns), clipped to the image, so it
    zeroes exactly ``size^2`` pixels per channel when it fits and fewer near the border.

    Args:
        x: images, shape ``(B, C, H, W)``.
        size: side of the square in pixels, an integer >= 0 (0 changes nothing).
        generator: source of randomness (see the module docstring).

    Returns:
        New ``(B, C, H, W)`` tensor, all channels zeroed inside the square.
    """
    batch, _, height, width = _check_images(x)
    size = _nonnegative_int(size, "cutout size")
    if size == 0 or batch == 0:
        return x.clone()
    centre_y = _randint(height, (batch,), generator, x.device)
    centre_x = _randint(width, (batch,), generator, x.device)
    top = (centre_y - size // 2).clamp(min=0)
    bottom = (centre_y - size // 2 + size).clamp(max=height)
    left = (centre_x - size // 2).clamp(min=0)
    right = (centre_x - size // 2 + size).clamp(max=width)
    mask = _box_mask(top, bottom, left, right, height, width)
    return x.masked_fill(mask[:, None], 0.0)


def random_erasing(
    x: Tensor,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random Erasing (Zhong et al. 2020): with probability ``p``, zero a random rectangle per image.

    Per image, up to 10 candidate rectangles are drawn at once (area fraction uniform in
    ``scale``, aspect ``h / w`` log-uniform in ``ratio``, sides rounded to whole pixels); the first
    that fits in the image *and* whose rounded area fraction still lies in ``scale`` is used, at a
    uniformly random position. An image with no such candidate is left unchanged. The fill is 0,
    which for inputs normalised per channel is the dataset mean.

    Args:
        x: images, shape ``(B, C, H, W)``.
        scale: ``(low, high)`` erased fraction of the image area, ``0 < low <= high <= 1``.
        ratio: ``(low, high)`` aspect ratio height / width, ``0 < low <= high``.
        p: probability of erasing each image, in ``[0, 1]``.
        generator: source of randomness (see the module docstring).

    Returns:
        New ``(B, C, H, W)`` tensor, all channels zeroed inside each image's rectangle.
    """
    batch, _, height, width = _check_images(x)
    scale_low, scale_high = _range_pair(scale, "erasing scale", upper=1.0)
    ratio_low, ratio_high = _range_pair(ratio, "erasing ratio", upper=None)
    p = _probability(p, "erasing probability")
    if batch == 0 or p == 0:
        return x.clone()
    area = height * width
    tries = _ERASING_ATTEMPTS
    draws = _uniform((batch, 2 * tries + 3), generator, x.device)
    fraction = scale_low + (scale_high - scale_low) * draws[:, :tries]
    log_ratio = math.log(ratio_low) + (math.log(ratio_high) - math.log(ratio_low)) * draws[:, tries : 2 * tries]
    aspect = torch.exp(log_ratio)
    erase_h = torch.round(torch.sqrt(fraction * area * aspect)).long()
    erase_w = torch.round(torch.sqrt(fraction * area / aspect)).long()
    erased = erase_h * erase_w
    fits = (erase_h >= 1) & (erase_w >= 1) & (erase_h <= height) & (erase_w <= width)
    fits &= (erased >= math.ceil(scale_low * area - 1e-9)) & (erased <= math.floor(scale_high * area + 1e-9))
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)  # index of the first fitting candidate
    apply = (draws[:, -3] < p) & fits.any(dim=1)
    box_h = torch.where(apply, erase_h.gather(1, first).squeeze(1), 0)
    box_w = torch.where(apply, erase_w.gather(1, first).squeeze(1), 0)
    top = torch.minimum((draws[:, -2] * (height - box_h + 1)).floor().long(), height - box_h)
    left = torch.minimum((draws[:, -1] * (width - box_w + 1)).floor().long(), width - box_w)
    mask = _box_mask(top, top + box_h, left, left + box_w, height, width)
    return x.masked_fill(mask[:, None], 0.0)


@dataclass(frozen=True)
class BatchMixing:
    """A per-batch augmentation recipe: Cutout and Random Erasing, then MixUp or CutMix, with label smoothing.

    Order inside :meth:`__call__` (as timm, where erasing is a per-image transform applied before
    the batch-level mix): one-hot targets with ``label_smoothing``; Cutout (``cutout_size > 0``);
    Random Erasing (``erasing_p > 0``, default scale and ratio); then MixUp or CutMix. When both
    alphas are > 0, one of the two is chosen per batch with probability 1/2 each.

    Attributes:
        n_classes: ``K``, a positive integer.
        mixup_alpha: MixUp's Beta concentration, finite, >= 0 (0 switches it off).
        cutmix_alpha: CutMix's Beta concentration, finite, >= 0 (0 switches it off).
        cutout_size: Cutout square side in pixels, integer >= 0 (0 switches it off).
        erasing_p: per-image Random Erasing probability in ``[0, 1]`` (0 switches it off).
        label_smoothing: ``eps`` in ``[0, 1)``.
    """

    n_classes: int
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    cutout_size: int = 0
    erasing_p: float = 0.0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_classes", positive_int(self.n_classes, "n_classes"))
        object.__setattr__(self, "mixup_alpha", nonnegative_finite(self.mixup_alpha, "mixup alpha"))
        object.__setattr__(self, "cutmix_alpha", nonnegative_finite(self.cutmix_alpha, "cutmix alpha"))
        object.__setattr__(self, "cutout_size", _nonnegative_int(self.cutout_size, "cutout size"))
        object.__setattr__(self, "erasing_p", _probability(self.erasing_p, "erasing probability"))
        object.__setattr__(self, "label_smoothing", _smoothing(self.label_smoothing))

    @property
    def is_identity(self) -> bool:
        """True when every augmentation is switched off: the call returns ``x`` and one-hot targets."""
        return (
            self.mixup_alpha == 0
            and self.cutmix_alpha == 0
            and self.cutout_size == 0
            and self.erasing_p == 0
            and self.label_smoothing == 0
        )

    def __call__(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Augment one batch.

        Args:
            x: images, shape ``(B, C, H, W)``, floating point.
            y: int64 class indices in ``[0, n_classes)``, shape ``(B,)``; their range is not
                re-checked here (that would synchronise with the GPU every step).
            generator: source of randomness (see the module docstring).

        Returns:
            ``(augmented x, soft targets)`` of shapes ``(B, C, H, W)`` and ``(B, K)`` (``x``'s dtype,
            rows summing to 1). ``x`` itself is returned, unmodified, when no image augmentation is on.
        """
        batch = _check_images(x)[0]
        targets = one_hot_targets(y, self.n_classes, self.label_smoothing, dtype=x.dtype, check_range=False)
        if targets.shape[0] != batch:
            raise ConfigError(f"the batch has {batch} images but {targets.shape[0]} labels")
        targets = targets.to(x.device)
        if self.cutout_size > 0:
            x = cutout(x, self.cutout_size, generator)
        if self.erasing_p > 0:
            x = random_erasing(x, p=self.erasing_p, generator=generator)
        use_mixup, use_cutmix = self.mixup_alpha > 0, self.cutmix_alpha > 0
        if use_mixup and use_cutmix:
            use_mixup = _host_randint(2, generator) == 0
            use_cutmix = not use_mixup
        if use_mixup:
            x, targets, _ = mixup(x, targets, self.mixup_alpha, generator)
        elif use_cutmix:
            x, targets, _ = cutmix(x, targets, self.cutmix_alpha, generator)
        return x, targets

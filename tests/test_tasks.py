"""Tests for :mod:`optuna_deelbo.task._builtin` and SWAG collection in :func:`optuna_deelbo.data.pretrain`.

The Split-CIFAR tests read the real CIFAR-10 (JPEG) archives from ``../shared/data`` (skipped
when absent). Decoding them takes ~13 s, so one cache directory is shared by the whole module
and the first :func:`split_cifar_task` call is made once (:func:`cifar_first`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import CIFAR_DATA_DIR
from torch import Tensor, nn

import optuna_deelbo.task._builtin as tasks_module
import optuna_deelbo.task._pretrain as pretrain_module
from optuna_deelbo._errors import ConfigError
from optuna_deelbo.bayes._posterior import ParameterGroups
from optuna_deelbo.bayes._priors import IsotropicGaussian, LowRankGaussian
from optuna_deelbo.data._cifar import load_cifar10_jpeg, split_classes
from optuna_deelbo.data._splits import Split
from optuna_deelbo.models._small_cnn import SmallCNN
from optuna_deelbo.task._builtin import digits_task, split_cifar_task
from optuna_deelbo.task._pretrain import Pretrained, pretrain
from optuna_deelbo.task._spec import TaskSpec
from optuna_deelbo.tuning._fit import fit_deelbo

DATA_DIR = CIFAR_DATA_DIR
HAS_CIFAR = all((DATA_DIR / f"cifar10-{s}-jpeg.tar.xz").is_file() for s in ("train", "test"))
requires_cifar = pytest.mark.skipif(not HAS_CIFAR, reason=f"CIFAR-10 JPEG archives not found in {DATA_DIR}")


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _body(task: TaskSpec, model: nn.Module) -> Tensor:
    """The flat body weights of ``model`` under ``task``'s head split (detached copy)."""
    return task.groups(model).flat(dict(model.named_parameters()), "body").detach().clone()


def _capture_pretrain(monkeypatch: pytest.MonkeyPatch) -> list[Pretrained]:
    """Make ``tasks.pretrain`` record what it returns; the list fills as tasks are built."""
    captured: list[Pretrained] = []
    real = tasks_module.pretrain

    def recording(*args: Any, **kwargs: Any) -> Pretrained:
        done = real(*args, **kwargs)
        captured.append(done)
        return done

    monkeypatch.setattr(tasks_module, "pretrain", recording)
    return captured


def _last_row_variances(history: list[dict[str, float]]) -> tuple[float, float]:
    assert history, "training logged no rows"
    last = history[-1]
    return last["lambda"], last["tau"]


# --- digits_task -------------------------------------------------------------------------------


def test_digits_ptyl_prior_is_the_swag_low_rank_gaussian(monkeypatch: pytest.MonkeyPatch) -> None:
    captured = _capture_pretrain(monkeypatch)
    task, seconds = digits_task(n_train=50, steps=10, pretrain_steps=40, prior="ptyl", progress=False)
    assert len(captured) == 1 and captured[0].swag is not None
    swag = captured[0].swag
    assert seconds > 0
    assert task.prior == "ptyl"
    assert task.n_train == 50

    model = task.build_model()
    dim = task.groups(model).numel(model, "body")
    assert swag.dim == dim
    assert task.prior_covariance is not None
    diagonal, factor = task.prior_covariance
    assert diagonal.shape == (dim,)
    assert factor.ndim == 2 and factor.shape[0] == dim
    assert 2 <= factor.shape[1] <= 10
    assert factor.shape[1] == swag.rank
    assert bool((diagonal > 0).all())

    prior = task.body_prior(model)
    assert isinstance(prior, LowRankGaussian)
    assert torch.equal(prior.mean, swag.mean)
    want_diagonal, want_factor = swag.covariance_factors(scale=swag.unit_trace_scale())
    assert torch.equal(prior.diagonal, want_diagonal)
    assert torch.equal(prior.factor, want_factor)
    # scaled to a mean prior variance of 1 (at lam = 1), so MAP weight decays mean what they do for l2-sp
    trace = float(prior.diagonal.double().sum() + (prior.factor.double() ** 2).sum())
    assert trace / dim == pytest.approx(1.0, rel=1e-5)
    raw_diagonal, _ = swag.covariance_factors()
    assert float(raw_diagonal.double().mean()) < 1e-2  # SWAG's own scale is far from 1
    # PTYL centres on the SWA average, not on the last pretraining iterate (the l2-sp mean).
    assert not torch.allclose(prior.mean, _body(task, model))

    objective, result = fit_deelbo(task, 0.01)
    assert isinstance(objective.body_prior, LowRankGaussian)
    lam, tau = _last_row_variances(result.history)
    assert math.isfinite(lam) and lam > 0
    assert math.isfinite(tau) and tau > 0


def test_digits_l2_sp_prior_mean_is_the_pretrained_body(monkeypatch: pytest.MonkeyPatch) -> None:
    captured = _capture_pretrain(monkeypatch)
    task, _ = digits_task(n_train=50, steps=10, pretrain_steps=20, prior="l2-sp", progress=False)
    assert len(captured) == 1
    assert captured[0].swag is None, "l2-sp must not collect SWAG moments"
    assert task.prior_mean is None and task.prior_covariance is None

    model = task.build_model()
    prior = task.body_prior(model)
    assert isinstance(prior, IsotropicGaussian)
    pretrained = captured[0].model
    pretrained_body = ParameterGroups.split(pretrained, ("head.",)).flat(dict(pretrained.named_parameters()), "body")
    assert torch.equal(prior.mean, pretrained_body.detach())
    assert torch.equal(prior.mean, _body(task, model))
    assert prior.mean.abs().sum() > 0

    # The factory gives a fresh 5-class head each time, seeded, on the same body.
    other = task.build_model()
    assert isinstance(other, SmallCNN) and other.head.out_features == 5
    assert torch.equal(other.head.weight, model.head.weight)
    assert other is not model and other.head is not pretrained.head


def test_digits_l2_zero_prior_mean_is_zero() -> None:
    task, _ = digits_task(n_train=50, steps=10, pretrain_steps=20, prior="l2-zero", progress=False)
    model = task.build_model()
    prior = task.body_prior(model)
    assert isinstance(prior, IsotropicGaussian)
    assert prior.mean.shape == (task.groups(model).numel(model, "body"),)
    assert torch.count_nonzero(prior.mean) == 0
    assert _body(task, model).abs().sum() > 0  # the model itself still holds pretrained weights


def test_digits_ptyl_without_swag_raises() -> None:
    with pytest.raises(ConfigError, match="SWAG"):
        digits_task(n_train=50, steps=10, pretrain_steps=20, prior="ptyl", swag_rank=0)


# --- pretrain with SWAG collection -------------------------------------------------------------


def _tiny_source(seed: int = 0) -> Split:
    gen = torch.Generator().manual_seed(seed)
    return Split(torch.randn(60, 1, 8, 8, generator=gen), torch.randint(0, 3, (60,), generator=gen))


def _recording_train(monkeypatch: pytest.MonkeyPatch) -> dict[int, Tensor]:
    """Make ``_pretrain.train_model`` record the flat body weights after every step (after SWAG's own hook)."""
    snapshots: dict[int, Tensor] = {}
    real = pretrain_module.train_model

    def recording(objective: Any, *args: Any, on_step: Callable[[int], None] | None = None, **kwargs: Any) -> Any:
        groups = ParameterGroups.split(objective.model, ("head.",))

        def hook(step: int) -> None:
            if on_step is not None:
                on_step(step)
            params = dict(objective.model.named_parameters())
            snapshots[step] = groups.flat(params, "body").detach().clone().double()

        return real(objective, *args, on_step=hook, **kwargs)

    monkeypatch.setattr(pretrain_module, "train_model", recording)
    return snapshots


def _schedule(steps: int, rank: int, start: float, every: int | None) -> list[int]:
    """The snapshot steps :func:`pretrain` documents: from ``int(start*steps)+1`` every ``every`` steps."""
    first = int(start * steps) + 1
    if every is None:
        every = max(1, (steps - first + 1) // rank)
    return [s for s in range(first, steps + 1) if (s - first) % every == 0]


@pytest.mark.parametrize(
    ("steps", "start", "every", "n_expected"),
    [(30, 0.5, None, 5), (30, 0.2, 4, 6), (12, 0.0, 1, 12)],
    ids=["default-spacing", "every-4", "every-step"],
)
def test_pretrain_swag_mean_is_the_average_of_the_snapshots(
    monkeypatch: pytest.MonkeyPatch, steps: int, start: float, every: int | None, n_expected: int
) -> None:
    snapshots = _recording_train(monkeypatch)
    torch.manual_seed(0)
    model = SmallCNN(3, in_channels=1, width=4)
    done = pretrain(
        model,
        _tiny_source(),
        steps=steps,
        batch_size=16,
        lr=0.1,
        swag_rank=5,
        swag_start=start,
        swag_every=every,
    )
    assert sorted(snapshots) == list(range(1, steps + 1))
    taken = _schedule(steps, 5, start, every)
    assert len(taken) == n_expected
    swag = done.swag
    assert swag is not None
    assert swag.n_collected == n_expected
    assert swag.rank == min(5, n_expected) and swag.rank <= 5
    assert swag.dim == ParameterGroups.split(model, ("head.",)).numel(model, "body")

    stacked = torch.stack([snapshots[s] for s in taken])  # (n, D) float64
    torch.testing.assert_close(swag.mean.double(), stacked.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(swag.diag_variance.double(), stacked.var(0, unbiased=False), rtol=1e-3, atol=1e-9)
    running = stacked.cumsum(0) / torch.arange(1, n_expected + 1, dtype=torch.float64)[:, None]
    deviations = (stacked - running)[-swag.rank :].T  # last K columns, oldest first
    torch.testing.assert_close(swag.deviations.double(), deviations, rtol=1e-4, atol=1e-6)
    # The average is not any single snapshot: the weights moved between snapshots.
    assert not torch.allclose(swag.mean.double(), stacked[-1])


def test_pretrain_without_swag_returns_none() -> None:
    done = pretrain(SmallCNN(3, in_channels=1, width=4), _tiny_source(), steps=3, batch_size=16, swag_rank=0)
    assert done.swag is None
    assert len(done.result.history) == 1


@pytest.mark.parametrize(
    ("steps", "start", "every"),
    [(2, 0.5, None), (1, 0.0, None), (20, 0.5, 100), (10, 0.9, None)],
)
def test_pretrain_with_fewer_than_two_snapshots_raises(steps: int, start: float, every: int | None) -> None:
    assert len(_schedule(steps, 5, start, every)) < 2
    model = SmallCNN(3, in_channels=1, width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="2 snapshots"):
        pretrain(model, _tiny_source(), steps=steps, batch_size=16, swag_rank=5, swag_start=start, swag_every=every)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed although pretraining was refused"


@pytest.mark.parametrize("start", [1.0, -0.1, 1.5])
def test_pretrain_bad_swag_start_raises(start: float) -> None:
    with pytest.raises(ConfigError, match="swag_start"):
        pretrain(SmallCNN(3, in_channels=1, width=4), _tiny_source(), steps=10, swag_rank=2, swag_start=start)


# --- split_cifar_task on the real CIFAR-10 (JPEG) ----------------------------------------------

CIFAR_ARGS: dict[str, Any] = {
    "n_train": 50,
    "steps": 3,
    "batch_size": 16,
    "pretrain_steps": 6,
    "pretrain_batch_size": 16,
    "swag_rank": 2,
    "prior": "ptyl",
}


@pytest.fixture(scope="module")
def cifar_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache directory (decoded CIFAR-10, pretrained body, SWAG) for the whole module."""
    return tmp_path_factory.mktemp("split-cifar-cache")


@pytest.fixture(scope="module")
def cifar_first(cifar_cache: Path) -> tuple[TaskSpec, float]:
    """The first (cache-miss) ``split_cifar_task`` call, made once per module."""
    if not HAS_CIFAR:
        pytest.skip(f"CIFAR-10 JPEG archives not found in {DATA_DIR}")
    return split_cifar_task(data_dir=DATA_DIR, cache_dir=cifar_cache, **CIFAR_ARGS)


def _fingerprints(images: Tensor) -> Tensor:
    """A float64 projection of each flattened image that tells distinct images apart.

    The weights are integers below 2^20, so every product and partial sum (< 2^40) is exact in
    float64 and the result does not depend on the summation order (batch size, BLAS, threads).
    """
    weights = torch.from_numpy(np.random.default_rng(0).integers(-(2**20), 2**20, size=images[0].numel())).double()
    return images.reshape(images.shape[0], -1).double() @ weights


@requires_cifar
def test_split_cifar_task_data(cifar_first: tuple[TaskSpec, float], cifar_cache: Path) -> None:
    task, seconds = cifar_first
    assert seconds > 0, "the first call must pretrain"
    assert task.prior == "ptyl"
    assert task.train.x.dtype == torch.uint8 and task.train.x.shape == (50, 3, 32, 32)
    assert torch.bincount(task.train.y, minlength=5).tolist() == [10] * 5
    assert set(task.train.y.tolist()) == {0, 1, 2, 3, 4}
    assert task.test is not None
    assert task.test.x.dtype == torch.uint8 and task.test.x.shape == (5000, 3, 32, 32)
    assert torch.bincount(task.test.y, minlength=5).tolist() == [1000] * 5

    # Every training image is a CIFAR-10 training image of class 5..9, relabelled 0..4.
    pool_x, pool_y = split_classes(*load_cifar10_jpeg(DATA_DIR, "train", cache_dir=cifar_cache), (5, 6, 7, 8, 9))
    pool_keys = dict(zip(_fingerprints(pool_x).tolist(), pool_y.tolist(), strict=True))
    for key, label in zip(_fingerprints(task.train.x).tolist(), task.train.y.tolist(), strict=True):
        assert pool_keys.get(key) == label

    assert task.train_transform is not None and task.eval_transform is not None
    batch = task.train.x[:8]
    augmented, normalised = task.train_transform(batch), task.eval_transform(batch)
    for out in (augmented, normalised):
        assert out.dtype == torch.float32 and out.shape == (8, 3, 32, 32)
        assert bool(torch.isfinite(out).all())
    assert torch.equal(normalised, task.eval_transform(batch))
    assert not torch.equal(augmented, normalised)
    assert abs(float(normalised.mean())) < 1.0


@requires_cifar
def test_split_cifar_task_trains_and_caches(cifar_first: tuple[TaskSpec, float], cifar_cache: Path) -> None:
    task, _ = cifar_first
    model = task.build_model()
    dim = task.groups(model).numel(model, "body")
    assert task.head_prefixes == ("head.",)
    assert task.prior_mean is not None and task.prior_mean.shape == (dim,)
    assert task.prior_covariance is not None
    assert task.prior_covariance[0].shape == (dim,) and task.prior_covariance[1].shape == (dim, 2)
    assert isinstance(task.body_prior(model), LowRankGaussian)

    objective, result = fit_deelbo(task, 0.01)
    assert isinstance(objective.body_prior, LowRankGaussian)
    lam, tau = _last_row_variances(result.history)
    assert math.isfinite(lam) and lam > 0
    assert math.isfinite(tau) and tau > 0
    assert result.history[-1]["step"] == 3
    assert math.isfinite(result.final_loss)

    (checkpoint,) = cifar_cache.glob("split-cifar-cifar-resnet20-steps6-seed0-*.pt")
    swag_file = checkpoint.with_suffix(".swag")
    assert checkpoint.is_file() and swag_file.is_file()
    assert sorted(p.name.split("-")[2] for p in cifar_cache.glob("cifar10-jpeg-*.npz")) == ["test", "train"]
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for key, value in model.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(value, saved[key]), key


@requires_cifar
def test_split_cifar_task_second_call_hits_the_cache(cifar_first: tuple[TaskSpec, float], cifar_cache: Path) -> None:
    first, first_seconds = cifar_first
    assert first_seconds > 0
    second, seconds = split_cifar_task(data_dir=DATA_DIR, cache_dir=cifar_cache, **CIFAR_ARGS)
    assert seconds == 0.0
    a, b = first.build_model().state_dict(), second.build_model().state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert first.prior_mean is not None and second.prior_mean is not None
    assert torch.equal(first.prior_mean, second.prior_mean)
    assert first.prior_covariance is not None and second.prior_covariance is not None
    for x, y in zip(first.prior_covariance, second.prior_covariance, strict=True):
        assert torch.equal(x, y)
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.train.y, second.train.y)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "vgg16"}, "unknown backbone"),
        ({"source": "hdf5"}, "unknown CIFAR-10 source"),
        ({"data_dir": "missing"}, "does not exist"),
        ({"data_dir": "missing", "source": "torchvision"}, "not found"),
        ({"data_dir": "missing", "prior": "l3"}, "unknown prior"),
        ({"data_dir": "missing", "prior": "ptyl", "swag_rank": 0}, "swag_rank > 0"),
        ({"data_dir": "missing", "swag_rank": -1}, "swag_rank must be"),
    ],
    ids=["backbone", "source", "missing-dir-jpeg", "missing-dir-torchvision", "prior", "ptyl-no-swag", "swag-rank"],
)
def test_split_cifar_task_bad_input_raises(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"data_dir": tmp_path, "cache_dir": tmp_path / "cache", **CIFAR_ARGS, **kwargs}
    if args["data_dir"] == "missing":
        args["data_dir"] = tmp_path / "does-not-exist"
    with pytest.raises(ConfigError, match=message):
        split_cifar_task(**args)
    assert not list(tmp_path.glob("cache/split-cifar-*")), "nothing should be cached after a refused call"


@requires_cifar
def test_split_cifar_cache_key_and_corrupt_cache(cifar_first: tuple[TaskSpec, float], cifar_cache: Path) -> None:
    """A different pretraining setting misses the cache; a corrupt cache file is rebuilt, not trusted."""
    assert cifar_first[1] > 0
    other = {**CIFAR_ARGS, "swag_rank": 3}
    task, seconds = split_cifar_task(data_dir=DATA_DIR, cache_dir=cifar_cache, **other)
    assert seconds > 0, "another swag_rank must pretrain again"
    assert task.prior_covariance is not None and task.prior_covariance[1].shape[1] == 3
    checkpoints = sorted(cifar_cache.glob("split-cifar-cifar-resnet20-steps6-seed0-*.pt"))
    assert len(checkpoints) == 2
    assert not list(cifar_cache.glob(".*.tmp")), "atomic writes leave no temporary files"

    newest = max(checkpoints, key=lambda p: p.stat().st_mtime)
    newest.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="pretraining again"):
        rebuilt, seconds = split_cifar_task(data_dir=DATA_DIR, cache_dir=cifar_cache, **other)
    assert seconds > 0
    assert torch.load(newest, map_location="cpu", weights_only=True).keys() == rebuilt.build_model().state_dict().keys()


def test_with_test_subset_is_stratified_fixed_and_refuses_bad_sizes() -> None:
    task, _ = digits_task(n_train=50, steps=5, pretrain_steps=5)
    assert task.test is not None
    small = task.with_test_subset(100)
    again = task.with_test_subset(100)
    assert small.test is not None and again.test is not None and len(small.test) == 100
    assert torch.equal(small.test.x, again.test.x)  # same seed, same images
    full = torch.bincount(task.test.y).double() / len(task.test)
    sub = torch.bincount(small.test.y, minlength=full.numel()).double() / 100
    assert float((full - sub).abs().max()) <= 0.011  # class proportions kept (stratified)
    assert task.with_test_subset(len(task.test) + 5) is task
    assert torch.equal(small.train.x, task.train.x)
    with pytest.raises(ConfigError, match="test subset size must be a positive integer"):
        task.with_test_subset(0)
    no_test = dataclasses.replace(task, test=None)
    with pytest.raises(ConfigError, match="no test set"):
        no_test.with_test_subset(10)

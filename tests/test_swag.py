"""Tests for :mod:`optuna_deelbo.bayes._swag`: running moments against a direct computation.

References are computed with numpy from the stacked snapshots, independently of the
collector's update rules. Deviation columns are compared in chronological order (oldest
first), which is the order :meth:`SWAGCollector.deviations` documents.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _hypothesis_profiles import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from optuna_deelbo._errors import ConfigError
from optuna_deelbo.bayes._posterior import ParameterGroups
from optuna_deelbo.bayes._priors import LowRankGaussian
from optuna_deelbo.bayes._swag import SWAG_FORMAT, SWAG_FORMAT_VERSION, SWAGCollector, SWAGMoments

F64 = torch.float64
SETTINGS = settings(max_examples=examples(40), deadline=None)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def snapshots(seed: int, n: int, dim: int) -> np.ndarray:
    """``n`` random snapshots ``(n, D)`` around a random centre (float64)."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=dim) * 3.0
    scales = np.exp(rng.uniform(-1.0, 1.0, size=dim))
    return centre + scales * rng.normal(size=(n, dim))


def reference(x: np.ndarray, max_rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Direct ``(mean, var, last-K deviations (D, K) oldest first)`` from stacked snapshots."""
    n = x.shape[0]
    mean = x.mean(axis=0)
    var = ((x - mean) ** 2).mean(axis=0)
    devs = [x[i] - x[: i + 1].mean(axis=0) for i in range(n)]
    return mean, var, np.stack(devs[-max_rank:], axis=1)


def collect_all(x: np.ndarray, max_rank: int, dtype: torch.dtype = F64) -> SWAGCollector:
    collector = SWAGCollector(x.shape[1], max_rank=max_rank, dtype=dtype)
    for row in x:
        collector.collect(torch.from_numpy(row))
    return collector


def make_moments(seed: int, n: int, dim: int, max_rank: int) -> SWAGMoments:
    return collect_all(snapshots(seed, n, dim), max_rank).moments()


def dense_sigma(var: np.ndarray, devs: np.ndarray, scale: float, min_variance: float) -> np.ndarray:
    """``scale * (0.5 diag(max(var, floor)) + D D^T / (2 (K - 1)))`` built densely (``K <= 1``: no low rank)."""
    k = devs.shape[1]
    sigma = 0.5 * np.diag(np.maximum(var, min_variance))
    if k > 1:
        sigma = sigma + devs @ devs.T / (2.0 * (k - 1))
    return scale * sigma


# --------------------------------------------------------------------------------------------
# 1. running moments vs direct computation
# --------------------------------------------------------------------------------------------
@SETTINGS
@given(
    seed=seeds,
    n=st.integers(min_value=2, max_value=14),
    dim=st.integers(min_value=1, max_value=5),
    max_rank=st.integers(min_value=1, max_value=6),
)
def test_moments_match_direct_computation(seed: int, n: int, dim: int, max_rank: int) -> None:
    x = snapshots(seed, n, dim)
    collector = collect_all(x, max_rank)
    moments = collector.moments()
    mean, var, devs = reference(x, max_rank)

    assert moments.n_collected == collector.n_collected == n
    assert moments.rank == collector.rank == min(n, max_rank)
    assert moments.deviations.shape == (dim, min(n, max_rank))
    np.testing.assert_allclose(moments.mean.numpy(), mean, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(moments.diag_variance.numpy(), var, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(moments.deviations.numpy(), devs, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(collector.sq_mean.numpy(), (x**2).mean(axis=0), rtol=1e-9, atol=1e-10)


def test_ring_buffer_keeps_last_k_in_chronological_order() -> None:
    x = snapshots(7, 8, 3)
    collector = SWAGCollector(3, max_rank=3, dtype=F64)
    all_devs = [x[i] - x[: i + 1].mean(axis=0) for i in range(8)]
    for i, row in enumerate(x):
        collector.collect(torch.from_numpy(row))
        held = collector.moments().deviations.numpy() if i >= 1 else collector.deviations().numpy()
        expected = np.stack(all_devs[max(0, i - 2) : i + 1], axis=1)
        # exact order: oldest column first, newest last (a permutation would fail here)
        np.testing.assert_allclose(held, expected, rtol=1e-12, atol=1e-12)
    # after 8 snapshots (buffer wrapped twice) only snapshots 5, 6, 7 remain
    final = collector.deviations().numpy()
    assert final.shape == (3, 3)
    np.testing.assert_allclose(final[:, -1], all_devs[7], rtol=1e-12)
    np.testing.assert_allclose(final[:, 0], all_devs[5], rtol=1e-12)
    assert not np.allclose(final[:, 0], all_devs[4])


def test_moments_are_copies_not_views() -> None:
    x = snapshots(3, 4, 2)
    collector = collect_all(x[:3], max_rank=2)
    before = collector.moments()
    frozen = [t.clone() for t in (before.mean, before.diag_variance, before.deviations)]
    collector.collect(torch.from_numpy(x[3]))
    for old, new in zip(frozen, (before.mean, before.diag_variance, before.deviations), strict=True):
        torch.testing.assert_close(new, old, rtol=0, atol=0)


def test_float32_variance_does_not_cancel() -> None:
    """Weights ~1e3 with spread 1e-2: ``sq_mean - mean^2`` in float32 would be pure noise."""
    rng = np.random.default_rng(0)
    x = 1000.0 + 0.01 * rng.normal(size=(200, 4))
    collector = collect_all(x, max_rank=5, dtype=torch.float32)
    var = collector.moments().diag_variance.double().numpy()
    np.testing.assert_allclose(var, x.var(axis=0), rtol=0.05)


# --------------------------------------------------------------------------------------------
# 2. toy model trained with SGD
# --------------------------------------------------------------------------------------------
def test_collect_module_on_sgd_trajectory() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    groups = ParameterGroups.split(model, head_prefixes=("2.",))
    dim = groups.numel(model, "body")
    assert dim == 3 * 5 + 5  # the head (layer "2.") is excluded
    x, y = torch.randn(32, 3), torch.randint(0, 2, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    collector = SWAGCollector(dim, max_rank=4)
    seen: list[Tensor] = []
    steps = 12
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        collector.collect_module(model, groups)
        seen.append(groups.flat({n: p.detach().clone() for n, p in model.named_parameters()}, "body"))

    moments = collector.moments()
    stacked = torch.stack(seen)
    assert not torch.allclose(stacked[0], stacked[-1])  # the weights did move
    assert moments.mean.shape == moments.diag_variance.shape == (dim,)
    assert moments.deviations.shape == (dim, 4)
    assert moments.n_collected == steps
    assert not moments.mean.requires_grad
    torch.testing.assert_close(moments.mean, stacked.mean(dim=0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(moments.deviations[:, -1], seen[-1] - stacked.mean(dim=0), rtol=1e-4, atol=1e-6)
    assert bool(torch.all(moments.diag_variance > 0))


# --------------------------------------------------------------------------------------------
# 3. covariance factors and the PTYL prior
# --------------------------------------------------------------------------------------------
@SETTINGS
@given(
    seed=seeds,
    n=st.integers(min_value=2, max_value=10),
    dim=st.integers(min_value=1, max_value=5),
    max_rank=st.integers(min_value=1, max_value=4),
    log_scale=st.floats(min_value=-3.0, max_value=3.0),
)
def test_covariance_factors_and_prior_match_dense(seed: int, n: int, dim: int, max_rank: int, log_scale: float) -> None:
    x = snapshots(seed, n, dim)
    moments = collect_all(x, max_rank).moments()
    _, var, devs = reference(x, max_rank)
    scale = math.exp(log_scale)
    expected = dense_sigma(var, devs, scale, 1e-8)

    a, u = moments.covariance_factors(scale=scale)
    k = min(n, max_rank)
    assert a.shape == (dim,)
    assert u.shape == ((dim, k) if k > 1 else (dim, 0))
    np.testing.assert_allclose((torch.diag(a) + u @ u.T).numpy(), expected, rtol=1e-9, atol=1e-12)

    prior = moments.to_prior(scale=scale)
    assert isinstance(prior, LowRankGaussian)
    torch.testing.assert_close(prior.mean, moments.mean, rtol=0, atol=0)
    theta = torch.from_numpy(np.random.default_rng(seed + 1).normal(size=dim))
    d = theta.numpy() - moments.mean.numpy()
    np.testing.assert_allclose(float(prior.mahalanobis(theta)), d @ np.linalg.solve(expected, d), rtol=1e-7)
    np.testing.assert_allclose(float(prior.logdet_covariance()), np.linalg.slogdet(expected)[1], rtol=1e-8, atol=1e-8)


def test_rank_one_drops_low_rank_term() -> None:
    moments = make_moments(seed=1, n=5, dim=3, max_rank=1)
    a, u = moments.covariance_factors(scale=2.0)
    assert u.shape == (3, 0)
    torch.testing.assert_close(a, moments.diag_variance, rtol=1e-12, atol=0)  # 0.5 * 2.0 * var
    assert moments.to_prior().rank == 0


def test_min_variance_floors_constant_weights() -> None:
    x = snapshots(2, 6, 3)
    x[:, 1] = 0.25  # a weight that never moved
    moments = collect_all(x, max_rank=3).moments()
    assert float(moments.diag_variance[1]) == 0.0
    a, _ = moments.covariance_factors(scale=4.0, min_variance=1e-6)
    assert float(a[1]) == pytest.approx(0.5 * 4.0 * 1e-6, rel=1e-12)
    assert float(a[0]) == pytest.approx(2.0 * float(moments.diag_variance[0]), rel=1e-12)
    assert bool(torch.all(moments.to_prior().diagonal > 0))


@pytest.mark.parametrize(
    ("scale", "min_variance", "match"),
    [(0.0, 1e-8, "scale"), (-1.0, 1e-8, "scale"), (math.inf, 1e-8, "scale"), (1.0, 0.0, "min_variance")],
)
def test_covariance_factors_reject_bad_arguments(scale: float, min_variance: float, match: str) -> None:
    moments = make_moments(seed=0, n=3, dim=2, max_rank=2)
    with pytest.raises(ConfigError, match=match):
        moments.covariance_factors(scale=scale, min_variance=min_variance)


# --------------------------------------------------------------------------------------------
# 4. save / load
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_save_load_round_trip(tmp_path: Path, dtype: torch.dtype) -> None:
    moments = collect_all(snapshots(5, 9, 4), max_rank=3, dtype=dtype).moments()
    path = tmp_path / "swag.pt"
    moments.save(path)
    loaded = SWAGMoments.load(path)
    assert loaded.n_collected == moments.n_collected == 9
    for name in ("mean", "diag_variance", "deviations"):
        got, want = getattr(loaded, name), getattr(moments, name)
        assert got.dtype == want.dtype == dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    loaded_str = SWAGMoments.load(str(path))
    torch.testing.assert_close(loaded_str.deviations, moments.deviations, rtol=0, atol=0)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        SWAGMoments.load(tmp_path / "nope.pt")


def test_load_garbage_bytes(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x00\x01 this is not a torch checkpoint \xff" * 10)
    with pytest.raises(ConfigError, match="corrupt"):
        SWAGMoments.load(path)


def _payload(**overrides: object) -> dict[str, object]:
    moments = make_moments(seed=4, n=4, dim=3, max_rank=2)
    payload: dict[str, object] = {
        "format": SWAG_FORMAT,
        "version": SWAG_FORMAT_VERSION,
        "mean": moments.mean,
        "diag_variance": moments.diag_variance,
        "deviations": moments.deviations,
        "n_collected": moments.n_collected,
    }
    payload.update(overrides)
    return payload


def test_load_valid_hand_written_payload(tmp_path: Path) -> None:
    """Control for the rejection tests below: the unmodified payload loads."""
    path = tmp_path / "ok.pt"
    torch.save(_payload(), path)
    assert SWAGMoments.load(path).rank == 2


def test_load_dict_without_format_tag(tmp_path: Path) -> None:
    path = tmp_path / "untagged.pt"
    payload = _payload()
    del payload["format"]
    torch.save(payload, path)
    with pytest.raises(ConfigError, match="not a SWAG checkpoint"):
        SWAGMoments.load(path)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"format": "something-else"}, "not a SWAG checkpoint"),
        ({"version": SWAG_FORMAT_VERSION + 1}, "format version"),
        ({"diag_variance": torch.ones(4, dtype=F64)}, "inconsistent.*diag_variance"),
        ({"deviations": torch.ones(4, 2, dtype=F64)}, "inconsistent.*deviations"),
        ({"mean": torch.ones(3, 1, dtype=F64)}, "inconsistent.*mean"),
        ({"n_collected": 1}, "inconsistent.*n_collected"),
        ({"mean": [1.0, 2.0, 3.0]}, "inconsistent.*tensor"),
    ],
)
def test_load_rejects_bad_payloads(tmp_path: Path, overrides: dict[str, object], match: str) -> None:
    path = tmp_path / "bad.pt"
    torch.save(_payload(**overrides), path)
    with pytest.raises(ConfigError, match=match):
        SWAGMoments.load(path)


def test_load_rejects_non_dict(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ConfigError, match="not a SWAG checkpoint"):
        SWAGMoments.load(path)


# --------------------------------------------------------------------------------------------
# 5. argument errors
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("count", [0, 1])
def test_moments_need_two_snapshots(count: int) -> None:
    collector = collect_all(snapshots(0, count, 3), max_rank=2) if count else SWAGCollector(3)
    assert collector.n_collected == count
    with pytest.raises(ConfigError, match="at least 2"):
        collector.moments()


@pytest.mark.parametrize("shape", [(4,), (2,), (3, 1), ()])
def test_collect_rejects_wrong_shape(shape: tuple[int, ...]) -> None:
    collector = SWAGCollector(3)
    with pytest.raises(ConfigError, match="length 3"):
        collector.collect(torch.zeros(shape))
    assert collector.n_collected == 0


@pytest.mark.parametrize("max_rank", [0, -1])
def test_max_rank_must_be_positive(max_rank: int) -> None:
    with pytest.raises(ConfigError, match="max_rank"):
        SWAGCollector(3, max_rank=max_rank)


@pytest.mark.parametrize("dim", [0, -2])
def test_dim_must_be_positive(dim: int) -> None:
    with pytest.raises(ConfigError, match="dim"):
        SWAGCollector(dim)


def test_non_finite_snapshot_is_reported() -> None:
    collector = SWAGCollector(2)
    collector.collect(torch.tensor([0.0, 1.0]))
    collector.collect(torch.tensor([float("nan"), 1.0]))
    with pytest.raises(ConfigError, match="non-finite"):
        collector.moments()

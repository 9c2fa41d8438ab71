"""Tests for :mod:`optuna_deelbo.regularizers._penalties`: values against brute force, bounds, gradients, bad input.

Random vectors come from a hypothesis-drawn seed through ``torch.Generator``; maths is float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from _hypothesis_profiles import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from optuna_deelbo._errors import ConfigError
from optuna_deelbo.regularizers._penalties import PENALTY_NAMES, Penalty

torch.set_num_threads(1)

F64 = torch.float64
SETTINGS = settings(max_examples=examples(60), deadline=None)

seeds = st.integers(min_value=0, max_value=2**31 - 1)
dims = st.integers(min_value=1, max_value=8)
kinds = st.sampled_from(PENALTY_NAMES)
strengths = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)
epsilons = st.floats(min_value=1e-8, max_value=1.0, allow_nan=False)
scales = st.floats(min_value=1e-6, max_value=1e3, allow_nan=False)


def _vector(seed: int, dim: int, scale: float = 1.0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(dim, generator=gen, dtype=F64)


def _brute_force(kind: str, strength: float, eps: float, d: list[float]) -> float:
    """The penalty by plain Python arithmetic over the coordinates of ``d``."""
    if kind == "l1":
        return strength * sum(abs(v) for v in d)
    if kind == "l2":
        return strength / 2 * sum(v * v for v in d)
    return strength * sum((v * v + eps * eps) ** 0.25 - math.sqrt(eps) for v in d)


def _closed_form_gradient(kind: str, strength: float, eps: float, d: Tensor) -> Tensor:
    if kind == "l1":
        return strength * torch.sign(d)
    if kind == "l2":
        return strength * d
    return strength * d / (2 * (d * d + eps**2) ** 0.75)


@SETTINGS
@given(seed=seeds, dim=dims, kind=kinds, strength=strengths, eps=st.floats(1e-3, 1.0), use_center=st.booleans())
def test_value_matches_brute_force(
    seed: int, dim: int, kind: str, strength: float, eps: float, use_center: bool
) -> None:
    theta = _vector(seed, dim)
    center = _vector(seed + 1, dim) if use_center else None
    d = theta - center if center is not None else theta
    value = Penalty(kind, strength, eps)(theta, center)
    assert value.ndim == 0 and value.dtype == F64
    expected = _brute_force(kind, strength, eps, d.tolist())
    assert value.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_hand_computed_values() -> None:
    theta = torch.tensor([3.0, -4.0], dtype=F64)
    center = torch.tensor([1.0, 0.0], dtype=F64)  # d = (2, -4)
    assert Penalty("l1", 0.5)(theta, center).item() == pytest.approx(0.5 * 6)
    assert Penalty("l2", 0.5)(theta, center).item() == pytest.approx(0.5 / 2 * 20)
    assert Penalty("l2", 0.5)(theta).item() == pytest.approx(0.5 / 2 * 25)
    eps = 1e-3
    expected = 2.0 * ((4 + eps**2) ** 0.25 + (16 + eps**2) ** 0.25 - 2 * math.sqrt(eps))
    assert Penalty("l-half", 2.0, eps)(theta, center).item() == pytest.approx(expected, rel=1e-12)


@SETTINGS
@given(seed=seeds, dim=dims, strength=strengths, eps=epsilons, scale=scales)
def test_l_half_within_stated_bound_of_sqrt_abs(seed: int, dim: int, strength: float, eps: float, scale: float) -> None:
    """``strength * (sum |d|^0.5 - D sqrt(eps)) <= penalty <= strength * sum |d|^0.5``, per coordinate too."""
    d = _vector(seed, dim, scale)
    exact = d.abs().sqrt()
    per_coordinate = torch.stack([Penalty("l-half", 1.0, eps)(d[i : i + 1]) for i in range(dim)])
    tol = 1e-12 * (1 + exact)
    assert torch.all(per_coordinate <= exact + tol)
    assert torch.all(per_coordinate >= exact - math.sqrt(eps) - tol)
    total = Penalty("l-half", strength, eps)(d).item()
    assert total <= strength * exact.sum().item() * (1 + 1e-12) + 1e-12
    assert total >= strength * (exact.sum().item() - dim * math.sqrt(eps)) - 1e-9 * strength * (1 + exact.sum().item())


@SETTINGS
@given(seed=seeds, dim=dims, scale=st.floats(1e-2, 1e2))
def test_l_half_converges_to_sqrt_abs_as_eps_shrinks(seed: int, dim: int, scale: float) -> None:
    d = _vector(seed, dim, scale)
    exact = d.abs().sqrt().sum().item()
    errors = [exact - Penalty("l-half", 1.0, eps)(d).item() for eps in (1e-2, 1e-4, 1e-6, 1e-8, 1e-10)]
    for eps, error in zip((1e-2, 1e-4, 1e-6, 1e-8, 1e-10), errors, strict=True):
        assert -1e-9 <= error <= dim * math.sqrt(eps) + 1e-9
    assert errors[-1] < 1e-4 * dim


@SETTINGS
@given(seed=seeds, dim=dims, kind=kinds, strength=strengths, eps=epsilons, scale=scales)
def test_penalties_are_nonnegative_and_zero_at_center(
    seed: int, dim: int, kind: str, strength: float, eps: float, scale: float
) -> None:
    theta = _vector(seed, dim, scale)
    penalty = Penalty(kind, strength, eps)
    assert penalty(theta).item() >= 0.0
    assert penalty(theta, theta.clone()).item() == 0.0
    assert penalty(torch.zeros(dim, dtype=F64)).item() == 0.0


@SETTINGS
@given(a=st.floats(-1e3, 1e3), b=st.floats(-1e3, 1e3), eps=epsilons)
def test_l_half_monotone_in_abs(a: float, b: float, eps: float) -> None:
    small, large = sorted((a, b), key=abs)
    penalty = Penalty("l-half", 1.0, eps)
    assert penalty(torch.tensor([small], dtype=F64)).item() <= penalty(torch.tensor([large], dtype=F64)).item() * (
        1 + 1e-12
    )
    assert penalty(torch.tensor([small], dtype=F64)) == penalty(torch.tensor([-small], dtype=F64))


@SETTINGS
@given(seed=seeds, dim=dims, factor=st.floats(1.0, 100.0), eps=epsilons)
def test_l_half_monotone_under_scaling(seed: int, dim: int, factor: float, eps: float) -> None:
    d = _vector(seed, dim)
    penalty = Penalty("l-half", 1.0, eps)
    assert penalty(d).item() <= penalty(factor * d).item() * (1 + 1e-12)


@pytest.mark.parametrize("kind", PENALTY_NAMES)
def test_gradient_finite_and_zero_at_exactly_zero(kind: str) -> None:
    center = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    theta = center.clone().requires_grad_(True)
    Penalty(kind, 3.0, 1e-6)(theta, center).backward()
    assert theta.grad is not None
    assert torch.isfinite(theta.grad).all()
    assert torch.equal(theta.grad, torch.zeros(3, dtype=F64))


@SETTINGS
@given(seed=seeds, dim=dims, kind=kinds, strength=strengths, eps=epsilons, use_center=st.booleans())
def test_autograd_gradient_equals_closed_form(
    seed: int, dim: int, kind: str, strength: float, eps: float, use_center: bool
) -> None:
    theta = _vector(seed, dim).requires_grad_(True)
    center = _vector(seed + 7, dim) if use_center else None
    Penalty(kind, strength, eps)(theta, center).backward()
    d = theta.detach() - (center if center is not None else 0.0)
    expected = _closed_form_gradient(kind, strength, eps, d)
    assert theta.grad is not None
    torch.testing.assert_close(theta.grad, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("eps", [1e-8, 1e-4, 1e-2, 1.0])
def test_l_half_gradient_bound(eps: float) -> None:
    """``|f'(d)| <= 3^(-3/4) 2^(-1/2) eps^(-1/2)``, attained at ``|d| = sqrt(2) eps``."""
    d = eps * torch.linspace(-50.0, 50.0, 200_001, dtype=F64)
    d = d.requires_grad_(True)
    Penalty("l-half", 1.0, eps)(d).backward()
    assert d.grad is not None
    bound = 3**-0.75 * 2**-0.5 / math.sqrt(eps)
    assert d.grad.abs().max().item() <= bound * (1 + 1e-9)
    assert d.grad.abs().max().item() >= bound * (1 - 1e-6)
    peak = torch.tensor([math.sqrt(2) * eps], dtype=F64, requires_grad=True)
    Penalty("l-half", 1.0, eps)(peak).backward()
    assert peak.grad is not None
    assert peak.grad.item() == pytest.approx(bound, rel=1e-9)


def test_float32_and_strength_zero() -> None:
    theta = torch.randn(5, generator=torch.Generator().manual_seed(0))
    for kind in PENALTY_NAMES:
        assert Penalty(kind, 1.0)(theta).dtype == torch.float32
        assert Penalty(kind, 0.0)(theta).item() == 0.0


def test_fields_are_normalised_floats() -> None:
    penalty = Penalty("l2", 1, 1)
    assert isinstance(penalty.strength, float) and isinstance(penalty.eps, float)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"kind": "l3", "strength": 1.0}, "unknown penalty kind 'l3'"),
        ({"kind": "L2", "strength": 1.0}, "unknown penalty kind 'L2'"),
        ({"kind": "l2", "strength": -0.1}, "penalty strength must be a finite number >= 0, got -0.1"),
        ({"kind": "l2", "strength": math.nan}, "penalty strength"),
        ({"kind": "l1", "strength": math.inf}, "penalty strength"),
        ({"kind": "l-half", "strength": 1.0, "eps": 0.0}, "penalty eps must be a positive finite number, got 0.0"),
        ({"kind": "l-half", "strength": 1.0, "eps": -1e-3}, "penalty eps"),
        ({"kind": "l-half", "strength": 1.0, "eps": math.inf}, "penalty eps"),
    ],
)
def test_bad_fields_raise(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        Penalty(**kwargs)  # type: ignore[arg-type]


def test_bad_shapes_raise() -> None:
    penalty = Penalty("l2", 1.0)
    with pytest.raises(ConfigError, match=r"theta must be a flat vector of shape \(D,\), got shape \(2, 3\)"):
        penalty(torch.zeros(2, 3))
    with pytest.raises(ConfigError, match=r"got shape \(\)"):
        penalty(torch.tensor(1.0))
    with pytest.raises(ConfigError, match=r"center must have theta's shape \(3,\), got shape \(4,\)"):
        penalty(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ConfigError, match=r"center must have theta's shape \(3,\), got shape \(1, 3\)"):
        penalty(torch.zeros(3), torch.zeros(1, 3))
    with pytest.raises(ConfigError, match=r"theta must be a floating-point tensor, got a torch\.int64 tensor"):
        penalty(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ConfigError, match="theta must be a floating-point tensor, got list"):
        penalty([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="center must be a tensor, got list"):
        penalty(torch.zeros(2), [1.0, 2.0])  # type: ignore[arg-type]

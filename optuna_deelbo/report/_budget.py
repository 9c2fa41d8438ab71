"""Accuracy at smaller budgets from one finished search (the paper's Figure 2).

A search that trained ``n`` configurations says what a smaller search would have found: draw
subsets of ``b`` configurations, choose within each by the search's own criterion (validation
NLL for MAP, final training loss for DE-ELBo), and average the chosen model's test accuracy
and the subset's cost (its configurations' seconds plus the chosen one's retraining). A
sequential search (TPE) is read in order instead: after ``k`` trials its incumbent is the best
so far. Nothing here trains; the inputs are numbers read from studies.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

from optuna_deelbo._errors import ConfigError

__all__ = ["CurvePoint", "incumbent_curve", "incumbents", "subsample_curve"]


@dataclass(frozen=True)
class CurvePoint:
    """One budget: ``size`` configurations, mean cost (s) and mean test accuracy (fraction) of the choice.

    ``draws`` is how many subsets were averaged (every subset when there are at most as many
    as asked for, so the mean is then exact).
    """

    size: int
    cost_s: float
    accuracy: float
    draws: int


def _check_lengths(**columns: Sequence[float]) -> int:
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise ConfigError(f"columns differ in length: { {k: len(v) for k, v in columns.items()} }")
    n = lengths.pop()
    if n == 0:
        raise ConfigError("no configurations to choose from")
    for name, values in columns.items():
        if any(not math.isfinite(float(v)) for v in values):
            raise ConfigError(f"{name} holds a non-finite value")
    return n


def subsample_curve(
    scores: Sequence[float],
    accuracies: Sequence[float],
    costs_s: Sequence[float],
    chosen_cost_s: Sequence[float],
    *,
    sizes: Sequence[int] | None = None,
    draws: int = 500,
    seed: int = 0,
) -> list[CurvePoint]:
    """Mean outcome of a search over ``b`` of the ``n`` configurations, for each ``b`` in ``sizes``.

    Args:
        scores: per configuration, the selection criterion (lower wins; ties go to the first).
        accuracies: per configuration, the test accuracy of the model that choosing it yields.
        costs_s: per configuration, seconds its trial cost during the search.
        chosen_cost_s: per configuration, seconds paid only if it is chosen (retraining on all N; 0 if none).
        sizes: subset sizes (default 1..n).
        draws: random subsets per size, without replacement within a subset; when ``C(n, b)``
            is at most ``draws``, every subset is used once instead (exact mean).
        seed: seeds the draws.
    """
    n = _check_lengths(scores=scores, accuracies=accuracies, costs_s=costs_s, chosen_cost_s=chosen_cost_s)
    if not isinstance(draws, int) or draws <= 0:
        raise ConfigError(f"draws must be a positive integer, got {draws!r}")
    sizes = list(range(1, n + 1)) if sizes is None else list(sizes)
    for b in sizes:
        if not 1 <= b <= n:
            raise ConfigError(f"subset size {b} is outside 1..{n}")
    rng = random.Random(seed)
    points = []
    for b in sizes:
        if math.comb(n, b) <= draws:
            subsets: list[Sequence[int]] = list(combinations(range(n), b))
        else:
            subsets = [rng.sample(range(n), b) for _ in range(draws)]
        total_acc = total_cost = 0.0
        for subset in subsets:
            winner = min(sorted(subset), key=lambda i: scores[i])
            total_acc += accuracies[winner]
            total_cost += sum(costs_s[i] for i in subset) + chosen_cost_s[winner]
        points.append(CurvePoint(b, total_cost / len(subsets), total_acc / len(subsets), len(subsets)))
    return points


def incumbent_curve(
    scores: Sequence[float | None],
    costs_s: Sequence[float],
    accuracy_of: dict[int, float],
    chosen_cost_s: dict[int, float],
) -> list[CurvePoint]:
    """A sequential search read in trial order: after each trial, the best-so-far's outcome.

    Args:
        scores: per trial in order, its criterion, or ``None`` for a pruned or failed trial
            (it still costs time but cannot be chosen).
        costs_s: per trial, its seconds.
        accuracy_of: test accuracy for each trial index that was ever the incumbent.
        chosen_cost_s: retraining seconds for each such index.

    Returns:
        One point per trial from the first completed one on: cost = seconds of the trials so
        far + the incumbent's retraining; ``draws`` is 1.
    """
    if len(scores) != len(costs_s):
        raise ConfigError(f"{len(scores)} scores but {len(costs_s)} costs")
    points = []
    spent = 0.0
    best: int | None = None
    for i, (score, cost) in enumerate(zip(scores, costs_s, strict=True)):
        spent += cost
        if score is not None and (best is None or score < scores[best]):  # type: ignore[operator]
            best = i
        if best is None:
            continue
        if best not in accuracy_of or best not in chosen_cost_s:
            raise ConfigError(f"trial {best} was the incumbent after trial {i} but has no retrained accuracy")
        points.append(CurvePoint(i + 1, spent + chosen_cost_s[best], accuracy_of[best], 1))
    return points


def incumbents(scores: Sequence[float | None]) -> list[int]:
    """Indices that were ever the best so far (in order), i.e. the ones :func:`incumbent_curve` needs."""
    found: list[int] = []
    for i, score in enumerate(scores):
        if score is not None and (not found or score < scores[found[-1]]):  # type: ignore[operator]
            found.append(i)
    return found

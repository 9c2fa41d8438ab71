"""Learning-rate selection rules: closed forms by hand, the Laplace pieces against brute force,
and the DE-ELBo strategy choosing the run with the lowest score of its recipe's rule."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from scipy.optimize import minimize_scalar
from torch import Tensor, nn

import optuna_deelbo as od
from optuna_deelbo.bayes import DEELBo
from optuna_deelbo.bayes._posterior import ParameterGroups
from optuna_deelbo.bayes._priors import IsotropicGaussian
from optuna_deelbo.bayes._selection import _block_evidence_term, _ggn_diagonal

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


class Linear2(nn.Module):
    """``head(body(x))``: two linear layers, no BatchNorm (so eval and train mode agree)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.body(x)))


def _data(n: int = 40, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).long()


def _objective(init_sigma: float = 0.05, seed: int = 0) -> DEELBo:
    torch.manual_seed(seed)
    net = Linear2()
    groups = ParameterGroups.split(net, ("head.",))
    prior = IsotropicGaussian(groups.flat(dict(net.named_parameters()), "body").detach().clone())
    return DEELBo(net, 40, prior, head=groups, init_sigma=init_sigma)


def test_full_pass_and_elbo_are_the_closed_forms_at_a_point_posterior() -> None:
    """With sigma at the floor every draw is the mean: E_q[NLL] is the mean weights' NLL exactly."""
    x, y = _data()
    objective = _objective(init_sigma=od.bayes.SIGMA_FLOOR)
    scores = od.bayes.selection_scores(objective, x, y, train_loss=0.123, rules=("train-loss", "full-pass", "elbo"))
    nll = od.evaluate(objective.model, x, y).nll
    kl = float(objective.kl_terms()[0].detach())
    assert scores["train-loss"] == 0.123
    assert scores["full-pass"] == pytest.approx(nll + kl / (objective.kappa * 40), rel=1e-6)
    assert scores["elbo"] == pytest.approx(nll + kl / 40, rel=1e-6)
    assert list(scores) == ["train-loss", "full-pass", "elbo"]


def test_expected_nll_averages_over_posterior_draws() -> None:
    """A large sigma makes E_q[NLL] exceed the mean's NLL (Jensen), and more draws estimate it stably."""
    x, y = _data()
    objective = _objective(init_sigma=1.0)
    at_mean = od.evaluate(objective.model, x, y).nll
    few = od.expected_nll(objective, x, y, samples=2, seed=0)
    many = [od.expected_nll(objective, x, y, samples=200, seed=s) for s in (0, 1)]
    assert min(many) > at_mean
    assert abs(many[0] - many[1]) < abs(few - many[0]) + 0.05
    assert od.expected_nll(objective, x, y, samples=5, seed=3) == od.expected_nll(objective, x, y, samples=5, seed=3)


@pytest.mark.parametrize("seed", range(6))
def test_block_evidence_term_matches_brute_force_minimum(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    dim = 7
    h = torch.rand(dim, generator=gen, dtype=torch.float64) * 10 ** (4 * torch.rand((), generator=gen) - 2)
    quad = torch.rand((), generator=gen, dtype=torch.float64) * 3
    p = 0.5 + torch.rand(dim, generator=gen, dtype=torch.float64)
    logdet = -torch.log(p).sum()  # a diagonal Sigma with precision p

    def f(log_lam: float) -> float:
        lam = math.exp(log_lam)
        return 0.5 * (float(quad) / lam + dim * log_lam + float(logdet) + float(torch.log(h + p / lam).sum()))

    brute = min(f(-25 + 0.01 * i) for i in range(3500))
    best = minimize_scalar(f, bounds=(-25, 10), method="bounded", options={"xatol": 1e-10}).fun
    assert _block_evidence_term(h, quad, p, logdet) == pytest.approx(min(brute, best), abs=1e-7)


def test_monte_carlo_ggn_diagonal_converges_to_the_exact_ggn() -> None:
    """One sampled label per example is an unbiased estimate of diag(J^T (diag p - p p^T) J)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    x = torch.randn(6, 3)
    y = torch.zeros(6, dtype=torch.long)
    with torch.no_grad():
        p = torch.softmax(model(x), dim=-1)  # (N, C)
    exact_w = (p * (1 - p)).T @ (x**2)  # d^2 / dW_cj^2 of the GGN: sum_i p_ic (1 - p_ic) x_ij^2
    exact_b = (p * (1 - p)).sum(0)
    reps = 3000
    total = {"weight": torch.zeros(4, 3), "bias": torch.zeros(4)}
    for seed in range(reps):
        diag, nll_sum = _ggn_diagonal(model, ("weight", "bias"), x, y, None, 64, seed)
        for k in total:
            total[k] += diag[k]
    torch.testing.assert_close(total["weight"] / reps, exact_w, rtol=0.1, atol=2e-3)
    torch.testing.assert_close(total["bias"] / reps, exact_b, rtol=0.1, atol=2e-3)
    assert nll_sum == pytest.approx(float(nn.functional.cross_entropy(model(x), y, reduction="sum").detach()), rel=1e-5)


def test_laplace_score_prefers_a_fitted_model_on_separable_data() -> None:
    """A scripted pair of runs: the same model trained to fit vs left at its initialisation."""
    x, y = _data(n=40)
    fitted, untrained = _objective(), _objective()
    optimizer = torch.optim.SGD(fitted.model.parameters(), lr=0.5)
    for _ in range(300):
        optimizer.zero_grad()
        nn.functional.cross_entropy(fitted.model(x), y).backward()
        optimizer.step()
    score = {name: od.bayes.laplace_neg_log_evidence(o, x, y) for name, o in (("fit", fitted), ("init", untrained))}
    assert score["fit"] < score["init"]
    assert all(math.isfinite(v) for v in score.values())


def _tiny_task(**recipe: object) -> od.TaskSpec:
    x, y = _data(n=40)
    tx, ty = _data(n=60, seed=1)
    return od.TaskSpec(
        name="tiny",
        model_factory=Linear2,
        train=od.Split(x, y),
        test=od.Split(tx, ty),
        steps=40,
        batch_size=20,
        progress=False,
        recipe=od.DEELBoRecipe().replace(**recipe),
    )


@pytest.mark.parametrize("rule", od.bayes.SELECTION_RULES)
def test_deelbo_strategy_keeps_the_learning_rate_with_the_lowest_score(rule: str) -> None:
    task = _tiny_task(selection=rule)
    storage = optuna.storages.InMemoryStorage()
    result = od.tuning.run_strategy(od.tuning.get_strategy("deelbo"), task, storage, "tiny/deelbo")
    trials = optuna.load_study(study_name="tiny/deelbo", storage=storage).trials
    stored = {t.params["lr"]: t.user_attrs[f"select:{rule}"] for t in trials}
    assert all(t.value == t.user_attrs[f"select:{rule}"] and t.user_attrs["select:rule"] == rule for t in trials)
    assert result.best_params["lr"] == min(stored, key=stored.__getitem__)
    # the stored scores are those of the runs themselves (fit_deelbo is seeded)
    lr = od.tuning.strategies.LEARNING_RATES[1]
    objective, run = od.tuning.trials.fit_deelbo(task, lr)
    assert od.tuning.trials.score_deelbo_run(task, objective, run)[rule] == pytest.approx(stored[lr], rel=1e-6)

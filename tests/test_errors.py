"""Bad input gives a clear error naming the problem, not a traceback from deep inside."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import optuna_deelbo as od
from optuna_deelbo.cli import main


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


def _split(n: int) -> od.Split:
    g = torch.Generator().manual_seed(0)
    return od.Split(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))


def _task(**kw: object) -> od.TaskSpec:
    args: dict[str, object] = {
        "name": "tiny",
        "model_factory": Tiny,
        "train": _split(30),
        "steps": 5,
        "progress": False,
    }
    args.update(kw)
    return od.TaskSpec(**args)  # type: ignore[arg-type]


def _cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    status = main(["compare", *argv])
    err = capsys.readouterr().err
    assert status == 2
    assert "Traceback" not in err
    assert err.startswith("optuna-deelbo: error: ")
    return err


def test_unknown_strategy_cli(capsys: pytest.CaptureFixture[str]) -> None:
    err = _cli_error(capsys, "--strategies", "deelbo,bayesopt")
    assert "unknown strategy 'bayesopt'" in err and "deelbo, grid, tpe" in err


def test_unknown_strategy_api() -> None:
    with pytest.raises(od.ConfigError, match="unknown strategy 'nope'"):
        od.get_strategy("nope")


def test_unknown_prior() -> None:
    with pytest.raises(od.ConfigError, match="unknown prior 'l3'"):
        _task(prior="l3")


def test_unknown_prior_cli(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--prior", "gaussian"])
    assert exc.value.code == 2
    assert "invalid choice: 'gaussian'" in capsys.readouterr().err


def test_n_zero_task() -> None:
    with pytest.raises(od.ConfigError, match=r"N = 0"):
        _task(train=od.Split(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)))


def test_n_zero_cli(capsys: pytest.CaptureFixture[str]) -> None:
    err = _cli_error(capsys, "--n-train", "0", "--storage", "sqlite:///:memory:")
    assert "n_train must be a positive integer, got 0" in err


def test_n_zero_train_loop() -> None:
    model = Tiny()
    groups = od.ParameterGroups.split(model, ("head.",))
    objective = od.MAPObjective(model, groups, od.IsotropicGaussian.zero(groups.numel(model, "body")), 0.0)
    with pytest.raises(od.ConfigError, match=r"N = 0"):
        od.train(objective, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), od.TrainConfig(lr=0.1))


@pytest.mark.parametrize("lr", [0.0, -1e-3, float("nan"), float("inf")])
def test_bad_learning_rate(lr: float) -> None:
    with pytest.raises(od.ConfigError, match="learning rate must be a positive finite number"):
        od.TrainConfig(lr=lr)
    with pytest.raises(od.ConfigError, match="learning rate must be a positive finite number"):
        od.fit_deelbo(_task(), lr)


@pytest.mark.parametrize("kappa", [0.0, -2.0, float("nan")])
def test_bad_kappa(kappa: float) -> None:
    with pytest.raises(od.ConfigError, match="kappa must be a positive finite number"):
        _task(kappa=kappa)
    model = Tiny()
    groups = od.ParameterGroups.split(model, ("head.",))
    prior = od.IsotropicGaussian.zero(groups.numel(model, "body"))
    with pytest.raises(od.ConfigError, match="kappa must be a positive finite number"):
        od.DEELBoObjective(model, groups, prior, n_train=10, kappa=kappa)


def test_prior_mean_of_wrong_length() -> None:
    with pytest.raises(od.ConfigError, match=r"prior mean has shape \(7,\) but the model body has 30 weights"):
        _task(prior_mean=torch.zeros(7))


def test_prior_of_wrong_length_for_objective() -> None:
    model = Tiny()
    groups = od.ParameterGroups.split(model, ("head.",))
    with pytest.raises(od.ConfigError, match="body prior covers 5 weights but the model's body has 30"):
        od.MAPObjective(model, groups, od.IsotropicGaussian.zero(5), 1e-3)


def test_ptyl_without_covariance() -> None:
    with pytest.raises(od.ConfigError, match="ptyl prior needs prior_covariance"):
        _task(prior="ptyl")


@pytest.mark.parametrize(
    "url",
    ["not-a-url", "sqlite:////nonexistent-dir/sub/x.db", "nosuchdialect://user@host/db"],
)
def test_storage_that_cannot_be_opened(url: str) -> None:
    with pytest.raises(od.StorageError, match="storage"):
        od.open_storage(url)


def test_storage_cli(capsys: pytest.CaptureFixture[str]) -> None:
    err = _cli_error(capsys, "--storage", "sqlite:////nonexistent-dir/sub/x.db")
    assert "cannot open storage 'sqlite:////nonexistent-dir/sub/x.db'" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    err = _cli_error(capsys, "--device", "cuda")
    assert "CUDA is not available" in err


def test_bad_head_prefix() -> None:
    with pytest.raises(od.ConfigError, match="no parameter name starts with any head prefix"):
        _task(head_prefixes=("classifier.",))


def test_bad_sampler_arguments() -> None:
    with pytest.raises(od.ConfigError, match="base_sampler must be an optuna sampler"):
        od.DEELBoSampler("tpe")  # type: ignore[arg-type]
    with pytest.raises(od.ConfigError, match="learned must be a non-empty sequence"):
        od.DEELBoSampler(__import__("optuna").samplers.RandomSampler(), learned=())


def test_sampler_learned_none_and_grid_listing_a_learned_name() -> None:
    import optuna

    with pytest.raises(od.ConfigError, match="learned must be a non-empty sequence of parameter names, got None"):
        od.DEELBoSampler(optuna.samplers.RandomSampler(), learned=None)  # type: ignore[arg-type]
    grid = optuna.samplers.GridSampler({"lr": [0.1, 0.01], "weight_decay": [1e-3]})
    with pytest.raises(od.ConfigError, match=r"grid lists learned parameter\(s\) \['weight_decay'\]"):
        od.DEELBoSampler(grid)

"""DEELBoRecipe: the named recipes, how a task applies one, and its JSON round trip."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import optuna_deelbo as od
from optuna_deelbo.task._stored import BuiltinTask

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def test_paper_recipe_is_the_reference_codes_settings() -> None:
    paper = od.RECIPES["paper"]
    assert (paper.init_sigma, paper.share_head_sigma, paper.clip_norm, paper.selection) == (
        1e-4,
        True,
        1.0,
        "full-pass",
    )
    assert paper.selection_samples == 10 and paper.sigma_mode == "scalar" and paper.sigma_optimizer == "sgd"


def test_a_task_applies_its_recipe_to_deelbo_runs_only() -> None:
    task, _ = od.digits_task(40, steps=5, pretrain_steps=5, recipe="paper")
    assert task.recipe == od.RECIPES["paper"]
    config = task.deelbo_train_config(0.1)
    assert config.clip_norm == 1.0 and task.train_config(0.1).clip_norm == 10.0  # MAP keeps its clipping
    objective, _ = od.tuning.trials.fit_deelbo(task, 0.1)
    assert list(objective.deelbo.posterior.rho) == ["body"]  # one sigma for body and head
    fresh = od.bayes.DEELBoObjective(
        od.bayes.DEELBo(
            task.build_model(), 40, objective.body_prior, head=objective.groups, init_sigma=1e-4, share_head_sigma=True
        )
    )
    assert float(fresh.deelbo.posterior.flat_sigma("head").detach()) == pytest.approx(1e-4, rel=1e-6)
    assert torch.equal(fresh.deelbo.posterior.flat_sigma("head"), fresh.deelbo.posterior.flat_sigma("body"))


def test_fit_reports_the_recipes_rule_and_score() -> None:
    import optuna

    task, _ = od.digits_task(40, steps=10, pretrain_steps=5, recipe="paper")
    sampler = od.DEELBoSampler(optuna.samplers.GridSampler({"lr": [0.1]}))
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: od.fit(t, task, lr=t.suggest_float("lr", 0.003, 0.1), weight_decay=1e-4), n_trials=1)
    attrs = study.trials[0].user_attrs
    assert attrs["select:rule"] == "full-pass" and study.trials[0].value == attrs["select:full-pass"]
    assert attrs["select:full-pass"] != attrs["train:loss"]


def test_recipe_json_round_trip_and_task_recipe() -> None:
    custom = od.DEELBoRecipe(sigma_optimizer="adam", sigma_lr=0.05, prior_structure="layer", selection="laplace")
    assert od.DEELBoRecipe.from_json(custom.to_json()) == custom
    assert od.DEELBoRecipe.from_json("paper") == od.RECIPES["paper"]
    recipe = BuiltinTask(steps=5, pretrain_steps=5, n_train=40, deelbo=custom.to_json())
    assert BuiltinTask.from_json(recipe.to_json()) == recipe
    task, _ = recipe.build("cpu")
    assert task.recipe == custom
    with pytest.raises(od.ConfigError, match="unknown DE-ELBo recipe 'nope'"):
        BuiltinTask(deelbo="nope")


def test_per_layer_lambda_is_refused_with_a_ptyl_prior() -> None:
    task, _ = od.digits_task(40, steps=5, pretrain_steps=20, prior="ptyl", swag_rank=2)
    with pytest.raises(od.ConfigError, match="prior_structure='layer' needs an isotropic prior"):
        dataclasses.replace(task, recipe=od.DEELBoRecipe(prior_structure="layer"))


def test_per_layer_lambda_run_reports_one_lambda_per_body_tensor() -> None:
    task, _ = od.digits_task(40, steps=20, pretrain_steps=5, recipe=od.DEELBoRecipe(prior_structure="layer"))
    objective, result = od.tuning.trials.fit_deelbo(task, 0.1)
    layers = objective.deelbo.layer_variances()
    assert list(layers) == list(objective.groups.body)
    assert len(set(layers.values())) == len(layers)  # each tensor its own closed form
    sizes = [p.numel() for n, p in objective.model.named_parameters() if n in layers]
    weighted = sum(v * s for v, s in zip(layers.values(), sizes, strict=True)) / sum(sizes)
    with torch.no_grad():
        assert float(objective.deelbo.kl_terms()[1]) == pytest.approx(
            weighted, rel=1e-5
        )  # the logged lambda: their mean
    assert result.history[-1]["lambda"] > 0


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"sigma_mode": "layer"},
        {"sigma_optimizer": "adam", "sigma_lr": 0.05},
        {"share_head_sigma": True},
    ],
    ids=["scalar", "layer", "scalar-adam", "shared-head"],
)
def test_every_allowed_sigma_mode_learns(settings: dict[str, object]) -> None:
    """sigma leaves its initial 1e-3 in a short digits run (v0.1's per-weight sigma under SGD never did)."""
    task, _ = od.digits_task(60, steps=60, pretrain_steps=30, recipe=od.DEELBoRecipe(**settings))  # type: ignore[arg-type]
    objective, _ = od.tuning.trials.fit_deelbo(task, 0.1)
    assert objective.deelbo.posterior.mean_sigma() > 3e-3

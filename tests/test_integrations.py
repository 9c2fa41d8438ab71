"""The Lightning callback and the optunahub package, run for real (CPU, embedded digits)."""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path

import lightning.pytorch as pl
import optuna
import optunahub
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import optuna_deelbo as od
from optuna_deelbo.integrations.lightning import DEELBoCallback

ROOT = Path(__file__).resolve().parents[1]
HUB = ROOT / "optuna_deelbo" / "integrations" / "hub"


class _DigitsModule(pl.LightningModule):
    """A plain LightningModule: conv body with BatchNorm, linear head; training_step returns the mean NLL."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()
        )
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, nesterov=True)


def test_lightning_module_trains_with_deelbo_under_the_sampler() -> None:
    data = od.digits_transfer(100, seed=0)
    loader = DataLoader(TensorDataset(data.train.x, data.train.y), batch_size=32, shuffle=True, drop_last=True)
    callbacks: dict[int, DEELBoCallback] = {}

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        trial.suggest_float("weight_decay", 1e-7, 1e-2, log=True)  # learned by the callback
        torch.manual_seed(0)
        module = _DigitsModule(lr)
        callback = callbacks[trial.number] = DEELBoCallback(len(data.train), head=("head.",), trial=trial)
        trainer = pl.Trainer(
            max_steps=40,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[callback],
        )
        trainer.fit(module, loader)
        assert "training_step" not in module.__dict__  # the module's own method again
        module.eval()
        with torch.no_grad():
            return float(nn.functional.cross_entropy(module(data.test.x), data.test.y))

    sampler = od.DEELBoSampler(optuna.samplers.GridSampler({"lr": [0.1, 0.01]}))
    study = optuna.create_study(sampler=sampler)
    with warnings.catch_warnings():
        warnings.simplefilter("error", od.PlaceholderWarning)  # the callback reported
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        study.optimize(objective, n_trials=2)
    assert len(study.trials) == 2
    for trial in study.trials:
        attrs = trial.user_attrs
        assert attrs["mode"] == "deelbo"
        assert all(math.isfinite(attrs[f"learned:{k}"]) and attrs[f"learned:{k}"] > 0 for k in ("lambda", "tau"))
        reg = callbacks[trial.number].deelbo
        assert reg is not None and attrs["learned:lambda"] == reg.lam
        assert reg.sigma != 1e-3  # the posterior std was in the optimizer and trained
        assert math.isfinite(trial.value)


def test_optunahub_package_loads_and_runs_its_example() -> None:
    package = HUB / "samplers" / "deelbo"
    for name in ("README.md", "LICENSE", "__init__.py", "example.py", "requirements.txt"):
        assert (package / name).is_file(), name
    front = (package / "README.md").read_text().split("---")[1]
    for key in ("author:", "title:", "description:", "tags:", "optuna_versions:", "license:"):
        assert key in front, key
    assert "optuna-deelbo" in (package / "requirements.txt").read_text()
    module = optunahub.load_local_module("samplers/deelbo", registry_root=str(HUB))
    assert module.DEELBoSampler is od.DEELBoSampler
    spec = importlib.util.spec_from_file_location("deelbo_hub_example", package / "example.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    study = example.run(module, n_trials=2)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all(t.user_attrs["learned:weight_decay"] > 0 for t in study.trials)

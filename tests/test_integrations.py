"""The Lightning callback and the optunahub package, run for real (CPU, embedded digits)."""

from __future__ import annotations

import copy
import importlib.util
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import pytest
import torch
from _docs import run_doc_block
from _groups import PROCESSES
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import optuna_deelbo as od
from optuna_deelbo.integrations import optunahub_registry_root
from optuna_deelbo.integrations.lightning import DEELBoCallback

ROOT = Path(__file__).resolve().parents[1]


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
    data = od.data.digits_transfer(100, seed=0)
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


#: The registry template's front matter (optuna/optunahub-registry, template/README.md) and its sections.
_HUB_FRONT_MATTER = ("author", "title", "description", "tags", "optuna_versions", "license")
_HUB_SECTIONS = ("## Abstract", "## Class or Function Names", "## Installation", "## Example")


def test_optunahub_package_matches_the_registry_layout() -> None:
    package = Path(optunahub_registry_root()) / "samplers" / "deelbo"
    for name in ("README.md", "LICENSE", "__init__.py", "example.py", "requirements.txt"):
        assert (package / name).is_file(), name
    readme = (package / "README.md").read_text()
    front = dict(line.split(":", 1) for line in readme.split("---")[1].strip().splitlines())
    assert tuple(front) == _HUB_FRONT_MATTER
    assert "sampler" in [t.strip() for t in front["tags"].strip(" []").split(",")]  # samplers/ packages must
    assert optuna.__version__ in front["optuna_versions"]  # the version this suite ran it with
    positions = [readme.index(section) for section in _HUB_SECTIONS]
    assert positions == sorted(positions)
    assert "optuna-deelbo" in (package / "requirements.txt").read_text()


def test_optunahub_readme_block_loads_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 22, case 10: c55ea9a's README call worked only with the repository root as the working folder."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    run_doc_block("optunahub-example", namespace)
    module = namespace["module"]
    assert module.DEELBoSampler is od.DEELBoSampler  # type: ignore[attr-defined]
    package = Path(optunahub_registry_root()) / "samplers" / "deelbo"
    spec = importlib.util.spec_from_file_location("deelbo_hub_example", package / "example.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    study = example.run(module, n_trials=2)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all(t.user_attrs["learned:weight_decay"] > 0 for t in study.trials)


def test_readme_lightning_example_runs_verbatim_outside_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 22, case 9: the README's Lightning block is complete (no undefined names) and runs from any folder."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme_lightning"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", od.PlaceholderWarning)
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        run_doc_block("lightning-example", namespace)
    study = namespace["study"]
    assert isinstance(study, optuna.Study)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    best = od.best_params(study)
    assert best["weight_decay"] == study.best_trial.user_attrs["learned:weight_decay"] != 1e-7
    assert all(t.user_attrs["learned:sigma"] != 1e-3 for t in study.trials)  # sigma trained


class _NoForwardModule(_DigitsModule):
    """Issue 22, case 9: a LightningModule whose training_step calls the layers and that has no forward()."""

    forward = pl.LightningModule.forward  # type: ignore[assignment]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.head(self.body(x)), y)
        self.log("train/nll", loss)  # muted during the recalibration pass, which runs outside the loop
        return loss


def test_module_without_forward_recalibrates_batchnorm_through_training_step() -> None:
    """c55ea9a raised NotImplementedError after training (BatchNorm recalibration called forward())."""
    data = od.data.digits_transfer(100, seed=0)
    loader = DataLoader(TensorDataset(data.train.x, data.train.y), batch_size=25)
    torch.manual_seed(0)
    module = _NoForwardModule(0.05)
    callback = DEELBoCallback(len(data.train), head=("head.",))
    trainer = pl.Trainer(
        max_steps=8, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.callbacks.append(callback)  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, loader)
    bn = module.body[1]
    assert isinstance(bn, nn.BatchNorm2d)
    with torch.no_grad():  # the statistics of the mean weights' first-layer outputs over the training set
        conv = module.body[0](data.train.x)
    assert torch.allclose(bn.running_mean, conv.mean(dim=(0, 2, 3)), atol=1e-5)
    assert "log" not in module.__dict__  # logging restored


_DDP_SCRIPT = """
import json, os, sys, warnings
import lightning.pytorch as pl
import pytest
import optuna, torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import optuna_deelbo as od
from optuna_deelbo.integrations.lightning import DEELBoCallback
sys.path.insert(0, os.environ["DEELBO_TESTS"])
from test_integrations import _DigitsModule

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
data = od.data.digits_transfer(100, seed=0)
loader = DataLoader(TensorDataset(data.train.x, data.train.y), batch_size=10, shuffle=True)
study = optuna.create_study(study_name="ddp", storage="sqlite:///ddp.db", load_if_exists=True,
                            sampler=od.DEELBoSampler(optuna.samplers.GridSampler({"lr": [0.05, 0.01]})))
rank0 = os.environ.get("LOCAL_RANK", "0") == "0"
trial = study.ask() if rank0 else None
if trial is not None:
    trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    trial.suggest_float("weight_decay", 1e-7, 1e-2, log=True)
pl.seed_everything(0)
module = _DigitsModule(0.05)
callback = DEELBoCallback(n_train=len(data.train), head=("head.",), trial=trial)
trainer = pl.Trainer(max_steps=12, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     callbacks=[callback])
trainer.fit(module, loader)
reg = callback.deelbo
with open(f"rank{trainer.global_rank}.json", "w") as f:
    weights = float(sum(p.double().sum() for p in module.parameters()))
    json.dump({"lambda": reg.lam, "sigma": reg.sigma, "weights": weights}, f)
if trial is not None:
    study.tell(trial, 0.0)
"""


@PROCESSES
def test_ddp_on_two_cpu_ranks_learns_one_lambda_and_reports_once(tmp_path: Path) -> None:
    """Issue 22, item 4: strategy="ddp", 2 CPU ranks (gloo): the ranks agree on weights, sigma and lambda.

    On c55ea9a the posterior std's gradients were not averaged (it is not a parameter of the
    DDP-wrapped module), so each rank trained its own sigma on its own half of the data.
    """
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp_run.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "DEELBO_TESTS": str(Path(__file__).parent), "PL_DISABLE_FORK": "1"}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["weights"] == pytest.approx(ranks[1]["weights"], rel=1e-6)
    assert ranks[0]["sigma"] == pytest.approx(ranks[1]["sigma"], rel=1e-6)
    assert ranks[0]["lambda"] == pytest.approx(ranks[1]["lambda"], rel=1e-6)
    assert ranks[0]["sigma"] != pytest.approx(1e-3, rel=1e-3)  # it trained
    study = optuna.load_study(study_name="ddp", storage=f"sqlite:///{tmp_path / 'ddp.db'}")
    assert len(study.trials) == 1  # rank 1 made no trial of its own
    assert study.trials[0].user_attrs["learned:lambda"] == pytest.approx(ranks[0]["lambda"], rel=1e-6)


def test_a_built_wheel_carries_the_whole_optunahub_folder(tmp_path: Path) -> None:
    """Issue 22, case 10: a wheel held the package's .py files but not its README (front matter) and LICENSE."""
    import shutil
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "optuna_deelbo", source / "optuna_deelbo", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "out").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    folder = "optuna_deelbo/integrations/hub/samplers/deelbo/"
    for name in ("README.md", "LICENSE", "__init__.py", "example.py", "requirements.txt"):
        assert folder + name in names, name


def test_a_resumed_lightning_run_keeps_the_original_prior_mean_and_sigma(tmp_path: Path) -> None:
    """Resuming from a Lightning checkpoint must not take the L2-SP mean from the resumed (trained) weights."""
    data = od.data.digits_transfer(100, seed=0)
    loader = DataLoader(TensorDataset(data.train.x, data.train.y), batch_size=25)
    torch.manual_seed(0)
    module = _DigitsModule(0.05)
    start = torch.cat([p.detach().reshape(-1).clone() for n, p in module.named_parameters() if n.startswith("body.")])

    def trainer(steps: int, callback: DEELBoCallback) -> pl.Trainer:
        return _trainer(tmp_path, [callback], steps, enable_checkpointing=True)

    first = DEELBoCallback(len(data.train), head=("head.",), recalibrate_batchnorm=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        run = trainer(4, first)
        run.fit(module, loader)
        path = tmp_path / "after4.ckpt"
        run.save_checkpoint(path)
        assert first.deelbo is not None
        sigma_at_4 = first.deelbo.sigma
        resumed = DEELBoCallback(len(data.train), head=("head.",), recalibrate_batchnorm=False)
        trainer(4, resumed).fit(_DigitsModule(0.05), loader, ckpt_path=str(path))  # nothing left to train
    assert resumed.deelbo is not None
    assert torch.equal(resumed.deelbo.body_prior.mean, start)  # the original start, not the weights after 4 steps
    assert resumed.deelbo.sigma == pytest.approx(sigma_at_4, rel=1e-6)


# --- issue 32: a well-behaved Lightning callback ---------------------------------------------------------------


def _digits_loader() -> DataLoader:  # type: ignore[type-arg]
    data = od.data.digits_transfer(100, seed=0)
    return DataLoader(TensorDataset(data.train.x, data.train.y), batch_size=25)


def _trainer(tmp_path: Path, callbacks: list[pl.Callback], steps: int, **settings: Any) -> pl.Trainer:
    """A quiet CPU Trainer of ``steps`` steps (no logger, bar or summary; no checkpointing unless asked)."""
    return pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **{"enable_checkpointing": False, **settings},
    )


def _fit_with(trainer: pl.Trainer, module: pl.LightningModule, loader: Any, **kw: Any) -> pl.Trainer:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, loader, **kw)
    return trainer


def _fit(tmp_path: Path, module: pl.LightningModule, callbacks: list[pl.Callback], steps: int, **kw: Any) -> pl.Trainer:
    return _fit_with(_trainer(tmp_path, callbacks, steps), module, _digits_loader(), **kw)


def _callback() -> DEELBoCallback:
    return DEELBoCallback(100, head=("head.",), recalibrate_batchnorm=False)


def _rho(callback: DEELBoCallback) -> torch.Tensor:
    assert callback.deelbo is not None
    return torch.cat([p.detach().reshape(-1).clone() for p in callback.deelbo.sigma_parameters()])


def test_a_second_fit_and_a_resume_into_the_same_callback_continue_the_posterior(tmp_path: Path) -> None:
    """Issue 32, 9 and 10: every fit built a new DE-ELBo: a second fit restarted rho at init_sigma and took the
    L2-SP mean again from the trained weights; a resume (ckpt_path) loaded the checkpoint into the old one."""
    torch.manual_seed(0)
    module, callback = _DigitsModule(0.05), _callback()
    run = _fit(tmp_path, module, [callback], 4)
    first, rho_4 = callback.deelbo, _rho(callback)
    assert first is not None
    prior_mean = first.body_prior.mean.clone()
    run.save_checkpoint(tmp_path / "after4.ckpt")
    _fit(tmp_path, module, [callback], 8)  # a second fit, further
    assert callback.deelbo is first and torch.equal(first.body_prior.mean, prior_mean)
    assert not torch.equal(_rho(callback), rho_4)  # trained on from step 4's rho
    init = torch.full_like(rho_4, float(_rho(_fresh_callback(module))[0]))
    assert float((rho_4 - init).abs().max()) > 0
    # the same callback, a resume from step 4: rho is the checkpoint's when training starts again
    seen: list[torch.Tensor] = []

    class Probe(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            seen.append(_rho(callback))

    _fit(tmp_path, module, [callback, Probe()], 6, ckpt_path=str(tmp_path / "after4.ckpt"))
    assert torch.equal(seen[0], rho_4)
    assert torch.equal(callback.deelbo.body_prior.mean, prior_mean)  # type: ignore[union-attr]


def _fresh_callback(module: pl.LightningModule) -> DEELBoCallback:
    """A callback with a DE-ELBo over ``module`` at init (rho at init_sigma), built as on_fit_start builds it."""
    callback = _callback()
    callback.deelbo = od.DEELBo(module, 100, head=("head.",))
    return callback


def test_resuming_with_sigma_at_its_floor_is_not_called_a_wiring_mistake(tmp_path: Path) -> None:
    """Issue 32, 11: rho near -201 (sigma at the floor, gradient ~0) does not move; rho is in the stepping
    optimizer, so the wiring is right and the check must not say 'the optimizer was built from model.parameters()'."""

    class PlainSGD(_DigitsModule):  # no momentum: nothing moves rho but its gradient, ~0 at the floor
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.lr)

    torch.manual_seed(0)
    module, callback = PlainSGD(0.05), _callback()
    run = _fit(tmp_path, module, [callback], 2)
    assert callback.deelbo is not None
    with torch.no_grad():
        for rho in callback.deelbo.sigma_parameters():
            rho.fill_(-201.0)
    run.save_checkpoint(tmp_path / "floor.ckpt")
    resumed = _callback()
    _fit(tmp_path, PlainSGD(0.05), [resumed], 8, ckpt_path=str(tmp_path / "floor.ckpt"))  # no ConfigError
    assert torch.equal(_rho(resumed), torch.full_like(_rho(resumed), -201.0))  # trained, and unmoved at the floor


def test_a_checkpoint_saved_without_the_callback_is_refused_with_the_fix(tmp_path: Path) -> None:
    """Issue 32, 12: torch's 'loaded state dict has a different number of parameter groups', no word of what to do."""
    torch.manual_seed(0)
    plain = _fit(tmp_path, _DigitsModule(0.05), [], 2)
    plain.save_checkpoint(tmp_path / "plain.ckpt")
    with pytest.raises(od.ConfigError, match=r"saved without DEELBoCallback.*Resume it without the callback"):
        _fit(tmp_path, _DigitsModule(0.05), [_callback()], 4, ckpt_path=str(tmp_path / "plain.ckpt"))


def test_a_training_step_set_on_the_instance_survives_the_fit(tmp_path: Path) -> None:
    """Issue 32, 14: ``model.training_step = my_step`` was deleted after fit (the class's method came back)."""
    torch.manual_seed(0)
    module = _DigitsModule(0.05)
    calls: list[int] = []

    def my_step(batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        calls.append(batch_idx)
        x, y = batch
        return nn.functional.cross_entropy(module(x), y)

    module.training_step = my_step  # type: ignore[method-assign]
    _fit(tmp_path, module, [_callback()], 2)
    assert calls == [0, 1]  # the user's step ran, under the DE-ELBo wrapper
    assert module.__dict__["training_step"] is my_step
    plain = _DigitsModule(0.05)
    _fit(tmp_path, plain, [_callback()], 1)
    assert "training_step" not in plain.__dict__  # a module without one gets none


def test_an_interrupted_and_resumed_lightning_run_equals_the_uninterrupted_one(tmp_path: Path) -> None:
    """Issue 32, exact resume: the draws came from the global generator, which Lightning does not checkpoint
    (a resumed run's loss differed by 0.0038); now from the DE-ELBo's own, saved with the callback's state.
    Lightning's own resume is exact here (a plain module resumed from the same checkpoint: difference 0)."""

    def fit(module: pl.LightningModule, callback: DEELBoCallback, **kw: Any) -> None:
        every_4 = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
        _fit_with(_trainer(tmp_path, [callback, every_4], 8, enable_checkpointing=True), module, _digits_loader(), **kw)

    torch.manual_seed(0)
    whole, whole_cb = _DigitsModule(0.05), _callback()
    fit(whole, whole_cb)  # two epochs of 4 batches, a checkpoint after each
    torch.manual_seed(123)  # the resumed process starts from another global state
    resumed, resumed_cb = _DigitsModule(0.05), _callback()
    fit(resumed, resumed_cb, ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=4.ckpt"))
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(_rho(whole_cb), _rho(resumed_cb))
    assert whole_cb.deelbo is not None and resumed_cb.deelbo is not None
    assert resumed_cb.deelbo.lam == whole_cb.deelbo.lam


class _Linear(pl.LightningModule):
    """A linear classifier on 4 features; SGD without momentum (one step shows the gradient itself)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(x)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_gradient_accumulation_adds_the_kl_once_per_optimizer_step(tmp_path: Path) -> None:
    """Issue 32, 3: accumulate_grad_batches was refused; 2 x 4 accumulated must be the step of 1 x 8, sigma
    included (the l2-zero prior pulls the weights and sigma from the first step: a KL counted per micro-batch would
    move rho twice as far). sigma starts at 1e-6, so the micro-batches' own posterior draws change nothing visible."""
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g))

    def one_step(batch: int, accumulate: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        module = _Linear()
        callback = DEELBoCallback(8, prior="l2-zero", head=("head.",), recalibrate_batchnorm=False, init_sigma=1e-6)
        trainer = _trainer(tmp_path, [callback], 1, accumulate_grad_batches=accumulate)
        _fit_with(trainer, module, DataLoader(data, batch_size=batch))
        return [p.detach().clone() for p in module.parameters()], _rho(callback)

    weights_one, rho_one = one_step(8, 1)
    weights_acc, rho_acc = one_step(4, 2)
    assert torch.allclose(rho_one, rho_acc, rtol=1e-4, atol=1e-6)
    for a, b in zip(weights_one, weights_acc, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    start = _rho(_fresh_linear())
    assert float((rho_one - start).abs().max()) > 1e-3  # the KL moved sigma visibly in that one step


def _fresh_linear() -> DEELBoCallback:
    callback = DEELBoCallback(8, prior="l2-zero", head=("head.",))
    callback.deelbo = od.DEELBo(_Linear(), 8, prior="l2-zero", head=("head.",), init_sigma=1e-6)
    return callback


class _Validated(_DigitsModule):
    """Validates every epoch: its checkpoints are written after a validation (``trainer.training`` is False)."""

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_nll", nn.functional.cross_entropy(self(x), y))


@pytest.mark.parametrize("module_class", [_DigitsModule, _NoForwardModule, _Validated])
def test_checkpoints_written_while_training_hold_the_recalibrated_batchnorm_statistics(
    tmp_path: Path, module_class: type[_DigitsModule]
) -> None:
    """Issue 32, 13: BatchNorm was recalibrated in on_fit_end, after the last checkpoint was written: last.ckpt held
    the statistics of the sampled weights (running_var off by up to 0.64) for load_from_checkpoint and test()."""
    torch.manual_seed(0)
    module = module_class(0.05)
    if module_class is _Validated:
        last = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, monitor="val_nll")
    else:
        last = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=4)
    callback = DEELBoCallback(100, head=("head.",))  # recalibrate_batchnorm=True (the default)
    trainer = _trainer(tmp_path, [callback, last], 8, enable_checkpointing=True)
    loaders = {"val_dataloaders": _digits_loader()} if module_class is _Validated else {}
    _fit_with(trainer, module, _digits_loader(), **loaders)
    seen = [module.body[1].running_var.clone()]  # after on_fit_end: the mean weights' statistics
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["state_dict"]
    assert torch.allclose(saved["body.1.running_var"], seen[0], rtol=1e-5, atol=1e-6)
    assert torch.allclose(saved["body.1.running_mean"], module.body[1].running_mean, rtol=1e-5, atol=1e-6)


class _DropoutModule(_DigitsModule):
    """BatchNorm and dropout: the recalibration pass for a checkpoint would draw dropout masks."""

    def __init__(self, lr: float) -> None:
        super().__init__(lr)
        self.body.append(nn.Dropout(0.3))


def test_writing_checkpoints_does_not_change_the_trained_weights(tmp_path: Path) -> None:
    """The recalibration pass for each checkpoint (issue 32, 13) ran dropout and a shuffled loader on the global
    generators: a run that wrote checkpoints drew other masks and batches afterwards, and ended with other weights."""
    data = od.data.digits_transfer(100, seed=0)

    def fit(folder: str, checkpoint: bool) -> _DropoutModule:
        torch.manual_seed(0)
        module = _DropoutModule(0.05)
        loader = DataLoader(TensorDataset(data.train.x, data.train.y), batch_size=25, shuffle=True)
        callbacks: list[pl.Callback] = [DEELBoCallback(100, head=("head.",))]
        settings: dict[str, Any] = {}
        if checkpoint:
            callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=tmp_path / folder, every_n_train_steps=3))
            settings["enable_checkpointing"] = True
        _fit_with(_trainer(tmp_path / folder, callbacks, 8, **settings), module, loader)
        return module

    saving, plain = fit("saving", True), fit("plain", False)
    assert list((tmp_path / "saving").glob("*.ckpt"))  # checkpoints were written (and recalibrated)
    for (name, a), b in zip(saving.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_finetuning_callback_that_unfreezes_later_is_refused_with_the_fix(tmp_path: Path) -> None:
    """Lightning's own BackboneFinetuning tests: the weights it unfreezes mid-fit had no posterior or prior (a KeyError
    from the callback's bookkeeping, or 'the model has no trainable parameters' when it froze everything)."""
    module = _DigitsModule(0.05)
    finetuning = pl.callbacks.BackboneFinetuning(unfreeze_backbone_at_epoch=1)
    module.backbone = module.body  # BackboneFinetuning freezes ``backbone``
    trainer = _trainer(tmp_path, [finetuning, DEELBoCallback(100, head=("head.",))], 4)
    with pytest.raises(od.ConfigError, match=r"cannot train with BackboneFinetuning.*Unfreeze what is to be trained"):
        _fit_with(trainer, module, _digits_loader())


class _UnfreezesLater(_DigitsModule):
    """Freezes its BatchNorm's scale and shift, and adds them to the optimizer at the second epoch."""

    def __init__(self, lr: float) -> None:
        super().__init__(lr)
        self.body[1].requires_grad_(False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=self.lr)

    def on_train_epoch_start(self) -> None:
        if self.current_epoch == 1:
            self.body[1].requires_grad_(True)
            optimizer = self.trainer.optimizers[0]
            optimizer.add_param_group({"params": list(self.body[1].parameters()), "lr": self.lr})


def test_weights_added_to_the_optimizer_mid_fit_are_refused(tmp_path: Path) -> None:
    module = _UnfreezesLater(0.05)
    trainer = _trainer(tmp_path, [DEELBoCallback(100, head=("head.",))], 12, max_epochs=3)
    with pytest.raises(od.ConfigError, match=r"gained 2 parameter tensor.*no posterior and prior"):
        _fit_with(trainer, module, _digits_loader())


def test_the_posterior_std_group_is_named_for_the_learning_rate_monitor(tmp_path: Path) -> None:
    """Lightning's LearningRateMonitor tests: the added group showed up as an anonymous ``pg2``."""
    monitor = pl.callbacks.LearningRateMonitor()
    logger = pl.loggers.CSVLogger(tmp_path, name="run")
    trainer = pl.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
        callbacks=[monitor, DEELBoCallback(100, head=("head.",))],
    )
    _fit_with(trainer, _DigitsModule(0.05), _digits_loader())
    assert trainer.optimizers[0].param_groups[-1]["name"] == "deelbo-sigma"
    header = next(iter((tmp_path / "run").glob("version_*/metrics.csv"))).read_text().splitlines()[0].split(",")
    assert {"lr-SGD/pg1", "lr-SGD/deelbo-sigma"} <= set(header), header


def test_model_pruning_is_refused_with_the_fix(tmp_path: Path) -> None:
    pruning = pl.callbacks.ModelPruning("l1_unstructured", amount=0.5)
    trainer = _trainer(tmp_path, [pruning, DEELBoCallback(100, head=("head.",))], 4)
    with pytest.raises(od.ConfigError, match=r"cannot train with ModelPruning.*Prune after the DE-ELBo run"):
        _fit_with(trainer, _DigitsModule(0.05), _digits_loader())


class _OneCycle(_DigitsModule):
    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.lr, total_steps=20)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def test_a_one_cycle_schedule_schedules_the_posterior_std_too(tmp_path: Path) -> None:
    """Lightning's LearningRateMonitor tests with OneCycleLR: it reads initial_lr, max_lr, ... of every group, and
    the added group had none of them (KeyError at the first scheduler step)."""
    trainer = _fit(tmp_path, _OneCycle(0.05), [DEELBoCallback(100, head=("head.",))], 6)
    model_group, sigma_group = trainer.optimizers[0].param_groups
    assert sigma_group["name"] == "deelbo-sigma" and sigma_group["weight_decay"] == 0.0
    assert sigma_group["lr"] == pytest.approx(model_group["lr"]) and sigma_group["lr"] != pytest.approx(0.05)


class _Crashes(_DigitsModule):
    def __init__(self, lr: float, crash_at_epoch: int | None = None) -> None:
        super().__init__(lr)
        self.crash_at_epoch = crash_at_epoch

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.crash_at_epoch is not None and self.current_epoch >= self.crash_at_epoch:
            raise RuntimeError("CRASH")
        return super().training_step(batch, batch_idx)


def test_a_run_with_weight_averaging_resumes_to_the_uninterrupted_one(tmp_path: Path) -> None:
    """Lightning's EMA resume test: EMAWeightAveraging puts the averaged weights in a checkpoint's state_dict, and
    the callback wrote the current weights' recalibrated BatchNorm statistics over the average's."""

    def fit(module: _Crashes, folder: str, ckpt_path: str | None = None) -> pl.Trainer:
        callbacks: list[pl.Callback] = [
            pl.callbacks.EMAWeightAveraging(decay=0.9),
            DEELBoCallback(100, head=("head.",)),
        ]
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=tmp_path / folder, save_top_k=-1))
        trainer = _trainer(tmp_path / folder, callbacks, -1, max_epochs=3, enable_checkpointing=True)
        _fit_with(trainer, module, _digits_loader(), ckpt_path=ckpt_path)
        return trainer

    torch.manual_seed(0)
    whole = _Crashes(0.05)
    crashing = copy.deepcopy(whole)
    fit(whole, "whole")
    crashing.crash_at_epoch = 1
    with pytest.raises(RuntimeError, match="CRASH"):
        fit(crashing, "crashed")
    (saved,) = (tmp_path / "crashed").glob("*.ckpt")
    resumed = _Crashes(0.05)
    fit(resumed, "resumed", ckpt_path=str(saved))
    for (name, a), b in zip(whole.named_parameters(), resumed.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), name


class _OddSteps(_DigitsModule):
    """Returns its loss as a (1, 1) tensor, and None (skip the step) for every second batch: Lightning allows both."""

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        if batch_idx % 2:
            return None
        return super().training_step(batch, batch_idx).reshape(1, 1)


def test_a_one_element_loss_and_a_skipped_step_train_as_lightning_trains_them(tmp_path: Path) -> None:
    """Lightning's SpikeDetection tests return a (1, 1) loss, its checkpoint tests None (a ConfigError before)."""
    callback = DEELBoCallback(100, head=("head.",))
    trainer = _fit(tmp_path, _OddSteps(0.05), [callback], 4)
    assert trainer.global_step == 4  # the skipped batches made no optimizer step
    assert callback.deelbo is not None and callback.deelbo.sigma != pytest.approx(1e-3)  # sigma trained


class _Scheduled(_DigitsModule):
    """A learning-rate scheduler built in configure_optimizers, before the callback adds the posterior std's group."""

    def __init__(self, lr: float, kind: str) -> None:
        super().__init__(lr)
        self.kind = kind

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        schedulers: dict[str, Callable[[], Any]] = {
            "step": lambda: torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5),
            "lambda": lambda: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.9**step),
            "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=6),
            "plateau": lambda: torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0),
            "sequential": lambda: torch.optim.lr_scheduler.SequentialLR(
                optimizer,
                [
                    torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.5, total_iters=2),
                    torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9),
                ],
                milestones=[2],
            ),
        }
        config: dict[str, Any] = {"scheduler": schedulers[self.kind](), "interval": "step"}
        if self.kind == "plateau":
            config["monitor"] = "train/nll"
        return {"optimizer": optimizer, "lr_scheduler": config}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("train/nll", loss)
        return loss


@pytest.mark.parametrize("kind", ["step", "lambda", "cosine", "plateau", "sequential"])
def test_a_scheduler_built_before_the_callback_schedules_the_posterior_std_as_the_first_group(
    tmp_path: Path, kind: str
) -> None:
    """Lightning's SWA test with a LambdaLR: torch 2.14's schedulers zip their per-group lists with the optimizer's
    groups strictly, and the added group made every scheduler built in configure_optimizers raise at its first step."""
    trainer = _fit(tmp_path, _Scheduled(0.05, kind), [DEELBoCallback(100, head=("head.",))], 6)
    model_group, sigma_group = trainer.optimizers[0].param_groups
    assert sigma_group["lr"] == pytest.approx(model_group["lr"]), kind
    if kind != "plateau":  # (a plateau's cut depends on the loss)
        assert model_group["lr"] != pytest.approx(0.05), kind  # the schedule moved both


# --- issue 33: the learning-rate-free recipe (Prodigy for the weights, sigma in an Adam of its own) ------------


class _Prodigy(_DigitsModule):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        from prodigyopt import Prodigy

        return Prodigy(self.parameters(), lr=1.0, weight_decay=0.0)


def _sigma_callback(sigma_lr: float | None = 0.05) -> DEELBoCallback:
    return DEELBoCallback(100, head=("head.",), recalibrate_batchnorm=False, sigma_lr=sigma_lr)


def test_prodigy_without_sigma_lr_is_refused_with_the_fix(tmp_path: Path) -> None:
    """rho in Prodigy trains sigma far past the posterior's (PRODIGY_SIGMA): the callback's fix is sigma_lr."""
    torch.manual_seed(0)
    with pytest.raises(od.ConfigError, match=r"Prodigy.*DEELBoCallback\(\.\.\., sigma_lr=0\.05\)"):
        _fit(tmp_path, _Prodigy(1.0), [_sigma_callback(None)], 2)


def test_sigma_lr_trains_rho_in_its_own_adam_once_per_optimizer_step(tmp_path: Path) -> None:
    """Adam's first step moves rho by its learning rate (g / |g|); it steps once per optimizer step (accumulated
    micro-batches too), rho stays out of Prodigy, and its gradient is cleared after each step."""
    torch.manual_seed(0)
    module, callback = _Prodigy(1.0), _sigma_callback()
    before = _rho(_fresh_callback(module))
    _fit(tmp_path, module, [callback], 1)
    assert torch.allclose((_rho(callback) - before).abs(), torch.full_like(before, 0.05), rtol=0, atol=1e-4)
    module, callback = _Prodigy(1.0), _sigma_callback()
    run = _fit_with(_trainer(tmp_path, [callback], 3, accumulate_grad_batches=2), module, _digits_loader())
    assert callback.sigma_adam is not None and run.global_step == 3
    rho = callback.sigma_adam.rho
    assert [float(callback.sigma_adam.adam.state[p]["step"]) for p in rho] == [3.0] * len(rho)
    held = {id(p) for g in run.optimizers[0].param_groups for p in g["params"]}
    assert not held & {id(p) for p in rho} and all(p.grad is None for p in rho)


def test_a_sigma_lr_run_resumes_to_the_uninterrupted_one_and_the_other_mode_is_refused(tmp_path: Path) -> None:
    """sigma's Adam state is in the callback's checkpoint state: resumed = uninterrupted; a checkpoint of the
    other sigma_lr mode names the fix (not torch's 'different number of parameter groups')."""

    def fit(module: pl.LightningModule, callback: DEELBoCallback, folder: str, **kw: Any) -> None:
        every_4 = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / folder, every_n_train_steps=4, save_top_k=-1)
        _fit_with(_trainer(tmp_path, [callback, every_4], 8, enable_checkpointing=True), module, _digits_loader(), **kw)

    torch.manual_seed(0)
    whole, whole_cb = _Prodigy(1.0), _sigma_callback()
    fit(whole, whole_cb, "own")
    checkpoint = str(tmp_path / "own" / "epoch=0-step=4.ckpt")
    torch.manual_seed(123)
    resumed, resumed_cb = _Prodigy(1.0), _sigma_callback()
    fit(resumed, resumed_cb, "resumed", ckpt_path=checkpoint)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(_rho(whole_cb), _rho(resumed_cb))
    with pytest.raises(od.ConfigError, match=r"saved with sigma_lr \(.*same DEELBoCallback\(sigma_lr=...\)"):
        fit(_DigitsModule(0.05), _callback(), "x", ckpt_path=checkpoint)
    torch.manual_seed(0)
    fit(_DigitsModule(0.05), _callback(), "shared")
    with pytest.raises(od.ConfigError, match=r"saved with sigma_lr=None.*DEELBoCallback\(sigma_lr=None\)"):
        fit(_Prodigy(1.0), _sigma_callback(), "y", ckpt_path=str(tmp_path / "shared" / "epoch=0-step=4.ckpt"))
    with pytest.raises(od.ConfigError, match="sigma_lr"):
        DEELBoCallback(100, sigma_lr=-1.0)


def test_sigma_lr_under_a_loss_scaler_is_refused(tmp_path: Path) -> None:
    """A GradScaler unscales (and skips) the module's optimizer only: sigma's Adam would step on scaled gradients.
    (On a CPU Lightning turns precision='16-mixed' into bf16 with no scaler: the plugin is given explicitly.)"""
    plugin = pl.plugins.MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    torch.manual_seed(0)
    with pytest.raises(od.ConfigError, match=r"loss scaler.*bf16-mixed"):
        _fit_with(_trainer(tmp_path, [_sigma_callback()], 2, plugins=[plugin]), _Prodigy(1.0), _digits_loader())


def test_readme_lightning_lr_free_block_runs_and_learns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Lightning recipe of deelbo-lr-free: Prodigy for the weights, sigma in its own Adam."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme_lightning_lr_free"}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        run_doc_block("lightning-lr-free", namespace)
    callback, trainer = namespace["callback"], namespace["trainer"]
    assert isinstance(callback, DEELBoCallback) and isinstance(trainer, pl.Trainer)
    assert callback.sigma_adam is not None and callback.deelbo is not None
    assert {float(callback.sigma_adam.adam.state[p]["step"]) for p in callback.sigma_adam.rho} == {200.0}
    data = od.data.digits_transfer(100, seed=0)
    assert data.test is not None
    accuracy = od.evaluate(trainer.lightning_module, data.test.x, data.test.y).accuracy
    assert accuracy > 0.9, accuracy  # trained (5 digit classes; chance 0.2); 2026-12-07: 0.974
    assert 1e-3 < callback.deelbo.sigma < 0.5  # not grown past the posterior's, as with rho inside Prodigy

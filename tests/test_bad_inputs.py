"""The catalogue of bad inputs: each gives a clear error naming the problem, never a traceback from deep inside.

One table, :data:`CASES`: a small callable, the exception it must raise and a regex the message
must match (the argument's name or the bad value). CLI rows run ``optuna_deelbo.cli.main`` and
raise :class:`CliFailed` with the last line it printed to stderr after exiting with status 2.
benchmarks/results/reliability.md and the README's "Bad input" section refer to this file.
"""

from __future__ import annotations

import io
import re
import socket
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from torch import nn

import optuna_deelbo as od
from optuna_deelbo.cli import main
from optuna_deelbo.train._checkpoint import CheckpointHook, from_bytes, to_bytes
from optuna_deelbo.tuning import _storage as storage_module
from optuna_deelbo.tuning._checkpoints import Checkpointing
from optuna_deelbo.tuning._study import parse_strategies

optuna.logging.set_verbosity(optuna.logging.ERROR)


class Tiny(nn.Module):
    """4 inputs -> 6 hidden (body, 30 weights) -> 3 classes (head)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


@dataclass(frozen=True)
class Ctx:
    """What a case may use: a fresh temporary directory, pytest's capsys and monkeypatch."""

    tmp: Path
    capsys: pytest.CaptureFixture[str]
    monkeypatch: pytest.MonkeyPatch


class CliFailed(Exception):
    """``optuna-deelbo`` exited with status 2; the message is the last line it printed to stderr."""


Case = Callable[[Ctx], object]


def _split(n: int = 30) -> od.Split:
    g = torch.Generator().manual_seed(0)
    return od.Split(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))


def _task(**kw: Any) -> od.TaskSpec:
    args: dict[str, Any] = {"name": "tiny", "model_factory": Tiny, "train": _split(), "steps": 5, "progress": False}
    args.update(kw)
    return od.TaskSpec(**args)


def _map_objective() -> od.bayes.MAPObjective:
    model = Tiny()
    groups = od.bayes.ParameterGroups.split(model, ("head.",))
    return od.bayes.MAPObjective(model, groups, od.IsotropicGaussian.zero(groups.numel(model, "body")), 0.0)


def _config(lr: float = 0.1) -> od.train.TrainConfig:
    return od.train.TrainConfig(lr=lr, steps=4, batch_size=10, progress=False, log_every=1)


def _fit(ctx: Ctx, trial: Any = None, task: Any = None, **kw: Any) -> float:
    return od.fit(
        optuna.trial.FixedTrial({}) if trial is None else trial,
        _task() if task is None else task,
        **{"lr": 0.1, "weight_decay": 1e-3, **kw},
    )


def _fixed(**kw: Any) -> Case:
    return lambda ctx: _fit(ctx, **kw)


def _other_run_checkpoint(ctx: Ctx) -> object:
    """A checkpoint written at lr = 0.1, resumed by a run at lr = 0.01."""
    states: list[dict[str, Any]] = []
    data = _split()
    od.train.train_model(_map_objective(), data.x, data.y, _config(0.1), checkpoint=CheckpointHook(2, states.append))
    return od.train.train_model(_map_objective(), data.x, data.y, _config(0.01), resume=states[-1])


def _truncated_checkpoint(ctx: Ctx) -> object:
    data = to_bytes({"step": 3, "weights": torch.zeros(100)})
    return from_bytes(data[: len(data) // 2], source="trial-7.pt")


def _list_checkpoint(ctx: Ctx) -> object:
    buffer = io.BytesIO()
    torch.save([1, 2, 3], buffer)
    return from_bytes(buffer.getvalue(), source="list.pt")


def _write_tar_xz(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _cifar(ctx: Ctx, *, archive: bytes | None = None, members: dict[str, bytes] | None = None) -> object:
    """``load_cifar10_jpeg`` on ``ctx.tmp/data`` holding a train archive of ``archive`` bytes or ``members``."""
    data_dir = ctx.tmp / "data"
    data_dir.mkdir(exist_ok=True)
    path = data_dir / "cifar10-train-jpeg.tar.xz"
    if archive is not None:
        path.write_bytes(archive)
    if members is not None:
        _write_tar_xz(path, members)
    return od.data.load_cifar10_jpeg(data_dir, "train", cache_dir=ctx.tmp / "cache")


def _truncated_archive(ctx: Ctx) -> object:
    good = _write_tar_xz(ctx.tmp / "good.tar.xz", {f"train/cat/{i}.jpg": bytes(range(256)) * 40 for i in range(8)})
    return _cifar(ctx, archive=good.read_bytes()[:200])


def _silent_postgres(ctx: Ctx) -> object:
    ctx.monkeypatch.setattr(storage_module, "POSTGRES_CONNECT_TIMEOUT_S", 2)  # the default, 10 s, made short
    with socket.socket() as sock:  # accepts connections (kernel backlog) and never answers: a hung host
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        return od.open_storage(f"postgresql+psycopg://user@127.0.0.1:{sock.getsockname()[1]}/deelbo")


def _maximize_study_fit(ctx: Ctx) -> object:
    study = optuna.create_study(direction="maximize", study_name="wrong-way")
    return _fit(ctx, trial=study.ask())


def _maximize_study_deelbo_sampler(ctx: Ctx) -> object:
    sampler = od.DEELBoSampler(optuna.samplers.GridSampler({"lr": [0.1]}))
    study = optuna.create_study(direction="maximize", sampler=sampler, study_name="wrong-way-deelbo")
    task = _task()

    def objective(trial: optuna.Trial) -> float:
        wd = trial.suggest_float("weight_decay", 1e-7, 1e-2, log=True)
        return od.fit(trial, task, lr=trial.suggest_float("lr", 1e-4, 1e-1, log=True), weight_decay=wd)

    study.optimize(objective, n_trials=1)
    return study


def cli(*argv: str) -> Case:
    """Run ``optuna-deelbo *argv`` (``{tmp}`` is replaced by the case's directory); expect status 2."""

    def run(ctx: Ctx) -> object:
        args = [a.format(tmp=ctx.tmp) for a in argv]
        try:
            status = main(args)
        except SystemExit as exc:  # argparse's own checks (types, choices)
            status = exc.code  # type: ignore[assignment]
        err = ctx.capsys.readouterr().err
        assert status == 2, (status, err)
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert re.match(r"optuna-deelbo( [a-z]+)?: error: ", last), err
        raise CliFailed(last)

    return run


def _foreign_study_worker(ctx: Ctx) -> object:
    """A worker pointed at a study someone made by hand (direction 'maximize', no queued plan)."""
    url = f"sqlite:///{ctx.tmp / 'foreign.db'}"
    optuna.create_study(storage=url, study_name="maxi", direction="maximize")
    return cli("worker", "--storage", url, "--study", "maxi")(ctx)


_MEM = "sqlite:///:memory:"
_NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")

#: (callable, exception type, message regex, id): every bad input the package promises to name.


def _deelbo_loss(nll: object, forward: bool = True) -> object:
    reg = od.DEELBo(Tiny(), n_train=8, head=("head.",))
    if forward:
        reg(torch.zeros(2, 4))
    return reg.loss(nll)  # type: ignore[arg-type]


CASES = [
    # --- od.DEELBo (own training loop) ----------------------------------------------------------
    pytest.param(
        lambda c: od.DEELBo(Tiny().requires_grad_(False), n_train=4),
        od.ConfigError,
        r"no trainable parameters",
        id="deelbo-no-trainable-parameters",
    ),
    pytest.param(
        lambda c: od.DEELBo(Tiny(), n_train=4, head=("fc.",)),
        od.ConfigError,
        r"no parameter name starts with any head prefix \('fc.',\)",
        id="deelbo-head-prefix-matches-nothing",
    ),
    pytest.param(lambda c: od.DEELBo(Tiny(), n_train=0), od.ConfigError, r"n_train \(N\)", id="deelbo-n-train-zero"),
    pytest.param(lambda c: od.DEELBo(Tiny(), n_train=-3), od.ConfigError, r"got -3", id="deelbo-n-train-negative"),
    pytest.param(lambda c: od.DEELBo(Tiny(), n_train=2.5), od.ConfigError, r"got 2.5", id="deelbo-n-train-fraction"),
    pytest.param(lambda c: od.DEELBo(Tiny(), n_train=4, prior="l3"), od.ConfigError, r"l3", id="deelbo-prior-unknown"),
    pytest.param(
        lambda c: od.DEELBo(Tiny(), n_train=4, prior="ptyl"), od.ConfigError, r"SWAG moments", id="deelbo-ptyl-by-name"
    ),
    pytest.param(
        lambda c: od.DEELBo(Tiny(), n_train=4, prior=od.IsotropicGaussian(torch.zeros(3))),
        od.ConfigError,
        r"covers 3 weights but the model's body has 51",
        id="deelbo-prior-size",
    ),
    pytest.param(
        lambda c: od.DEELBo(Tiny(), n_train=4, head_prior=od.IsotropicGaussian(torch.zeros(3))),
        od.ConfigError,
        r"head_prior given but no head",
        id="deelbo-head-prior-without-head",
    ),
    pytest.param(
        lambda c: od.DEELBo("model", n_train=4),  # type: ignore[arg-type]
        od.ConfigError,
        r"must be a torch.nn.Module, got str",
        id="deelbo-model-not-a-module",
    ),
    pytest.param(
        lambda c: _deelbo_loss(torch.ones(2)),
        od.ConfigError,
        r"0-d float tensor, got \(2,\); reduce it with .mean\(\)",
        id="deelbo-loss-not-scalar",
    ),
    pytest.param(lambda c: _deelbo_loss(0.5), od.ConfigError, r"got float", id="deelbo-loss-python-number"),
    pytest.param(
        lambda c: _deelbo_loss(torch.tensor(1.0), forward=False),
        od.ConfigError,
        r"loss\(\) before a sampled forward: call reg\(x\)",
        id="deelbo-loss-before-forward",
    ),
    # --- unknown names ---------------------------------------------------------------------------
    pytest.param(
        lambda c: od.tuning.get_strategy("nope"), od.ConfigError, r"unknown strategy 'nope'", id="strategy-unknown"
    ),
    pytest.param(lambda c: parse_strategies(" , "), od.ConfigError, r"no strategy given", id="strategy-list-empty"),
    pytest.param(lambda c: _task(prior="l3"), od.ConfigError, r"unknown prior 'l3'", id="prior-unknown"),
    pytest.param(
        lambda c: od.DEELBoRecipe(sigma_mode="full"),  # type: ignore[arg-type]
        od.ConfigError,
        r"unknown sigma_mode 'full'",
        id="sigma-mode-unknown",
    ),
    pytest.param(lambda c: _task(recipe="fast"), od.ConfigError, r"unknown DE-ELBo recipe 'fast'", id="recipe-unknown"),
    pytest.param(
        lambda c: od.DEELBoRecipe(selection="val-nll"),  # type: ignore[arg-type]
        od.ConfigError,
        r"unknown selection rule 'val-nll'",
        id="selection-rule-unknown",
    ),
    pytest.param(
        lambda c: od.DEELBoRecipe(sigma_mode="parameter", sigma_optimizer="adam", sigma_lr=0.05),
        od.ConfigError,
        r"sigma_mode='parameter' \(one posterior std per weight\) is not offered for the DE-ELBo",
        id="sigma-parameter-removed",
    ),
    pytest.param(
        lambda c: od.DEELBoRecipe(sigma_optimizer="adam"),
        od.ConfigError,
        r"sigma_optimizer='adam' needs a sigma_lr",
        id="sigma-adam-without-lr",
    ),
    pytest.param(
        lambda c: od.DEELBoRecipe(sigma_mode="layer", share_head_sigma=True),
        od.ConfigError,
        r"share_head_sigma needs sigma_mode='scalar', got 'layer'",
        id="shared-head-sigma-layer-mode",
    ),
    pytest.param(
        lambda c: od.DEELBoRecipe().replace(sigma_learning_rate=0.1),
        od.ConfigError,
        r"unknown recipe settings \['sigma_learning_rate'\]",
        id="recipe-setting-unknown",
    ),
    pytest.param(
        lambda c: od.IsotropicGaussian(torch.zeros(5)).kl_at_optimum_blocks(torch.ones(5), torch.tensor(0.1), [2, 2]),
        od.ConfigError,
        r"block sizes must be positive and sum to the prior's 5 weights, got \[2, 2\]",
        id="per-layer-blocks-mismatch",
    ),
    pytest.param(
        lambda c: od.models.build_backbone("vgg16", 5),
        od.ConfigError,
        r"unknown backbone 'vgg16'",
        id="backbone-unknown",
    ),
    pytest.param(
        lambda c: od.regularizers.Regularization(penalty="l0"),
        od.ConfigError,
        r"unknown penalty 'l0'",
        id="penalty-unknown",
    ),
    pytest.param(
        lambda c: od.regularizers.Regularization(retrain="never"),  # type: ignore[arg-type]
        od.ConfigError,
        r"unknown retrain rule 'never'",
        id="retrain-unknown",
    ),
    pytest.param(
        lambda c: od.tuning.suggest_regularization(optuna.trial.FixedTrial({}), ("foo",)),
        od.ConfigError,
        r"unknown regularizer\(s\) \['foo'\]",
        id="regularizer-unknown",
    ),
    pytest.param(
        lambda c: od.train.resolve_device("tpu"), od.ConfigError, r"unknown device 'tpu'", id="device-unknown"
    ),
    pytest.param(
        lambda c: od.data.load_cifar10_jpeg(c.tmp, split="val"),
        od.ConfigError,
        r"split must be 'train' or 'test'",
        id="cifar-split-unknown",
    ),
    # --- data: empty, mismatched, wrong dtype or shape ---------------------------------------------
    pytest.param(
        lambda c: _task(train=od.Split(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))),
        od.ConfigError,
        r"training set is empty \(N = 0\)",
        id="data-empty-task",
    ),
    pytest.param(
        lambda c: od.train.train_model(
            _map_objective(), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), _config()
        ),
        od.ConfigError,
        r"training set is empty \(N = 0\)",
        id="data-empty-train",
    ),
    pytest.param(
        lambda c: od.evaluate(Tiny(), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)),
        od.ConfigError,
        r"cannot evaluate on an empty data set",
        id="data-empty-evaluate",
    ),
    pytest.param(
        lambda c: od.Split(torch.zeros(3, 4), torch.zeros(4, dtype=torch.int64)),
        od.ConfigError,
        r"x has 3 rows but y has 4",
        id="data-length-mismatch",
    ),
    pytest.param(
        lambda c: od.Split(torch.zeros(3, 4), torch.zeros(3)),
        od.ConfigError,
        r"labels must be int64 class indices, got torch\.float32",
        id="labels-float",
    ),
    pytest.param(
        lambda c: od.Split(torch.zeros(3, 4), torch.zeros(3, dtype=torch.int32)),
        od.ConfigError,
        r"labels must be int64 class indices, got torch\.int32",
        id="labels-int32",
    ),
    pytest.param(
        lambda c: od.train.train_model(_map_objective(), torch.zeros(5, 4), torch.zeros(5), _config()),
        od.ConfigError,
        r"labels y must be int64 class indices, got torch\.float32",
        id="labels-float-train",
    ),
    pytest.param(
        lambda c: od.Split(torch.zeros(3, 4), -torch.ones(3, dtype=torch.int64)),
        od.ConfigError,
        r"labels must be class indices >= 0, got -1",
        id="labels-negative",
    ),
    pytest.param(
        lambda c: od.Split(torch.zeros(3, 4), torch.zeros(3, 1, dtype=torch.int64)),
        od.ConfigError,
        r"labels y must have shape \(N,\), got shape \(3, 1\)",
        id="labels-2d",
    ),
    pytest.param(
        lambda c: _task(train=od.Split(torch.zeros(30, 4), torch.full((30,), 7, dtype=torch.int64))),
        od.ConfigError,
        r"labels go up to 7 \(8 classes\) but the model outputs 3 logits",
        id="labels-beyond-model",
    ),
    pytest.param(
        lambda c: od.Split(__import__("numpy").zeros((3, 4)), torch.zeros(3, dtype=torch.int64)),
        od.ConfigError,
        r"Split x must be a torch\.Tensor, got ndarray",
        id="inputs-numpy",
    ),
    pytest.param(
        lambda c: _task(train=[1, 2, 3]),
        od.ConfigError,
        r"train: expected \(x, y\) tensors, an od\.Split, a torch Dataset.*got list",
        id="train-not-data",
    ),
    pytest.param(
        lambda c: _task(train=od.Split(torch.full((30, 4), float("nan")), torch.zeros(30, dtype=torch.int64))),
        od.ConfigError,
        r"train inputs x hold 120 NaN or infinite value\(s\)",
        id="inputs-nan",
    ),
    pytest.param(
        lambda c: _task(test=od.Split(torch.tensor([[float("inf"), 0, 0, 0]]), torch.zeros(1, dtype=torch.int64))),
        od.ConfigError,
        r"test inputs x hold 1 NaN or infinite value\(s\)",
        id="test-inputs-inf",
    ),
    pytest.param(
        lambda c: _task(train=od.Split(torch.zeros(30, 5), torch.zeros(30, dtype=torch.int64))),
        od.ConfigError,
        r"model cannot run on the training inputs \(x torch\.float32 of shape \(30, 5\)\)",
        id="inputs-wrong-shape",
    ),
    pytest.param(
        lambda c: _task(train=od.Split(torch.zeros(30, 4, dtype=torch.int64), torch.zeros(30, dtype=torch.int64))),
        od.ConfigError,
        r"integer inputs need a train_transform",
        id="inputs-integer",
    ),
    pytest.param(
        lambda c: od.data.DeviceAugment()(torch.zeros(2, 3, 4, 4)),
        od.ConfigError,
        r"DeviceAugment expects uint8 pixels, got torch\.float32",
        id="augment-float-pixels",
    ),
    # --- sizes and step counts -----------------------------------------------------------------------
    pytest.param(
        lambda c: od.digits_task(n_train=-5),
        od.ConfigError,
        r"n_train must be a positive integer, got -5",
        id="n-negative",
    ),
    pytest.param(
        lambda c: od.data.digits_transfer(n_train=3),
        od.ConfigError,
        r"n_train must be between 25 .* got 3",
        id="n-too-small",
    ),
    pytest.param(lambda c: _task(steps=0), od.ConfigError, r"steps must be a positive integer, got 0", id="steps-zero"),
    pytest.param(
        lambda c: od.train.TrainConfig(lr=0.1, steps=-3),
        od.ConfigError,
        r"steps must be a positive integer, got -3",
        id="steps-negative",
    ),
    pytest.param(
        lambda c: od.train.TrainConfig(lr=0.1, steps=10.5),  # type: ignore[arg-type]
        od.ConfigError,
        r"steps must be a positive integer, got 10\.5",
        id="steps-fractional",
    ),
    pytest.param(
        lambda c: _task(batch_size=0),
        od.ConfigError,
        r"batch_size must be a positive integer, got 0",
        id="batch-size-zero",
    ),
    pytest.param(
        lambda c: od.tuning.get_strategy("tpe", tpe_trials=0),
        od.ConfigError,
        r"TPE trials must be a positive integer, got 0",
        id="tpe-trials-zero",
    ),
    pytest.param(
        lambda c: od.data.train_val_split(_split(), 1.5),
        od.ConfigError,
        r"val_fraction must be in \(0, 1\), got 1\.5",
        id="val-fraction",
    ),
    # --- learning rates and other numbers -----------------------------------------------------------
    pytest.param(
        lambda c: od.train.TrainConfig(lr=0.0),
        od.ConfigError,
        r"learning rate \(lr\) must be a number from 1e-10 to 1e\+06, got 0\.0",
        id="lr-zero",
    ),
    pytest.param(
        lambda c: od.tuning.trials.fit_deelbo(_task(), -1e-3),
        od.ConfigError,
        r"learning rate \(lr\) must be a number from 1e-10 to 1e\+06, got -0\.001",
        id="lr-negative",
    ),
    pytest.param(
        _fixed(lr=float("nan")),
        od.ConfigError,
        r"learning rate \(lr\) must be a number from 1e-10 to 1e\+06, got nan",
        id="lr-nan",
    ),
    pytest.param(
        _fixed(lr=float("inf")),
        od.ConfigError,
        r"learning rate \(lr\) must be a number from 1e-10 to 1e\+06, got inf",
        id="lr-inf",
    ),
    pytest.param(
        _fixed(lr="0.1"),
        od.ConfigError,
        r"learning rate \(lr\) must be a number from 1e-10 to 1e\+06, got '0\.1'",
        id="lr-string",
    ),
    pytest.param(
        _fixed(lr=1e308),
        od.ConfigError,
        r"learning rate \(lr\) must be a number from 1e-10 to 1e\+06, got 1e\+308",
        id="lr-above-the-bound",
    ),
    pytest.param(
        lambda c: od.train.TrainConfig(lr=10**10_000),  # past float's range: no OverflowError from the check
        od.ConfigError,
        r"learning rate \(lr\) must be a number from 1e-10 to 1e\+06, got an integer of about 10,001 digits$",
        id="lr-10000-digit-integer",
    ),
    pytest.param(
        lambda c: od.DEELBo(Tiny(), 30).optimizer(torch.optim.SGD, lr=1e308),
        od.ConfigError,
        r"^lr must be a number from 1e-10 to 1e\+06, got 1e\+308",
        id="deelbo-optimizer-lr-above-the-bound",
    ),
    pytest.param(
        lambda c: od.tuning.strategies.get_strategy("grid", learning_rates=[0.1, 2**63]),
        od.ConfigError,
        r"every learning rate must be a number from 1e-10 to 1e\+06, got 9223372036854775808",
        id="strategy-learning-rates-above-the-bound",
    ),
    pytest.param(
        lambda c: od.tuning.strategies.get_strategy("deelbo", learning_rates=[0.1, -0.0]),
        od.ConfigError,
        r"every learning rate must be a number from 1e-10 to 1e\+06, got -0\.0",
        id="strategy-learning-rates-negative-zero",
    ),
    pytest.param(
        lambda c: od.DEELBoSampler(optuna.samplers.GridSampler({"lr": []})),
        od.ConfigError,
        r"grid has no values for \['lr'\]",
        id="lr-grid-empty",
    ),
    pytest.param(
        _fixed(weight_decay=-1.0),
        od.ConfigError,
        r"weight_decay must be a finite number >= 0, got -1\.0",
        id="weight-decay-negative",
    ),
    pytest.param(
        lambda c: _task(kappa=0.0), od.ConfigError, r"kappa must be a positive finite number, got 0\.0", id="kappa-zero"
    ),
    pytest.param(
        lambda c: od.bayes.DEELBoObjective(
            od.bayes.DEELBo(
                Tiny(),
                10,
                od.IsotropicGaussian.zero(30),
                head=od.bayes.ParameterGroups.split(Tiny(), ("head.",)),
                kappa=float("nan"),
            )
        ),
        od.ConfigError,
        r"kappa must be a positive finite number, got nan",
        id="kappa-nan",
    ),
    pytest.param(
        lambda c: od.DEELBoRecipe(init_sigma=0.0),
        od.ConfigError,
        r"init_sigma must be a positive finite number, got 0\.0",
        id="init-sigma-zero",
    ),
    pytest.param(
        lambda c: od.train.TrainConfig(lr=0.1, momentum=1.0),
        od.ConfigError,
        r"momentum must be in \[0, 1\), got 1\.0",
        id="momentum-one",
    ),
    # --- priors ----------------------------------------------------------------------------------------
    pytest.param(
        lambda c: _task(prior_mean=torch.zeros(7)),
        od.ConfigError,
        r"prior mean has shape \(7,\) but the model body has 30 weights",
        id="prior-mean-length",
    ),
    pytest.param(
        lambda c: od.bayes.MAPObjective(
            Tiny(), od.bayes.ParameterGroups.split(Tiny(), ("head.",)), od.IsotropicGaussian.zero(5), 1e-3
        ),
        od.ConfigError,
        r"body prior covers 5 weights but the model's body has 30",
        id="prior-length-objective",
    ),
    pytest.param(
        lambda c: _task(prior="ptyl"), od.ConfigError, r"ptyl prior needs prior_covariance", id="ptyl-no-covariance"
    ),
    pytest.param(
        lambda c: _task(prior="ptyl", prior_covariance=(torch.ones(3), torch.zeros(3, 2))),
        od.ConfigError,
        r"prior_covariance has shapes \(3,\) and \(3, 2\) but the model body has 30 weights",
        id="ptyl-covariance-shape",
    ),
    pytest.param(
        lambda c: od.LowRankGaussian(torch.zeros(5), -torch.ones(5), torch.zeros(5, 2)),
        od.ConfigError,
        r"prior diagonal must be finite and strictly positive",
        id="prior-diagonal-negative",
    ),
    pytest.param(
        lambda c: od.IsotropicGaussian.zero(5).kl(torch.zeros(5), torch.tensor(0.1), -1.0),
        od.ConfigError,
        r"prior variance must be a positive finite number, got -1\.0",
        id="prior-variance-negative",
    ),
    pytest.param(
        lambda c: od.IsotropicGaussian.zero(5).kl(torch.zeros(4), torch.tensor(0.1), 1.0),
        od.ConfigError,
        r"theta must be a flat vector of length 5, got shape \(4,\)",
        id="prior-theta-length",
    ),
    # --- model and task wiring ---------------------------------------------------------------------------
    pytest.param(
        lambda c: _task(head_prefixes=("classifier.",)),
        od.ConfigError,
        r"no parameter name starts with any head prefix",
        id="head-prefix-matches-nothing",
    ),
    pytest.param(
        lambda c: _task(head_prefixes=("",)),
        od.ConfigError,
        r"every trainable parameter is in the head",
        id="head-takes-all",
    ),
    pytest.param(
        lambda c: _task(model_factory=lambda: None),
        od.ConfigError,
        r"model_factory must return an nn\.Module, got NoneType",
        id="factory-not-module",
    ),
    pytest.param(
        _fixed(task=False),
        od.ConfigError,
        r"task must be an optuna_deelbo\.TaskSpec, got bool",
        id="fit-task-not-taskspec",
    ),
    pytest.param(
        lambda c: od.fit("trial", _task(), lr=0.1, weight_decay=0.0),  # type: ignore[arg-type]
        od.ConfigError,
        r"trial must be the objective's optuna trial, got str",
        id="fit-trial-not-trial",
    ),
    # --- sampler and study direction ----------------------------------------------------------------------
    pytest.param(
        lambda c: od.DEELBoSampler("tpe"),  # type: ignore[arg-type]
        od.ConfigError,
        r"base_sampler must be an optuna sampler, got str",
        id="sampler-base-not-sampler",
    ),
    pytest.param(
        lambda c: od.DEELBoSampler(optuna.samplers.RandomSampler(), learned=None),  # type: ignore[arg-type]
        od.ConfigError,
        r"learned must be a non-empty sequence of parameter names, got None",
        id="sampler-learned-none",
    ),
    pytest.param(
        lambda c: od.DEELBoSampler(optuna.samplers.GridSampler({"lr": [0.1, 0.01], "weight_decay": [1e-3]})),
        od.ConfigError,
        r"grid lists learned parameter\(s\) \['weight_decay'\]",
        id="sampler-grid-lists-learned",
    ),
    pytest.param(
        _maximize_study_fit, od.ConfigError, r"study 'wrong-way' has direction 'maximize'", id="study-maximize-fit"
    ),
    pytest.param(
        _maximize_study_deelbo_sampler,
        od.ConfigError,
        r"study 'wrong-way-deelbo' has direction 'maximize'",
        id="study-maximize-deelbo-sampler",
    ),
    # --- schedules, mixing, regularizers, divergence rules -------------------------------------------------
    pytest.param(
        lambda c: od.train.pull_down([], 10), od.ConfigError, r"schedule values must not be empty", id="schedule-empty"
    ),
    pytest.param(
        lambda c: od.train.pull_up([1e-3, float("nan")], 10),
        od.ConfigError,
        r"schedule value #1 must be a finite number >= 0, got nan",
        id="schedule-nan",
    ),
    pytest.param(
        lambda c: od.train.constant(1e-3, 0),
        od.ConfigError,
        r"steps_per_value must be a positive integer, got 0",
        id="schedule-zero-steps",
    ),
    pytest.param(
        lambda c: od.train.AdaptiveFeedback(1e-4, factor=0.5),
        od.ConfigError,
        r"factor must be > 1, got 0\.5",
        id="adaptive-factor",
    ),
    pytest.param(
        lambda c: od.regularizers.BatchMixing(n_classes=5, erasing_p=1.5),
        od.ConfigError,
        r"erasing probability must be in \[0, 1\], got 1\.5",
        id="mixing-erasing-p",
    ),
    pytest.param(
        lambda c: od.regularizers.Regularization(mixup_alpha=-1.0),
        od.ConfigError,
        r"mixup alpha must be a finite number >= 0, got -1\.0",
        id="mixing-alpha",
    ),
    pytest.param(
        lambda c: od.regularizers.Regularization(label_smoothing=1.0),
        od.ConfigError,
        r"label smoothing must be in \[0, 1\), got 1\.0",
        id="mixing-smoothing",
    ),
    pytest.param(
        lambda c: od.regularizers.Regularization(dropout=-0.1),
        od.ConfigError,
        r"dropout must be a probability in \[0, 1\), got -0\.1",
        id="dropout-negative",
    ),
    pytest.param(
        lambda c: od.train.DivergenceRule(max_sigma=-1.0),
        od.ConfigError,
        r"max_sigma must be a positive finite number, got -1\.0",
        id="divergence-max-sigma",
    ),
    pytest.param(
        lambda c: od.train.DivergenceRule(nll_factor=0.5),
        od.ConfigError,
        r"nll_factor must be > 1 .*got 0\.5",
        id="divergence-nll-factor",
    ),
    pytest.param(
        lambda c: od.train.DivergenceRule(patience=0),
        od.ConfigError,
        r"divergence patience must be a positive integer, got 0",
        id="divergence-patience",
    ),
    # --- checkpoints ------------------------------------------------------------------------------------------
    pytest.param(
        lambda c: from_bytes(b"garbage" * 10, source="trial-3.pt"),
        od.CheckpointError,
        r"checkpoint trial-3\.pt is unreadable \(70 bytes; corrupt",
        id="checkpoint-corrupt",
    ),
    pytest.param(
        _truncated_checkpoint,
        od.CheckpointError,
        r"checkpoint trial-7\.pt is unreadable .*zip archive",
        id="checkpoint-truncated",
    ),
    pytest.param(
        _list_checkpoint,
        od.CheckpointError,
        r"checkpoint list\.pt is not an optuna-deelbo-checkpoint/1 file",
        id="checkpoint-not-ours",
    ),
    pytest.param(
        _other_run_checkpoint,
        od.CheckpointError,
        r"checkpoint belongs to another run \(lr: 0\.1 != 0\.01\)",
        id="checkpoint-other-run",
    ),
    pytest.param(
        lambda c: Checkpointing.filesystem(c.tmp / "artifacts", every=0),
        od.ConfigError,
        r"checkpoint interval \(steps\) must be a positive integer, got 0",
        id="checkpoint-interval-zero",
    ),
    pytest.param(
        lambda c: od.models.build_backbone("cifar-resnet20", 5, weights=str(c.tmp / "none.pt")),
        od.ConfigError,
        r"checkpoint '.*none\.pt' does not exist",
        id="backbone-weights-missing",
    ),
    # --- CIFAR-10 archives -------------------------------------------------------------------------------------
    pytest.param(
        lambda c: _cifar(c, archive=b"not an xz file" * 10),
        od.ConfigError,
        r"cannot read CIFAR-10 archive .*cifar10-train-jpeg\.tar\.xz \(corrupt or not a \.tar\.xz file\)",
        id="cifar-archive-corrupt",
    ),
    pytest.param(
        _truncated_archive,
        od.ConfigError,
        r"cannot read CIFAR-10 archive .*cifar10-train-jpeg\.tar\.xz \(corrupt",
        id="cifar-archive-truncated",
    ),
    pytest.param(
        lambda c: _cifar(c, members={"train/cat/0001.jpg": b"not a jpeg"}),
        od.ConfigError,
        r"cannot decode image train/cat/0001\.jpg",
        id="cifar-image-corrupt",
    ),
    pytest.param(
        lambda c: _cifar(c, members={"train/unicorn/0001.jpg": b"x"}),
        od.ConfigError,
        r"unknown class folder 'unicorn'",
        id="cifar-class-unknown",
    ),
    pytest.param(
        lambda c: od.data.load_cifar10_jpeg(c.tmp / "nope"),
        od.ConfigError,
        r"CIFAR-10 data directory .*nope does not exist",
        id="cifar-dir-missing",
    ),
    pytest.param(
        lambda c: od.data.load_cifar10_jpeg(c.tmp, cache_dir=c.tmp),
        od.ConfigError,
        r"no CIFAR-10 train data in .*cifar10-train-jpeg\.tar\.xz",
        id="cifar-dir-empty",
    ),
    # --- storage ---------------------------------------------------------------------------------------------
    pytest.param(
        lambda c: od.open_storage("not-a-url"),
        od.StorageError,
        r"storage must be a SQLAlchemy URL .*'not-a-url'",
        id="storage-not-url",
    ),
    pytest.param(
        lambda c: od.open_storage("sqlite:////nonexistent-dir/sub/x.db"),
        od.StorageError,
        r"cannot open storage 'sqlite:////nonexistent-dir/sub/x\.db': .*unable to open database file",
        id="storage-sqlite-missing-dir",
    ),
    pytest.param(
        lambda c: od.open_storage("nosuchdialect://user@host/db"),
        od.StorageError,
        r"cannot open storage 'nosuchdialect://user@host/db'",
        id="storage-unknown-dialect",
    ),
    pytest.param(
        lambda c: od.open_storage("postgresql+psycopg://127.0.0.1:1/x"),
        od.StorageError,
        r"cannot open storage 'postgresql\+psycopg://127\.0\.0\.1:1/x': .*(refused|failed)",
        id="storage-postgres-refused",
    ),
    pytest.param(
        _silent_postgres,
        od.StorageError,
        r"cannot open storage 'postgresql\+psycopg://.*timeout",
        id="storage-postgres-silent",
    ),
    pytest.param(
        lambda c: od.open_storage(_MEM, heartbeat_interval=10, grace_period=5),
        od.ConfigError,
        r"grace period \(5 s\) must be longer than the heartbeat interval \(10 s\)",
        id="storage-grace-period",
    ),
    pytest.param(
        lambda c: od.open_storage(_MEM, heartbeat_interval=0),
        od.ConfigError,
        r"heartbeat interval \(s\) must be a positive integer, got 0",
        id="storage-heartbeat-zero",
    ),
    # --- the command line ----------------------------------------------------------------------------------------
    pytest.param(
        cli("compare", "--strategies", "deelbo,bayesopt"),
        CliFailed,
        r"unknown strategy 'bayesopt'; choose from deelbo, deelbo-descend, deelbo-halving, deelbo-lr-free, grid, tpe",
        id="cli-strategy-unknown",
    ),
    pytest.param(cli("compare", "--strategies", ","), CliFailed, r"no strategy given", id="cli-strategy-empty"),
    pytest.param(
        cli("compare", "--prior", "gaussian"),
        CliFailed,
        r"argument --prior: invalid choice: 'gaussian'",
        id="cli-prior-unknown",
    ),
    pytest.param(
        cli("compare", "--recipe", "fast"),
        CliFailed,
        r"argument --recipe: invalid choice: 'fast'",
        id="cli-recipe-unknown",
    ),
    pytest.param(
        cli("compare", "--dataset", "mnist"),
        CliFailed,
        r"argument --dataset: invalid choice: 'mnist'",
        id="cli-dataset-unknown",
    ),
    pytest.param(
        cli("compare", "--backbone", "vgg"),
        CliFailed,
        r"argument --backbone: invalid choice: 'vgg'",
        id="cli-backbone-unknown",
    ),
    pytest.param(
        cli("compare", "--steps", "0"),
        CliFailed,
        r"argument --steps: expected an integer from 1 to 10,000,000, got 0",
        id="cli-steps-zero",
    ),
    pytest.param(
        cli("compare", "--batch-size", "-3"),
        CliFailed,
        r"argument --batch-size: expected an integer from 1 to 10,000,000, got -3",
        id="cli-batch-size-negative",
    ),
    pytest.param(
        cli("compare", "--n-train", "0", "--storage", _MEM),
        CliFailed,
        r"argument --n-train: expected an integer from 1 to 10,000,000, got 0",
        id="cli-n-zero",
    ),
    pytest.param(
        cli("compare", "--n-train", "ten"),
        CliFailed,
        r"argument --n-train: expected an integer from 1 to 10,000,000, got 'ten'",
        id="cli-n-text",
    ),
    pytest.param(
        cli("compare", "--storage", "sqlite:////nonexistent-dir/sub/x.db"),
        CliFailed,
        r"cannot open storage 'sqlite:////nonexistent-dir/sub/x\.db'",
        id="cli-storage-missing-dir",
    ),
    pytest.param(
        cli("compare", "--storage", "deelbo.db"),
        CliFailed,
        r"storage must be a SQLAlchemy URL .*got 'deelbo\.db'",
        id="cli-storage-not-url",
    ),
    pytest.param(
        cli("report", "--storage", "postgresql+psycopg://127.0.0.1:1/x"),
        CliFailed,
        r"cannot open storage 'postgresql\+psycopg://127\.0\.0\.1:1/x'",
        id="cli-report-storage-refused",
    ),
    pytest.param(
        cli("report", "--storage", _MEM, "--out", "{tmp}/r.html"),
        CliFailed,
        r"the storage holds no finished optuna-deelbo strategy study",
        id="cli-report-empty-storage",
    ),
    pytest.param(
        cli("compare", "--dataset", "cifar10-jpeg", "--storage", _MEM),
        CliFailed,
        r"cifar10-jpeg needs .*--data-dir",
        id="cli-cifar-no-data-dir",
    ),
    pytest.param(
        cli("compare", "--dataset", "cifar10-jpeg", "--data-dir", "{tmp}/nope", "--storage", _MEM),
        CliFailed,
        r"CIFAR-10 data directory .*nope does not exist",
        id="cli-cifar-data-dir-missing",
    ),
    pytest.param(
        cli("compare", "--device", "tpu", "--storage", _MEM),
        CliFailed,
        r"unknown device 'tpu'",
        id="cli-device-unknown",
    ),
    pytest.param(
        cli("compare", "--device", "cuda", "--storage", _MEM),
        CliFailed,
        r"CUDA is not available",
        id="cli-device-cuda-missing",
        marks=_NO_CUDA,
    ),
    pytest.param(
        cli("worker", "--storage", _MEM, "--study", "nope"),
        CliFailed,
        r"study 'nope' does not exist",
        id="cli-worker-study-missing",
    ),
    pytest.param(
        _foreign_study_worker, CliFailed, r"study 'maxi' has no stored built-in task", id="cli-worker-study-not-planned"
    ),
    pytest.param(
        cli("worker", "--storage", _MEM, "--study", "s", "--heartbeat-interval", "10", "--grace-period", "5"),
        CliFailed,
        r"grace period \(5 s\) must be longer than the heartbeat interval \(10 s\)",
        id="cli-worker-grace-period",
    ),
    pytest.param(
        cli("worker", "--storage", _MEM, "--study", "s", "--max-retry", "-1"),
        CliFailed,
        r"argument --max-retry: expected a retry count from 0 to 1000, got -1",
        id="cli-worker-max-retry",
    ),
    pytest.param(
        cli("compare", "--lrs", "1e308", "--strategies", "deelbo", "--storage", _MEM),
        CliFailed,
        r"argument --lrs: expected a comma list of distinct learning rates from 1e-10 to 1e\+06 .*got '1e308'",
        id="cli-lrs-above-the-bound",
    ),
    pytest.param(
        cli("compare", "--lrs", "99999999999999999999", "--strategies", "grid", "--storage", _MEM),
        CliFailed,
        r"argument --lrs: expected .* got '99999999999999999999'",
        id="cli-lrs-20-digit-integer",
    ),
    pytest.param(
        cli("compare", "--report", "{tmp}/" + "r" * 300 + ".html", "--storage", _MEM),
        CliFailed,
        r"--report .* cannot be written: File name too long",
        id="cli-report-name-too-long",
    ),
    pytest.param(cli("train"), CliFailed, r"argument command: invalid choice: 'train'", id="cli-command-unknown"),
]


@pytest.fixture
def ctx(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Ctx]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Ctx(tmp_path, capsys, monkeypatch)
    torch.set_num_threads(previous)


@pytest.mark.parametrize(("call", "error", "pattern"), CASES)
def test_bad_input(ctx: Ctx, call: Case, error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern) as info:
        call(ctx)
    message = str(info.value)
    assert "Traceback" not in message and len(message) < 600, message


def test_catalogue_is_large_and_distinct() -> None:
    ids = [str(case.id) for case in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 30
    assert sum(i.startswith("cli-") for i in ids) >= 10


def test_the_docs_state_the_catalogue_size() -> None:
    readme = (Path(__file__).resolve().parents[1] / "docs" / "bad-input.md").read_text()
    n_cli = sum(str(case.id).startswith("cli-") for case in CASES)
    assert f"{len(CASES)} bad inputs ({n_cli} through the CLI)" in readme

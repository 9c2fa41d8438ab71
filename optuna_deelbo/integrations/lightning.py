"""``DEELBoCallback``: turn any LightningModule's training into DE-ELBo training (extra ``[lightning]``).

The module stays as it is. At ``fit`` start the callback wraps the module in a
:class:`~optuna_deelbo.bayes.DEELBo` (body prior from the weights at that moment: the
pretrained ones for L2-SP), adds the posterior std to the optimizer (or, with ``sigma_lr``, gives
it an Adam of its own, for a learning-rate-free optimizer such as Prodigy), and runs every
``training_step`` with one posterior draw of the weights, adding ``KL / (kappa N)`` to the loss it
returns. After training it recomputes BatchNorm statistics with the mean weights (one pass
over the training loader, through ``forward`` or, for a module without one, through
``training_step``), logs ``deelbo/lambda``, ``deelbo/sigma`` (and ``deelbo/tau``) every
step, and writes the learned values to the Optuna trial, if one is given.

Under DDP (``strategy="ddp"``) the weights' gradients are averaged over the ranks by DDP and
the posterior std's by the callback (before each optimizer step), so every rank learns the
same sigma and lambda; only global rank 0 writes to the trial.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
import torch
from torch import Tensor

from optuna_deelbo._errors import ConfigError, MissingDependency
from optuna_deelbo._validation import learning_rate
from optuna_deelbo.bayes._batchnorm import batchnorm_layers
from optuna_deelbo.bayes._deelbo import DEELBo
from optuna_deelbo.bayes._priors import GaussianPrior
from optuna_deelbo.bayes._wiring import SigmaAdam, learned_step_name
from optuna_deelbo.models._lora import LORA_INIT_SIGMA, is_peft_model
from optuna_deelbo.tuning._sampler import report_learned

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import BaseFinetuning, ModelPruning
    from lightning.pytorch.trainer.states import TrainerFn
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency(
        "optuna_deelbo.integrations.lightning needs the lightning package: pip install 'optuna-deelbo[lightning]'"
    ) from exc

__all__ = ["SIGMA_GROUP_NAME", "DEELBoCallback"]

#: The ``name`` of the optimizer's parameter group that the callback adds for the posterior std.
SIGMA_GROUP_NAME = "deelbo-sigma"


class DEELBoCallback(pl.Callback):
    """DE-ELBo for a LightningModule whose ``training_step`` returns the batch's mean NLL.

    Args:
        n_train: ``N``, the number of training examples (all ranks together), or the training
            set itself (``len(dataset)``; a loader counts its dataset).
        prior: ``"l2-sp"``, ``"l2-zero"`` or a :class:`~optuna_deelbo.bayes.GaussianPrior` (see :class:`DEELBo`).
        head: parameter-name prefixes of a new head, as the LightningModule names them (``"net.fc."``).
        trial: Optuna trial that gets the ``learned:*`` user attrs after training (optional).
        recalibrate_batchnorm: recompute BatchNorm statistics with the mean weights after training,
            from the training loader's batches through ``module(batch_input(batch))``.
        batch_input: a batch's model input; ``None`` (default): the batch if it is a tensor, else its
            first element, as :meth:`DEELBo.recalibrate_batchnorm` reads a loader.
        sigma_lr: ``None`` (default): the posterior std joins the optimizer (below). A float: it trains
            in an Adam of its own at this constant rate, stepped after each optimizer step (its state in
            the callback's checkpoint state). Needed with a learning-rate-free optimizer (Prodigy: 0.05,
            as the own loop's ``deelbo-lr-free``); refused under a loss scaler (``precision="16-mixed"``
            on a GPU: it would not see sigma's Adam).
        **deelbo_kwargs: passed to :class:`DEELBo` (``init_sigma``, ``sigma_mode``, ``kappa``, ...). A module
            holding a ``peft`` model gets ``init_sigma`` :data:`~optuna_deelbo.models.LORA_INIT_SIGMA` by default.

    The posterior std joins the module's (single) optimizer as a new parameter group at the
    optimizer's first learning rate, with its first group's settings (named ``deelbo-sigma``, no weight
    decay); the schedulers built in ``configure_optimizers`` schedule it as they schedule the first group.
    Gradient accumulation (``accumulate_grad_batches``) adds the KL once per optimizer step, as
    Lightning divides each micro-batch's loss by their number; manual optimisation is refused.
    """

    def __init__(
        self,
        n_train: int | object,
        prior: str | GaussianPrior = "l2-sp",
        *,
        head: Sequence[str] = (),
        trial: optuna.trial.BaseTrial | None = None,
        recalibrate_batchnorm: bool = True,
        batch_input: Callable[[Any], Tensor] | None = None,
        sigma_lr: float | None = None,
        **deelbo_kwargs: Any,
    ) -> None:
        super().__init__()
        if sigma_lr is not None:
            learning_rate(sigma_lr, "DEELBoCallback(sigma_lr=...)")
        self.sigma_lr = sigma_lr
        self.sigma_adam: SigmaAdam | None = None
        if trial is not None and not isinstance(trial, optuna.trial.BaseTrial):
            raise ConfigError(f"trial must be an optuna trial or None, got {type(trial).__name__}")
        self.n_train = n_train
        self.prior = prior
        self.head = tuple(head)
        self.trial = trial
        self.recalibrate = recalibrate_batchnorm
        self.batch_input = batch_input
        self.deelbo_kwargs = deelbo_kwargs
        self.deelbo: DEELBo | None = None
        self._restored: dict[str, Any] | None = None  # a checkpoint's posterior, loaded before fit start
        self._checkpoint_groups: int | None = None  # the resumed checkpoint's optimizer parameter groups
        self._own_step: Any = None  # a training_step the user set on the module instance, put back after fit
        self._covered: set[int] = set()  # ids of the tensors the optimizer may hold: posterior weights and std
        self._optimizer_size = 0  # parameter tensors in the optimizer when fit started (or last checked)
        self._sigma_adam_state: dict[str, Any] | None = None  # a checkpoint's state of sigma's own Adam
        self._checkpoint_sigma_adam: bool | None = None  # whether the resumed checkpoint's state has one

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not pl_module.automatic_optimization:
            raise ConfigError("DEELBoCallback needs automatic optimisation (training_step returns the loss)")
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, BaseFinetuning):
                raise ConfigError(
                    f"DEELBoCallback cannot train with {type(callback).__name__}: it unfreezes weights during "
                    "training, and the DE-ELBo's posterior and prior cover the weights trainable when fit starts, "
                    "so the unfrozen ones would train with no prior (not DE-ELBo). Unfreeze what is to be trained "
                    "before fit (the learned lambda is the pull towards the pretrained weights that freezing "
                    "stands in for), and leave the finetuning callback out"
                )
            if isinstance(callback, ModelPruning):
                raise ConfigError(
                    "DEELBoCallback cannot train with ModelPruning: pruning replaces each pruned weight by "
                    "weight_orig * mask during fit, and the DE-ELBo's posterior is over the weights as they were when "
                    "fit started. Prune after the DE-ELBo run (a second fit with ModelPruning and no DEELBoCallback)"
                )
        # accumulate_grad_batches = G: Lightning divides each micro-batch's loss by G, so the G losses of one step,
        # each its mean NLL + KL / (kappa N), sum to the mean NLL over the G micro-batches + the KL once
        if len(trainer.optimizers) != 1:
            raise ConfigError(f"DEELBoCallback needs exactly one optimizer, the module has {len(trainer.optimizers)}")
        if self.deelbo is None or self.deelbo.model is not pl_module:
            # A fit of another module starts a posterior; a second fit of the same module (or a resume into it)
            # continues its posterior std and keeps the prior mean of the first start. The draws come from a
            # generator of the DE-ELBo's own, saved in checkpoints (Lightning saves no global RNG).
            kwargs = {"noise_seed": torch.initial_seed() % 2**32, **self.deelbo_kwargs}
            if is_peft_model(pl_module):
                kwargs.setdefault("init_sigma", LORA_INIT_SIGMA)  # adapters start at B = 0: see LORA_INIT_SIGMA
            self.deelbo = DEELBo(pl_module, self.n_train, self.prior, head=self.head, **kwargs)
        deelbo = self.deelbo
        if self._restored is not None:
            self._apply(self._restored)
            self._restored = None
        if trainer.world_size > 1:  # the same posterior std on every rank from the start
            for rho in deelbo.sigma_parameters():
                trainer.strategy.broadcast(rho.data, src=0)
        optimizer = trainer.optimizers[0]
        for i, group in enumerate(optimizer.param_groups):  # a scheduler's warm-up may have set lr to 0 already
            learning_rate(group.get("initial_lr", group["lr"]), f"configure_optimizers: param_groups[{i}]['lr']")
        stds = list(deelbo.sigma_parameters())
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        has_stds = any(id(p) in held for p in stds)  # configure_optimizers may hand back one optimizer every fit
        self._refuse_a_checkpoint_without_the_posterior(len(optimizer.param_groups) - has_stds)
        if self.sigma_lr is not None:
            self._attach_sigma_adam(trainer, optimizer, stds)
        elif not has_stds:
            name = learned_step_name(optimizer)
            if name is not None:
                raise ConfigError(
                    f"the module's optimizer ({name}) learns one step size for all it holds, sized for the weights: "
                    "the posterior std must train apart from it. Pass DEELBoCallback(..., sigma_lr=0.05): sigma then "
                    "trains in an Adam of its own"
                )
            first = optimizer.param_groups[0]
            # The first group's settings, the keys a scheduler put there included (OneCycleLR reads initial_lr,
            # max_lr, ... of every group: without them its step raised KeyError); no weight decay (the KL is it);
            # named, so LearningRateMonitor logs it as lr-<Optimizer>/deelbo-sigma, not an anonymous pg<k>.
            group = {k: v for k, v in first.items() if k not in ("params", "name")}
            group.update(params=stds, lr=first.get("initial_lr", first["lr"]), name=SIGMA_GROUP_NAME)
            if "weight_decay" in group:
                group["weight_decay"] = 0.0
            groups = len(optimizer.param_groups)
            optimizer.add_param_group(group)
            for config in trainer.lr_scheduler_configs:  # built in configure_optimizers, before this group
                if getattr(config.scheduler, "optimizer", None) is optimizer:
                    _schedule_like_the_first_group(config.scheduler, groups)
        # What the optimizer may hold: the posterior's weights and its std (checked when the optimizer grows)
        self._covered = {id(p) for p in self._posterior_weights(pl_module)} | {id(p) for p in stds}
        self._optimizer_size = _parameter_count(optimizer)
        self._own_step = pl_module.__dict__.get("training_step")
        original = pl_module.training_step

        def with_kl(loss: Tensor) -> Tensor:
            # Lightning takes any one-element loss (backward() of a (1, 1) tensor works): so does the callback
            return deelbo.loss(loss.reshape(()) if loss.numel() == 1 else loss)

        def training_step(*args: Any, **kwargs: Any) -> Any:
            out = deelbo.call_sampled(original, *args, **kwargs)
            if out is None:  # Lightning skips this batch's optimizer step; so does the DE-ELBo
                return None
            if isinstance(out, Tensor):
                return with_kl(out)
            if isinstance(out, Mapping) and isinstance(out.get("loss"), Tensor):
                return {**out, "loss": with_kl(out["loss"])}
            raise ConfigError("training_step must return the loss tensor, a dict with a 'loss' tensor, or None")

        training_step.deelbo_wrapped = True  # type: ignore[attr-defined]
        pl_module.training_step = training_step  # type: ignore[method-assign]

    def _attach_sigma_adam(self, trainer: pl.Trainer, optimizer: torch.optim.Optimizer, stds: Sequence[Tensor]) -> None:
        """``sigma_lr``: the posterior std's own Adam, stepped after ``optimizer`` (a checkpoint's state restored)."""
        if getattr(trainer.precision_plugin, "scaler", None) is not None:  # precision="16-mixed" on a GPU
            raise ConfigError(
                f"DEELBoCallback(sigma_lr=...) with precision={trainer.precision!r}: the loss scaler unscales and "
                "skips the module's optimizer only, so the posterior std's own Adam would step on scaled gradients; "
                "use precision='bf16-mixed', or sigma_lr=None"
            )
        current = self.sigma_adam
        same_rho = current is not None and [id(p) for p in current.rho] == [id(p) for p in stds]
        if current is not None and current.optimizer is optimizer and same_rho:
            return  # a second fit with the optimizer configure_optimizers handed back: its Adam goes on
        if current is not None:
            current.detach()  # the last fit's optimizer
        assert self.sigma_lr is not None
        self.sigma_adam = SigmaAdam(optimizer, stds, self.sigma_lr)
        state, self._sigma_adam_state = self._sigma_adam_state, None
        if state is not None:
            self.sigma_adam.adam.load_state_dict(state)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        states = checkpoint.get("optimizer_states") or []
        self._checkpoint_groups = len(states[0]["param_groups"]) if len(states) == 1 else None
        own = (checkpoint.get("callbacks") or {}).get(self.state_key) or {}
        self._checkpoint_sigma_adam = isinstance(own, Mapping) and "sigma_adam" in own

    def _refuse_a_checkpoint_without_the_posterior(self, model_groups: int) -> None:
        """A checkpoint saved without this callback (or in the other ``sigma_lr`` mode): say so, not torch's ValueError.

        Args:
            model_groups: the optimizer's parameter groups over the module's weights (without rho's).
        """
        groups, self._checkpoint_groups = self._checkpoint_groups, None
        own_adam, self._checkpoint_sigma_adam = self._checkpoint_sigma_adam, None
        if groups is None:
            return
        if self.sigma_lr is not None and groups == model_groups + 1:
            raise ConfigError(
                "the checkpoint was saved with sigma_lr=None (the posterior std in the optimizer): resume it with "
                "DEELBoCallback(sigma_lr=None), or its optimizer state does not fit"
            )
        if groups == model_groups and own_adam and self.sigma_lr is None:
            raise ConfigError(
                "the checkpoint was saved with sigma_lr (the posterior std in its own Adam): resume it with the same "
                "DEELBoCallback(sigma_lr=...), or its optimizer state does not fit"
            )
        if groups == model_groups and not own_adam:
            raise ConfigError(
                "the checkpoint was saved without DEELBoCallback: its optimizer state has no group for the "
                "posterior std, so the run cannot resume as DE-ELBo. Resume it without the callback, or start a "
                "DE-ELBo run from its weights (load them into the module, fit without ckpt_path)"
            )

    def _posterior_weights(self, pl_module: pl.LightningModule) -> list[Tensor]:
        assert self.deelbo is not None
        params = dict(pl_module.named_parameters())
        return [params[n] for n in (*self.deelbo.groups.body, *self.deelbo.groups.head) if n in params]

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """An optimizer that gained weights outside the posterior (``add_param_group`` mid-fit) is refused."""
        optimizer = trainer.optimizers[0] if len(trainer.optimizers) == 1 else None
        if optimizer is None or _parameter_count(optimizer) == self._optimizer_size:
            return
        uncovered = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in self._covered]
        if uncovered:
            raise ConfigError(
                f"the optimizer gained {len(uncovered)} parameter tensor(s) during fit (add_param_group: a backbone "
                "unfrozen mid-training?) that the DE-ELBo has no posterior and prior for: they would train "
                "without one. Make every weight to be trained trainable before fit starts"
            )
        self._optimizer_size = _parameter_count(optimizer)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.deelbo is None:
            return
        for name, value in self.deelbo.last_terms.items():
            if name != "kl":
                pl_module.log(f"deelbo/{name}", value, on_step=True, on_epoch=False)
        pl_module.log("deelbo/sigma", self.deelbo.sigma, on_step=True, on_epoch=False)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """DDP averages the module's gradients; the posterior std is not in the module, so average it here."""
        if self.deelbo is None or trainer.world_size == 1:
            return
        for rho in self.deelbo.sigma_parameters():
            if rho.grad is not None:
                rho.grad = trainer.strategy.reduce(rho.grad, reduce_op="mean")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore(pl_module)
        if self.deelbo is None:
            return
        loader = trainer.train_dataloader
        if self.recalibrate and loader is not None:
            self._recalibrate(pl_module, loader)
        if self.trial is not None and trainer.is_global_zero:
            report_learned(self.trial, self.deelbo)

    @torch.no_grad()
    def _recalibrate(self, pl_module: pl.LightningModule, loader: Any) -> None:
        """BatchNorm statistics of the mean weights: through ``forward``, or ``training_step`` if there is none."""
        assert self.deelbo is not None
        if self.batch_input is not None:
            self.deelbo.recalibrate_batchnorm(self.batch_input(b) for b in loader)
        elif type(pl_module).forward is not pl.LightningModule.forward:
            self.deelbo.recalibrate_batchnorm(loader)
        else:  # no forward(): the module's own training_step runs the batch (its logging muted)
            pl_module.__dict__["log"] = pl_module.__dict__["log_dict"] = lambda *args, **kwargs: None
            device = pl_module.device
            try:
                self.deelbo.recalibrate_batchnorm(
                    loader,
                    call=lambda batch: pl_module.training_step(_to_device(batch, device), 0),
                )
            finally:
                del pl_module.__dict__["log"], pl_module.__dict__["log_dict"]

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """A checkpoint written during training holds BatchNorm statistics of its mean weights.

        The module's own running statistics are those of the sampled training forwards (they only
        matter in eval mode); ``load_from_checkpoint`` and ``trainer.test(ckpt_path=...)`` predict
        with the checkpoint's, so those are recalibrated (one pass over the training loader) and
        the module's are left as they were: training goes on unchanged.
        """
        tracked = set(batchnorm_layers(pl_module))
        layers = {name: m for name, m in pl_module.named_modules() if m in tracked}
        loader = trainer.train_dataloader
        fitting = trainer.state.fn == TrainerFn.FITTING  # also a checkpoint written after a validation
        if not (self.recalibrate and layers and fitting and self.deelbo is not None and loader is not None):
            return
        weights = checkpoint["state_dict"]
        if not _holds_the_weights_of(weights, pl_module):
            return  # another callback put other weights there (EMA / SWA averages): their statistics are its business
        live = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in layers.items()}
        wrapper = pl_module.__dict__.pop("training_step", None)  # the pass runs the mean weights, not draws
        if self._own_step is not None:
            pl_module.__dict__["training_step"] = self._own_step
        try:
            self._recalibrate(pl_module, loader)
            for name, m in layers.items():
                for key, value in m.state_dict().items():
                    if f"{name}.{key}" in weights:
                        weights[f"{name}.{key}"] = value.detach().clone()
        finally:
            for name, m in layers.items():
                m.load_state_dict(live[name])
            if wrapper is not None:
                pl_module.__dict__["training_step"] = wrapper

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore(pl_module)

    def _restore(self, pl_module: pl.LightningModule) -> None:
        """The module's own training_step again: the class's, or the one the user set on the instance."""
        step = pl_module.__dict__.get("training_step")
        if step is None or not getattr(step, "deelbo_wrapped", False):
            return
        if self._own_step is not None:
            pl_module.__dict__["training_step"] = self._own_step
        else:
            del pl_module.__dict__["training_step"]
        self._own_step = None

    def state_dict(self) -> dict[str, Any]:
        """The posterior std (``rho``), the priors (the L2-SP mean) and sigma's own Adam (``sigma_lr``) for checkpoints.

        The weights are the module's own (in the checkpoint already). A run resumed from the
        checkpoint keeps the prior mean of the original start, not the resumed weights.
        """
        if self.deelbo is None:
            return {}
        state: dict[str, Any] = {"deelbo": self.deelbo.posterior_state()}
        if self.sigma_adam is not None:
            state["sigma_adam"] = self.sigma_adam.adam.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the posterior std and the priors (Lightning restores callbacks before ``on_fit_start``)."""
        if not ({"deelbo", "posterior"} & set(state_dict)):
            return
        self._restored = state_dict  # applied at fit start, to the posterior of the module being fitted
        self._sigma_adam_state = state_dict.get("sigma_adam")

    def _apply(self, state: dict[str, Any]) -> None:
        assert self.deelbo is not None
        if "deelbo" in state:
            self.deelbo.load_posterior_state(state["deelbo"])
        else:  # checkpoints of optuna-deelbo <= 0.2: the posterior std only
            self.deelbo.posterior.load_state_dict(state["posterior"])


def _to_device(batch: Any, device: torch.device) -> Any:
    """A batch (tensor, tuple, list or dict of tensors) on ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _parameter_count(optimizer: torch.optim.Optimizer) -> int:
    """Parameter tensors over all of ``optimizer``'s groups."""
    return sum(len(group["params"]) for group in optimizer.param_groups)


def _holds_the_weights_of(state_dict: Mapping[str, Any], pl_module: pl.LightningModule) -> bool:
    """Whether a checkpoint's ``state_dict`` holds ``pl_module``'s current parameters (not, e.g., an EMA's)."""
    return all(
        isinstance(state_dict.get(name), Tensor) and torch.equal(state_dict[name], p.detach())
        for name, p in pl_module.named_parameters()
    )


def _schedule_like_the_first_group(scheduler: Any, groups: int) -> None:
    """A scheduler built for ``groups`` parameter groups schedules one more, as it schedules the first.

    torch's schedulers keep per-group lists (:data:`_PER_GROUP_LISTS`) and zip them with the optimizer's
    groups strictly (torch 2.14: a ValueError at the first step once a group was added): each gains a copy
    of its first entry.
    Schedulers holding others (SequentialLR, ChainedScheduler) pass it on to them.
    """
    for inner in getattr(scheduler, "_schedulers", None) or ():
        _schedule_like_the_first_group(inner, groups)
    for name in _PER_GROUP_LISTS:
        value = getattr(scheduler, name, None)
        if isinstance(value, list) and len(value) == groups and groups:
            first = value[0]
            value.append(first.clone() if isinstance(first, Tensor) else copy.copy(first))


#: The per-group lists of torch's schedulers (torch/optim/lr_scheduler.py): one entry per parameter group.
_PER_GROUP_LISTS = (
    "base_lrs",
    "_last_lr",
    "lr_lambdas",
    "min_lrs",
    "max_lrs",
    "base_momentums",
    "max_momentums",
)

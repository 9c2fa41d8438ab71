"""Checks that a user's loop trains a :class:`~optuna_deelbo.bayes.DEELBo` as the DE-ELBo, not something close.

Two mistakes give a plausible result that is not DE-ELBo, with no error from PyTorch:

* an optimizer over ``model.parameters()`` (or the user's own parameter groups) instead of
  ``reg.parameters()``: the posterior std never trains (sigma stays at ``init_sigma``), or
  the weights never train;
* an optimizer with its own weight decay (AdamW's default 0.01): a second pull on top of the
  KL's, which also shrinks sigma's ``rho``;
* ``rho`` in a learning-rate-free optimizer that learns one step size for all it holds (Prodigy,
  D-Adaptation, DoG: :data:`LEARNED_STEP_OPTIMIZERS`): the step is sized for the weights and sigma
  grows far past the posterior's (measured: the message says how far).

:class:`WiringCheck` watches the first optimizer steps of one ``DEELBo``:

* every ``torch.optim.Optimizer`` step (a global pre-step hook, installed only while some
  ``DEELBo`` is being watched) whose parameter groups hold the ``DEELBo``'s weights or
  ``rho`` with a non-zero ``weight_decay``, or that holds ``rho`` and is one of
  :data:`LEARNED_STEP_OPTIMIZERS`, raises :class:`~optuna_deelbo.ConfigError`;
* a group counts as trained once an optimizer that holds it has stepped, or once its
  fingerprint (one sum per tensor, compared at each ``loss()`` call with the first call's) has
  moved (a hand-written update); once every group is trained the check ends; when one group
  has trained over :data:`PATIENCE` calls and the other has not, it raises. Membership, not
  movement, is what counts for an optimizer: during a learning-rate warm-up (a step of ~1e-7
  leaves ``rho`` ~ -6.9 unchanged in float32 while the weights move) or with sigma at its
  floor (a gradient of ~0) ``rho`` does not move, yet is trained.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from optuna_deelbo._errors import ConfigError
from optuna_deelbo.bayes._deelbo_recipe import PRODIGY_SIGMA

__all__ = ["FIX", "LEARNED_STEP_OPTIMIZERS", "PATIENCE", "SigmaAdam", "WiringCheck", "learned_step_name"]

#: Class names of optimizers that learn one step size for everything they hold (prodigyopt's Prodigy,
#: dadaptation's, dog-optimizer's): ``rho`` must train in its own optimizer, e.g. Adam at 0.05.
LEARNED_STEP_OPTIMIZERS: tuple[str, ...] = (
    "Prodigy",
    "DAdaptAdam",
    "DAdaptAdaGrad",
    "DAdaptAdan",
    "DAdaptLion",
    "DAdaptSGD",
    "DoG",
    "LDoG",
)


def learned_step_name(optimizer: torch.optim.Optimizer) -> str | None:
    """The class name of ``optimizer`` if it learns one step size for all it holds (:data:`LEARNED_STEP_OPTIMIZERS`)."""
    name = type(optimizer).__name__
    return name if name in LEARNED_STEP_OPTIMIZERS else None


#: ``loss()`` calls on which one group moved and the other did not before the check raises.
PATIENCE = 2
#: How to build the optimizer right, named in every message.
FIX = (
    "build it with reg.optimizer(torch.optim.SGD, lr=..., momentum=0.9) or torch.optim.SGD(reg.parameters(), ...), "
    "with weight_decay=0"
)

_watched: weakref.WeakSet[WiringCheck] = weakref.WeakSet()
_hook: Any = None


def _on_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    for check in list(_watched):
        check.inspect(optimizer)


def _watch(check: WiringCheck) -> None:
    global _hook
    _watched.add(check)
    if _hook is None:
        _hook = register_optimizer_step_pre_hook(_on_optimizer_step)


def _unwatch(check: WiringCheck) -> None:
    global _hook
    _watched.discard(check)
    if not _watched and _hook is not None:
        _hook.remove()
        _hook = None


class WiringCheck:
    """Watches one ``DEELBo``'s first steps (see the module docstring).

    Args:
        weights: the posterior means by group, ``{"body": [...], "head": [...]}`` (head may be empty).
        rho: the posterior std's raw parameters.
    """

    def __init__(self, weights: dict[str, list[nn.Parameter]], rho: Iterable[nn.Parameter]) -> None:
        self._groups: dict[str, list[Tensor]] = {g: list(ps) for g, ps in weights.items() if ps}
        self._groups["posterior std"] = list(rho)
        self._ids = {id(p) for ps in self._groups.values() for p in ps}
        self._group_ids = {g: {id(p) for p in ps} for g, ps in self._groups.items()}
        self._stepped: set[str] = set()  # groups an optimizer that holds them has stepped
        self._first: dict[str, Tensor] | None = None
        self._lopsided = 0
        self.done = False
        _watch(self)

    def close(self) -> None:
        """Stop watching (the wiring is right, or the user turned the check off)."""
        self.done = True
        self._first = None
        _unwatch(self)

    def inspect(self, optimizer: torch.optim.Optimizer) -> None:
        """Before ``optimizer`` steps: note which groups it trains; raise if it would apply its own weight decay."""
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self._stepped.update(g for g, ids in self._group_ids.items() if ids & held)
        name = type(optimizer).__name__
        if name in LEARNED_STEP_OPTIMIZERS and self._group_ids["posterior std"] & held:
            self.close()
            raise ConfigError(
                f"the optimizer ({name}) holds the posterior std's rho: {PRODIGY_SIGMA}. Give rho its own Adam, "
                f"torch.optim.Adam(reg.sigma_parameters(), lr=0.05), and {name} the weights only "
                "(list(reg.model.parameters()), weight_decay=0)"
            )
        for group in optimizer.param_groups:
            decay = group.get("weight_decay", 0) or 0
            if decay and any(id(p) in self._ids for p in group["params"]):
                self.close()
                raise ConfigError(
                    f"the optimizer ({type(optimizer).__name__}) applies weight_decay={decay:g} to the DE-ELBo's "
                    "weights: the KL term already is the weight decay (lambda is learned), so this pulls twice and "
                    f"also shrinks the posterior std. Pass weight_decay=0 (AdamW's default is 0.01), or {FIX}"
                )

    @staticmethod
    def _fingerprint(params: list[Tensor]) -> Tensor:
        with torch.no_grad():
            return torch.stack([p.detach().double().sum() for p in params])

    def observe(self) -> None:
        """Call at every ``loss()``: compare the parameters with the first call's; raise on a lopsided update."""
        if self.done:
            return
        now = {g: self._fingerprint(ps) for g, ps in self._groups.items()}
        if self._first is None:
            self._first = now
            return
        moved = {g: g in self._stepped or bool((now[g] != self._first[g]).any()) for g in now}
        if all(moved.values()):
            self.close()
            return
        if not any(moved.values()):
            return
        self._lopsided += 1
        if self._lopsided < PATIENCE:
            return
        still = [g for g, m in moved.items() if not m]
        self.close()
        what = " and ".join(still)
        if "posterior std" in still:
            raise ConfigError(
                "the weights train but the posterior std (sigma) does not: the optimizer was built from "
                "model.parameters() or the model's own parameter groups, so sigma stays at init_sigma and the "
                f"run is not DE-ELBo; {FIX}"
            )
        raise ConfigError(
            f"the posterior std trains but the {what} weights do not: the optimizer leaves them out; {FIX}"
        )


def group_weights(model: nn.Module, body: Iterable[str], head: Iterable[str]) -> dict[str, list[nn.Parameter]]:
    """The model's parameters by group, for :class:`WiringCheck`."""
    params = dict(model.named_parameters())
    return {"body": [params[n] for n in body], "head": [params[n] for n in head]}


def optimizer_groups(
    weights: list[nn.Parameter],
    rho: list[nn.Parameter],
    param_groups: list[dict[str, Any]] | None,
    optimizer_class: Callable[..., torch.optim.Optimizer],
) -> list[dict[str, Any]]:
    """Parameter groups holding every weight and ``rho`` once, each with ``weight_decay=0`` if the class takes one.

    Args:
        param_groups: the user's groups over the model's weights (their own learning rates,
            ...); ``rho`` joins as one more group with the optimizer's defaults.
    """
    takes_decay = "weight_decay" in inspect.signature(optimizer_class).parameters
    if param_groups is None:
        groups: list[dict[str, Any]] = [{"params": list(weights)}]
    else:
        groups = [dict(g) for g in param_groups]
        for g in groups:
            if not isinstance(g, dict) or "params" not in g:
                raise ConfigError("param_groups must be a list of dicts with a 'params' entry, as torch.optim takes")
            g["params"] = list(g["params"])
            if g.get("weight_decay"):
                raise ConfigError(
                    f"param_groups ask for weight_decay={g['weight_decay']:g}; the KL is the weight decay"
                )
        given = [id(p) for g in groups for p in g["params"]]
        if len(given) != len(set(given)):
            raise ConfigError("a parameter appears in more than one of param_groups")
        missing = len({id(p) for p in weights} - set(given))
        if missing:
            raise ConfigError(f"param_groups leave out {missing} of the model's trainable parameter tensors")
        if set(given) & {id(p) for p in rho}:
            raise ConfigError("param_groups hold the posterior std: give the model's weights only, sigma is added")
    groups.append({"params": list(rho)})
    if takes_decay:
        for g in groups:
            g["weight_decay"] = 0.0
    return groups


class SigmaAdam:
    """``rho``'s own Adam, stepped right after each step of the weights' optimizer (an integration's ``sigma_lr``).

    For a host loop that owns one optimizer (the Hugging Face Trainer, a LightningModule's
    ``configure_optimizers``) and a learning-rate-free optimizer in it (Prodigy: one step size for all
    it holds, so ``rho`` must stay out): a step post-hook on ``optimizer`` steps Adam over ``rho`` with
    the gradients the same backward gave, then clears them (the host clears only its optimizer's).
    Adam's learning rate is constant (no host scheduler sees it), as the own loop's ``sigma_optimizer="adam"``.

    Args:
        optimizer: the weights' optimizer; ``rho`` must not be in it.
        rho: the posterior std's raw parameters (:meth:`DEELBo.sigma_parameters`).
        lr: Adam's learning rate (e.g. 0.05, the own loop's ``SIGMA_ADAM_LR``).

    Attributes:
        adam: the ``torch.optim.Adam`` over ``rho`` (its ``state_dict`` goes into checkpoints).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, rho: Iterable[Tensor], lr: float) -> None:
        self.rho = list(rho)
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if held & {id(p) for p in self.rho}:
            raise ConfigError(
                "the weights' optimizer holds the posterior std's rho: with sigma_lr it trains in its own Adam"
            )
        self.optimizer = optimizer
        self.adam = torch.optim.Adam(self.rho, lr=lr)
        self._handle = optimizer.register_step_post_hook(self._step)

    def _step(self, *_: Any) -> None:
        self.adam.step()
        for p in self.rho:
            p.grad = None

    def detach(self) -> None:
        """Stop stepping with ``optimizer`` (a new fit builds a new optimizer)."""
        self._handle.remove()

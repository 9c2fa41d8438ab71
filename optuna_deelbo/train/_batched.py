"""Several DE-ELBo runs that differ only in learning rate (and clipping), trained as one batched model.

A learning-rate search trains ``K`` copies of one model on the same data with the same seed: the
same minibatches, augmentations and posterior draws, only the optimiser steps differ. Here the
``K`` members' sampled weights are stacked and run in **one** forward/backward with
``torch.func.vmap`` over ``functional_call`` (one kernel launch per layer for all members, instead
of ``K``), while every member keeps its own :class:`~optuna_deelbo.train.LoopState`: its own
optimiser (so any per-member learning rate, momentum, Adam for sigma, ... is exact: each member's
gradient is that of its own loss), gradient clipping, cosine schedule, log, divergence check and
pruning. The DE-ELBo maths (sample, closed-form ``lambda*`` / ``tau*``, KL) is each member's own
:class:`~optuna_deelbo.bayes.DEELBo`.

Same streams as the sequential runs: the loop draws one minibatch, its augmentation and mixing, and
one ``eps`` per weight (:meth:`WeightPosterior.draw_noise`) per step, the draws each sequential run
makes from the same seed; member ``k``'s sample is ``theta_k + sigma_k * eps``. Dropout runs with
``vmap(randomness="same")``: one mask for all members, as each sequential run would draw.

BatchNorm: the batched forward normalises with each member's own batch statistics (train mode, as
the sequential forward) but does not update running statistics (a batched in-place update is
impossible); they are stale after training and must be recomputed for each member's mean weights
(:func:`~optuna_deelbo.bayes.recalibrate_batchnorm`, the default DE-ELBo recipe's ``bn_recalibration``).
:func:`batching_obstacle` names what cannot be batched (then run the members one after another).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from optuna_deelbo._errors import ConfigError, TrainingDiverged
from optuna_deelbo._interrupts import raise_pending_interrupt
from optuna_deelbo._optuna_trial import Trial, TrialPruned
from optuna_deelbo.bayes._batchnorm import batchnorm_layers
from optuna_deelbo.bayes._objectives import DEELBoObjective, LossRecord, Objective, _autocast
from optuna_deelbo.train._halving import Rung, rung_cut
from optuna_deelbo.train._hooks import DivergenceCheck, Evaluation, ProgressBar, TrainHook
from optuna_deelbo.train._state import LoopState
from optuna_deelbo.train._types import TrainConfig, TrainResult, resolve_device

__all__ = [
    "PER_MEMBER_SETTINGS",
    "BatchingUnsupported",
    "MemberOutcome",
    "batching_obstacle",
    "probe_batched_forward",
    "train_batched",
]

#: The :class:`TrainConfig` fields members may differ in; every other field must be equal.
PER_MEMBER_SETTINGS: tuple[str, ...] = ("lr", "clip_norm", "sigma_lr")
#: A member's outcome: its log, or why it stopped (diverged, pruned).
MemberOutcome = TrainResult | TrainingDiverged | TrialPruned

Batch = Callable[[Tensor], Tensor]
Mixing = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class BatchingUnsupported(ConfigError):
    """The members cannot be trained as one batched model (the reason says why); train them one by one."""


def _trainable(model: nn.Module) -> list[tuple[str, Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def batching_obstacle(objectives: Sequence[Objective], configs: Sequence[TrainConfig]) -> str | None:
    """Why these members cannot be batched, or ``None`` if they can.

    They can when every objective is a :class:`~optuna_deelbo.bayes.DEELBoObjective` around its own
    model of one architecture (same parameter names and shapes, same frozen weights and buffers:
    only the trained weights differ), and the configs differ only in :data:`PER_MEMBER_SETTINGS`
    and do not ask for ``compile`` or early stopping.
    """
    if not objectives or len(objectives) != len(configs):
        return f"{len(objectives)} objectives for {len(configs)} configs"
    if not all(isinstance(o, DEELBoObjective) for o in objectives):
        return "only DE-ELBo objectives are batched (MAP runs train one by one)"
    models = [o.model for o in objectives]
    if len({id(m) for m in models}) != len(models):
        return "two members share one model object: each member needs its own copy"
    ref = configs[0]
    for config in configs[1:]:
        differing = [
            f.name
            for f in dataclasses.fields(TrainConfig)
            if f.name not in PER_MEMBER_SETTINGS and getattr(config, f.name) != getattr(ref, f.name)
        ]
        if differing:
            return f"the members' training settings differ in {differing} (only {list(PER_MEMBER_SETTINGS)} may)"
    if ref.compile:
        return "compile=True: a compiled model is not run under vmap here"
    if ref.patience is not None:
        return "early stopping (patience) is for MAP runs with a validation set"

    def trained(model: nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        return [(n, tuple(p.shape), p.dtype) for n, p in _trainable(model)]

    def fixed(model: nn.Module) -> dict[str, Tensor]:
        """Frozen weights and buffers: the state_dict entries that are not trained."""
        names = {n for n, _ in _trainable(model)}
        return {k: v for k, v in model.state_dict().items() if k not in names}

    shapes, base_state = trained(models[0]), fixed(models[0])
    for model in models[1:]:
        if trained(model) != shapes:
            return "the members' models differ in their trained parameters' names, shapes or dtypes"
        state = fixed(model)
        if state.keys() != base_state.keys() or not all(torch.equal(state[k], base_state[k]) for k in state):
            return "the members' models differ in frozen weights or buffers (only trained weights may differ)"
    return None


@contextmanager
def _batch_statistics_only(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers normalise by batch statistics and leave their running statistics untouched."""
    layers = batchnorm_layers(model)
    for m in layers:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in layers:
            m.track_running_stats = True


class _Member:
    """One member: its objective, loop state, hooks, trial and (once it stopped) its outcome."""

    def __init__(self, objective: DEELBoObjective, loop: LoopState, trial: Trial | None) -> None:
        self.objective, self.loop, self.trial = objective, loop, trial
        self.hooks: list[TrainHook] = [DivergenceCheck(loop), Evaluation(loop, trial, None, None)]
        self.outcome: MemberOutcome | None = None
        self.record: LossRecord | None = None
        self.reported = False  # its early stop was passed to on_stop

    def stop(self, outcome: MemberOutcome) -> None:
        self.outcome = outcome
        for hook in self.hooks:
            hook.close()


def _batched_logits(model: nn.Module, weights: list[dict[str, Tensor]], xb: Tensor, amp: bool) -> Tensor:
    """Logits ``(K, B, C)`` of ``model`` under each of the ``K`` weight dicts, in one vmap-ed forward."""
    stacked = {name: torch.stack([w[name] for w in weights]) for name in weights[0]}

    def forward(params: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, params, (x,))

    with _autocast(xb, amp):
        try:
            logits: Tensor = vmap(forward, in_dims=(0, None), randomness="same")(stacked, xb)
        except (RuntimeError, NotImplementedError) as exc:
            reason = str(exc).strip().splitlines()[0]
            raise BatchingUnsupported(f"the model cannot run under torch.func.vmap: {reason}") from exc
    return logits


def probe_batched_forward(
    objectives: Sequence[DEELBoObjective], x: Tensor, config: TrainConfig, transform: Batch | None = None
) -> None:
    """One batched forward of the members' mean weights on a batch of ``x`` (no gradient, no state changes).

    Raises:
        BatchingUnsupported: the model fails under ``vmap`` (the message names the operation).
    """
    device = resolve_device(config.device)
    model = objectives[0].model.to(device)
    xb = x[: min(config.batch_size, int(x.shape[0]))].to(device)
    xb = transform(xb) if transform is not None else xb
    weights = [{n: p.detach() for n, p in _trainable(o.model.to(device))} for o in objectives]
    was_training = model.training
    model.train()
    try:
        with torch.no_grad(), _batch_statistics_only(model):
            _batched_logits(model, weights, xb, amp=False)
    finally:
        model.train(was_training)


def train_batched(
    objectives: Sequence[DEELBoObjective],
    x: Tensor,
    y: Tensor,
    configs: Sequence[TrainConfig],
    *,
    trials: Sequence[Trial | None] | None = None,
    desc: str = "batched",
    transform: Batch | None = None,
    mixing: Mixing | None = None,
    on_log: Callable[[int, list[dict[str, float] | None]], None] | None = None,
    rungs: Sequence[Rung] = (),
    on_stop: Callable[[int, TrainingDiverged | TrialPruned], None] | None = None,
    on_rung: Callable[[int, list[float | None]], None] | None = None,
) -> list[MemberOutcome]:
    """Train ``K`` DE-ELBo members at once; each member's result equals its own :func:`train_model` run.

    Args:
        objectives: one :class:`~optuna_deelbo.bayes.DEELBoObjective` per member, each around its own
            model of one architecture (e.g. ``K`` calls of the same factory), on the configs' device.
        x: the training inputs ``(N, ...)``, shared by every member.
        y: the training labels ``(N,)``.
        configs: one per member; they may differ only in :data:`PER_MEMBER_SETTINGS`.
        trials: optional Optuna trial per member: each gets its own reports and may be pruned alone.
        transform: as in :func:`~optuna_deelbo.train.train_model`, drawn once per step for all members.
        mixing: as in :func:`~optuna_deelbo.train.train_model`, drawn once per step for all members.
        on_log: called every ``log_every`` steps with the members' log rows (``None`` for a stopped member).
        rungs: successive halving (:func:`~optuna_deelbo.train.halving_rungs`): after each rung's step the
            members still training are ranked by :meth:`LoopState.rung_loss` and all but the best
            ``keep`` stop with ``optuna.TrialPruned`` (the message gives the rung, loss and rank).
        on_stop: called with ``(member index, outcome)`` as soon as a member stops before the end
            (diverged, pruned, cut at a rung), e.g. to tell its trial at once.
        on_rung: called at each rung with every member's rung loss (``None`` for one that had stopped).

    Returns:
        Per member, in order: its :class:`TrainResult` (``seconds``: the batched run's wall-clock
        over ``K``, the member's share), or the :class:`TrainingDiverged` / ``optuna.TrialPruned``
        that ended it. The other members train on.

    Raises:
        BatchingUnsupported: :func:`batching_obstacle` names a reason, or the model fails under
            ``vmap`` at the first step (nothing has trained then).

    BatchNorm running statistics are not updated (see the module docstring): recompute them for
    each member's mean weights after training.
    """
    obstacle = batching_obstacle(objectives, configs)
    if obstacle is not None:
        raise BatchingUnsupported(obstacle)
    trials = list(trials) if trials is not None else [None] * len(objectives)
    if len(trials) != len(objectives):
        raise ConfigError(f"{len(trials)} trials for {len(objectives)} members")
    members = [
        _Member(o, LoopState.start(o, x, y, c, fingerprinted=False), t)
        for o, c, t in zip(objectives, configs, trials, strict=True)
    ]
    lead = members[0].loop
    config = lead.config
    base = lead.objective.model
    cuts = {rung.step: rung.keep for rung in rungs}
    bar = ProgressBar(lead, f"{desc} x{len(members)}")
    started = time.perf_counter()
    for member in members:
        member.loop.started = started
    try:
        with _batch_statistics_only(base):
            for step in range(1, config.steps + 1):
                raise_pending_interrupt()  # one a finalizer swallowed (optuna_deelbo._interrupts)
                active = [m for m in members if m.outcome is None]
                if not active:
                    break
                _batched_step(step, members, active, base, transform, mixing)
                keep = cuts.get(step)
                if keep is not None:
                    _rung(step, keep, members, on_rung)
                _report_stops(members, on_stop)
                if lead.is_log_step(step) and on_log is not None:
                    rows = [m.loop.result.history[-1] if m.outcome is None else None for m in members]
                    on_log(step, rows)
                bar.end_of_step(step)
    finally:
        bar.close()
    seconds = (time.perf_counter() - started) / len(members)
    outcomes: list[MemberOutcome] = []
    for member in members:
        if member.outcome is None:
            for hook in member.hooks:
                hook.close()
            try:
                for hook in member.hooks:
                    hook.finish()
                result = member.loop.finish()
                result.seconds = seconds
                member.outcome = result
            except TrainingDiverged as exc:
                member.outcome = exc
        assert member.outcome is not None
        outcomes.append(member.outcome)
    return outcomes


def _report_stops(
    members: list[_Member], on_stop: Callable[[int, TrainingDiverged | TrialPruned], None] | None
) -> None:
    """Pass each member that stopped early (and was not passed yet) to ``on_stop``."""
    for index, member in enumerate(members):
        stopped = member.outcome
        if isinstance(stopped, (TrainingDiverged, TrialPruned)) and not member.reported:
            member.reported = True
            if on_stop is not None:
                on_stop(index, stopped)


def _rung(
    step: int, keep: int, members: list[_Member], on_rung: Callable[[int, list[float | None]], None] | None
) -> None:
    """Rank the members still training by their rung loss; all but the best ``keep`` stop, pruned."""
    active = [m for m in members if m.outcome is None]
    losses = [m.loop.rung_loss() for m in active]
    if on_rung is not None:
        by_member = dict(zip(map(id, active), losses, strict=True))
        on_rung(step, [by_member.get(id(m)) for m in members])
    for rank, index in enumerate(rung_cut(losses, keep), start=keep + 1):
        member = active[index]
        member.stop(
            TrialPruned(
                f"successive halving at step {step}: training loss {losses[index]:.4g} ranks {rank} of "
                f"{len(active)}, the best {keep} train on"
            )
        )


def _batched_step(
    step: int,
    members: list[_Member],
    active: list[_Member],
    base: nn.Module,
    transform: Batch | None,
    mixing: Mixing | None,
) -> None:
    """One step of every active member: one batch, one noise draw, one batched forward and backward."""
    lead = active[0]
    for member in active:
        for hook in member.hooks:
            hook.before_forward(step)
    xb, yb = lead.loop.next_batch(transform, mixing)
    for member in members:
        if member is not lead:
            member.loop.batches.next()  # every member's minibatch order stays where its own run's would be
    noise = lead.objective.deelbo.posterior.draw_noise()
    weights = [m.objective.deelbo.sampled_weights(xb, noise=noise) for m in active]
    logits = _batched_logits(base, weights, xb, lead.loop.amp)
    live: list[_Member] = []
    for member, member_logits in zip(active, logits, strict=True):
        try:
            member.record = member.objective.record(member_logits, yb)
            live.append(member)
        except TrainingDiverged as exc:
            member.stop(exc)
    if not live:
        return
    for member in live:
        member.loop.zero_grad()
    torch.stack([m.record.loss for m in live if m.record is not None]).sum().backward()
    for member in live:
        _finish_member_step(step, member)


def _finish_member_step(step: int, member: _Member) -> None:
    """Apply the member's gradients, then its hooks, sums and log row, as :func:`train_model`'s loop body."""
    loop, record = member.loop, member.record
    assert record is not None
    member.record = None
    try:
        loop.apply_gradients()
        logged = loop.logged(record)
        for hook in member.hooks:
            hook.after_step(step, logged)
        loop.accumulate(logged)
        if loop.is_log_step(step):
            row = loop.log_row(step)
            for hook in member.hooks:
                hook.on_log(step, row)
            loop.result.history.append(row)
        loop.result.stopped_step = step
        for hook in member.hooks:
            if hook.end_of_step(step):
                break
    except (TrainingDiverged, TrialPruned) as exc:
        member.stop(exc)

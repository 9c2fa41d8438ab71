"""Does a user's own loop pick the learning rate ``od.fit`` picks? Per-learning-rate table, 3 seeds.

Three ways to train the same DE-ELBo on the embedded digits task (N = 100, learning rates
{0.1, 0.03, 0.01, 0.003}), each written with the public API only:

* ``od.fit``: the package's loop (default recipe: Nesterov, cosine decay, clipping at 10,
  300 steps x 64, BatchNorm recalibration, the final-epoch DE-ELBo as the score);
* ``plain``: what a user writes first: a ``DataLoader`` (batch 20, shuffled), SGD with
  momentum 0.9 at a constant learning rate, 20 epochs (100 steps), no clipping;
* ``plain+cosine``: the same loop with Nesterov, cosine decay and clipping at 10.

Each own loop recalibrates BatchNorm and is scored three ways: ``reg.selection_score(train)``
(the final DE-ELBo over all N, eval mode, 10 posterior draws), the last minibatch's loss and
the final epoch's mean loss. For every rule: the learning rate it picks and its selection
regret (test accuracy of the best learning rate in that loop minus that of the pick; test
accuracy is never used to pick).

    python benchmarks/own_loop_selection.py            # writes benchmarks/results/own-loop-selection.{md,csv}
    python benchmarks/own_loop_selection.py --batchnorm running   # own-loop-selection-running.{md,csv}
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass

import optuna
import torch
from _record import RESULTS, RunRecord, write_csv
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import optuna_deelbo as od

LRS = (1e-1, 3e-2, 1e-2, 3e-3)
RULES = ("selection_score", "last_batch", "final_epoch")


@dataclass
class Row:
    seed: int
    loop: str
    lr: float
    test_accuracy: float
    selection_score: float
    last_batch: float
    final_epoch: float
    weight_decay: float
    sigma: float
    seconds: float


def own_loop(
    task: od.TaskSpec, lr: float, seed: int, *, cosine: bool, batchnorm: str, epochs: int = 20, batch: int = 20
) -> Row:
    """A user's loop over a DataLoader; returns its scores under every rule."""
    start = time.perf_counter()
    train_set = TensorDataset(task.train.x, task.train.y)
    loader = DataLoader(train_set, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(seed))
    model = task.build_model()
    reg = od.DEELBo(model, n_train=train_set, prior="l2-sp", head=task.head_prefixes)
    optimizer = reg.optimizer(torch.optim.SGD, lr=lr, momentum=0.9, nesterov=cosine)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader)) if cosine else None
    torch.manual_seed(seed)
    reg.train()
    losses: list[float] = []
    for _ in range(epochs):
        for xb, yb in loader:
            loss = reg.loss(nn.functional.cross_entropy(reg(xb), yb))
            optimizer.zero_grad()
            loss.backward()
            if cosine:
                nn.utils.clip_grad_norm_(reg.parameters(), 10.0)
            optimizer.step()
            if schedule is not None:
                schedule.step()
            losses.append(float(loss.detach()))
    reg.recalibrate_batchnorm(loader)
    score = reg.selection_score(train_set, batchnorm=batchnorm)  # type: ignore[arg-type]
    assert task.test is not None
    accuracy = od.evaluate(model, task.test).accuracy
    return Row(
        seed=seed,
        loop="plain+cosine" if cosine else "plain",
        lr=lr,
        test_accuracy=accuracy,
        selection_score=score,
        last_batch=losses[-1],
        final_epoch=sum(losses[-len(loader) :]) / len(loader),
        weight_decay=reg.weight_decay,
        sigma=reg.sigma,
        seconds=time.perf_counter() - start,
    )


def fit_rows(task: od.TaskSpec, seed: int) -> list[Row]:
    """``od.fit`` under ``DEELBoSampler(GridSampler(lr))``: its trial value is the recipe's score."""
    study = optuna.create_study(sampler=od.DEELBoSampler(optuna.samplers.GridSampler({"lr": list(LRS)})))
    study.optimize(
        lambda t: od.fit(
            t,
            task,
            lr=t.suggest_float("lr", 1e-4, 1e-1, log=True),
            weight_decay=t.suggest_float("weight_decay", 1e-7, 1e-2, log=True),
        ),
        n_trials=len(LRS),
    )
    rows = []
    for t in sorted(study.trials, key=lambda t: -t.params["lr"]):
        value = float(t.value) if t.value is not None else float("nan")
        rows.append(
            Row(
                seed=seed,
                loop="od.fit",
                lr=t.params["lr"],
                test_accuracy=t.user_attrs["test:accuracy"],
                selection_score=value,
                last_batch=float("nan"),
                final_epoch=value,
                weight_decay=t.user_attrs["learned:weight_decay"],
                sigma=t.user_attrs["learned:sigma"],
                seconds=t.user_attrs["time:trial_s"],
            )
        )
    return rows


def picks(rows: list[Row], rule: str) -> tuple[float, float]:
    """``(lr picked by rule, regret in test-accuracy points)`` among one seed's rows of one loop."""
    best = max(r.test_accuracy for r in rows)
    chosen = min(rows, key=lambda r: getattr(r, rule))
    return chosen.lr, 100 * (best - chosen.test_accuracy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default=None, help="results path without suffix (default by --batchnorm)")
    parser.add_argument(
        "--batchnorm",
        default="batch",
        choices=("batch", "running"),
        help="selection_score's BatchNorm mode (default batch; running = eval mode, the reference code's)",
    )
    args = parser.parse_args()
    record = RunRecord.start()
    suffix = "" if args.batchnorm == "batch" else "-running"
    out = args.out or str(RESULTS / f"own-loop-selection{suffix}")
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows: list[Row] = []
    for seed in (int(s) for s in args.seeds.split(",")):
        task, _ = od.digits_task(n_train=100, seed=seed)
        rows += fit_rows(task, seed)
        for cosine in (False, True):
            rows += [own_loop(task, lr, seed, cosine=cosine, batchnorm=args.batchnorm) for lr in LRS]
        print(f"seed {seed} done", flush=True)
    write_csv(out + ".csv", [asdict(r) for r in rows])
    lines = [f"# Own-loop learning-rate selection (digits, N = 100), selection_score(batchnorm={args.batchnorm!r})"]
    lines += ["", record.header(), ""]
    lines += ["## Picks and selection regret (test-accuracy points; 0 = the pick is the loop's best lr)", ""]
    lines += ["| seed | loop | rule | picked lr | regret | od.fit's pick |", "|---|---|---|---|---|---|"]
    seeds = sorted({r.seed for r in rows})
    for seed in seeds:
        fit_pick, _ = picks([r for r in rows if r.seed == seed and r.loop == "od.fit"], "selection_score")
        for loop in ("od.fit", "plain", "plain+cosine"):
            mine = [r for r in rows if r.seed == seed and r.loop == loop]
            for rule in RULES if loop != "od.fit" else ("selection_score",):
                lr, regret = picks(mine, rule)
                shown = "trial value (final-epoch DE-ELBo)" if loop == "od.fit" else rule
                lines.append(f"| {seed} | {loop} | {shown} | {lr:g} | {regret:.2f} | {fit_pick:g} |")
    lines += ["", "## Per learning rate", ""]
    lines += [
        "| seed | loop | lr | test acc | selection_score | last batch | final epoch | learned wd | sigma | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.seed} | {r.loop} | {r.lr:g} | {100 * r.test_accuracy:.1f}% | {r.selection_score:.4f} | "
            f"{r.last_batch:.4f} | {r.final_epoch:.4f} | {r.weight_decay:.3g} | {r.sigma:.3g} | {r.seconds:.1f} |"
        )
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

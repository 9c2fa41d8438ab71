"""How far two runs that differ only in float rounding drift apart: the tolerance of batched vs sequential.

Usage: python benchmarks/batched_sensitivity.py [--data-dir ../shared/data] [--seeds 0,1,2] [--lrs 0.1,0.03]
           [--float64-lr 0.03] [--threads 1]

Writes benchmarks/results/batched-sensitivity.md. On Split-CIFAR N = 50 (cifar-resnet20, 200 x 32, as
benchmarks/batched.py and the halving record), per training set and learning rate: the sequential DE-ELBo
run, the same run from weights perturbed by a relative 1e-7 (float32 rounding: one unit in the last
place), and the batched run (the search's 4 learning rates together, ``fit_deelbo_batched``, as the
halving record's ``deelbo-batched`` study). If the batched run is as far from the sequential one as the
perturbed run is, the difference is the training dynamics amplifying rounding, not the batching. The
float64 pair (sequential and batched, training set 0) checks the batching itself at full length: in
float64 rounding stays ~1e-16 and the two runs must end equal.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

import optuna_deelbo as od
from optuna_deelbo.tuning.trials import deelbo_objective, finish_deelbo_training, fit_deelbo_batched

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import RESULTS, RunRecord

#: The DE-ELBo search's learning rates: the batched run trains them together, as the halving record did.
SEARCH_LRS = (0.1, 0.03, 0.01, 0.003)

Run = tuple[od.bayes.DEELBoObjective, od.train.TrainResult]


def _trained(objective: od.bayes.DEELBoObjective) -> dict[str, torch.Tensor]:
    """The trained tensors (mean weights and rho), float64 copies; BatchNorm statistics left out."""
    return {n: p.detach().double().clone() for n, p in objective.named_parameters() if p.requires_grad}


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference over every trained tensor."""
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def _cast(task: od.TaskSpec, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor] | None:
    transform = task.train_transform
    if dtype == torch.float32:
        return transform
    return lambda batch: (transform(batch) if transform is not None else batch).to(dtype)


def sequential_run(task: od.TaskSpec, lr: float, relative: float = 0.0, dtype: torch.dtype = torch.float32) -> Run:
    """A sequential DE-ELBo run, from weights scaled by ``1 + relative * eps`` (seeded eps), in ``dtype``."""
    objective = deelbo_objective(task).to(dtype)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in objective.model.parameters():
            if p.requires_grad and relative:
                noise = torch.randn(p.shape, generator=g).to(p)
                p.mul_(1 + relative * noise)
    result = od.train.train_model(
        objective,
        task.train.x,
        task.train.y,
        task.deelbo_train_config(lr),
        transform=_cast(task, dtype),
        mixing=task.mixing(),
    )
    return objective, result


def batched_float64_run(task: od.TaskSpec, lr: float) -> Run:
    """The batched runner on one float64 member (``train_batched``: vmap over the stacked weights)."""
    objective = deelbo_objective(task).to(torch.float64)
    (outcome,) = od.train.train_batched(
        [objective],
        task.train.x,
        task.train.y,
        [task.deelbo_train_config(lr)],
        transform=_cast(task, torch.float64),
        mixing=task.mixing(),
    )
    assert isinstance(outcome, od.train.TrainResult), outcome
    return objective, outcome


def finish(task: od.TaskSpec, run: Run) -> tuple[dict[str, torch.Tensor], float, dict[str, object], float]:
    """Trained tensors, final training loss, learned values and test accuracy (float32, BatchNorm recalibrated)."""
    objective, result = run
    trained = _trained(objective)
    objective.to(torch.float32)
    finish_deelbo_training(task, objective, result)
    assert task.test is not None
    accuracy = od.evaluate(objective.model, task.test.x, task.test.y, transform=task.eval_transform).accuracy
    return trained, result.final_loss, objective.deelbo.learned_values(), accuracy


def main() -> None:
    record = RunRecord.start()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--seeds", default="0,1,2", help="training sets")
    parser.add_argument("--lrs", default="0.1,0.03", help="learning rates compared (members of the 4-rate batch)")
    parser.add_argument("--float64-lr", type=float, default=0.03, help="the float64 pair's rate (training set 0)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lrs = [float(v) for v in args.lrs.split(",")]
    lines = [
        "| training set | lr | run | final train loss | learned lambda | sigma | test accuracy % | max abs weight "
        "difference to sequential |",
        "|---|---|---|---|---|---|---|---|",
    ]
    seeds = [int(v) for v in args.seeds.split(",")]
    for seed in seeds:
        task, _ = od.split_cifar_task(
            50, data_dir=args.data_dir, steps=200, batch_size=32, pretrain_steps=500, device=args.device, seed=seed
        )
        batched = dict(zip(SEARCH_LRS, fit_deelbo_batched(task, SEARCH_LRS), strict=True))
        for lr in lrs:
            runs = {
                "sequential": sequential_run(task, lr),
                "sequential, weights x (1 + 1e-7 eps)": sequential_run(task, lr, 1e-7),
            }
            member = batched[lr]
            if isinstance(member, tuple):
                runs["batched (4 rates)"] = member
            if seed == seeds[0] and lr == args.float64_lr:
                runs["sequential, float64"] = sequential_run(task, lr, dtype=torch.float64)
                runs["batched (1 rate), float64"] = batched_float64_run(task, lr)
            done = {label: finish(task, run) for label, run in runs.items()}
            reference = {"float64": done.get("sequential, float64"), "float32": done["sequential"]}
            for label, (trained, loss, learned, accuracy) in done.items():
                ref = reference["float64" if "float64" in label else "float32"]
                assert ref is not None
                lines.append(
                    f"| {seed} | {lr:g} | {label} | {loss:.4f} | {float(learned['lambda']):.4g} | "  # type: ignore[arg-type]
                    f"{float(learned['sigma']):.4g} | {100 * accuracy:.2f} | {distance(trained, ref[0]):.2g} |"  # type: ignore[arg-type]
                )
                print(lines[-1], flush=True)
    text = f"""# Batched vs sequential: how far float rounding alone moves a DE-ELBo run

{record.header()}
- Split-CIFAR N = 50, cifar-resnet20, 200 x 32, pretraining 500 steps (benchmarks/batched.py's task, the
  halving record's Split-CIFAR N = 50 cells); the perturbed run multiplies every trained weight by
  1 + 1e-7 eps (eps ~ N(0, 1), seeded) before training; the batched run is the member of one batched
  run of the search's 4 rates ({", ".join(f"{v:g}" for v in SEARCH_LRS)}); the float64 pair trains the
  model, posterior and augmented batches in float64 (evaluated in float32)
- max abs weight difference: over every trained tensor (mean weights and rho) at the end of training, to
  the sequential run of the same precision

{chr(10).join(lines)}
"""
    out = RESULTS / "batched-sensitivity.md"
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Step time of MAP vs DE-ELBo (isotropic and PTYL prior) for each backbone, in one run.

Usage: python benchmarks/overhead.py [--device cuda] [--batch-size 128] [--steps 30] [--backbones ...]

Writes benchmarks/results/overhead-<device>.md. Each row trains the same backbone from the
same initial weights with the public `train` loop (warm-up steps first, not timed), on a
synthetic uint8 CIFAR-sized batch set kept on the device and the same DeviceAugment as
Split-CIFAR. The PTYL prior uses a random rank-K factor: only its shape matters for timing.
Goals from the issue: ratio <= 1.03 (iso) and <= 1.08 (PTYL).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch

import optuna_deelbo as od

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import RESULTS, RunRecord


def _objective(kind: str, model: torch.nn.Module, groups: od.bayes.ParameterGroups, rank: int) -> od.bayes.Objective:
    body = groups.flat(dict(model.named_parameters()), "body").detach().clone()
    if kind == "map":
        return od.bayes.MAPObjective(model, groups, od.IsotropicGaussian(body), weight_decay=1e-4)
    if kind == "deelbo-iso":
        return od.bayes.DEELBoObjective(model, groups, od.IsotropicGaussian(body), n_train=5000)
    g = torch.Generator(device=body.device).manual_seed(0)
    diagonal = torch.rand(body.shape[0], generator=g, device=body.device) * 1e-3 + 1e-4
    factor = torch.randn(body.shape[0], rank, generator=g, device=body.device) * 1e-2
    return od.bayes.DEELBoObjective(model, groups, od.LowRankGaussian(body, diagonal, factor), n_train=5000)


KINDS: tuple[str, ...] = ("map", "deelbo-iso", "deelbo-ptyl")


def time_steps(backbone: str, args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds per step of each kind in :data:`KINDS`, ``args.repeats`` timed runs of ``args.steps`` steps.

    The kinds are interleaved (MAP, iso, PTYL, MAP, ...) so that drift in the machine's speed
    hits all three alike; each kind trains its own copy of the same initial model. With
    ``args.compile`` (optional) each model is compiled during its warm-up steps.
    """
    built = od.models.build_backbone(backbone, 5, seed=0)
    device = od.train.resolve_device(args.device)
    g = torch.Generator().manual_seed(0)
    n = args.batch_size * 4
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    y = torch.randint(0, 5, (n,), generator=g).to(device)
    augment = od.data.DeviceAugment(train=True, channels_last=args.channels_last)
    objectives = {}
    for kind in KINDS:
        model = copy.deepcopy(built.model).to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        groups = od.bayes.ParameterGroups.split(model, built.head_prefixes)
        objectives[kind] = _objective(kind, model, groups, args.rank)

    def run(kind: str, steps: int) -> float:
        config = od.train.TrainConfig(
            lr=1e-3,
            steps=steps,
            batch_size=args.batch_size,
            device=str(device),
            progress=False,
            log_every=10,
            compile=getattr(args, "compile", False),
        )
        return od.train.train_model(objectives[kind], x, y, config, transform=augment).seconds / steps

    for kind in KINDS:
        run(kind, args.warmup)
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _ in range(args.repeats):
        for kind in KINDS:
            times[kind].append(run(kind, args.steps))
    return times


def main() -> None:
    record = RunRecord.start()  # the code that runs, even if HEAD moves during a long run
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=10, help="PTYL low-rank columns K")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--backbones", default=",".join(od.models.BACKBONE_NAMES))
    args = parser.parse_args()
    device = od.train.resolve_device(args.device)

    rows = []
    for backbone in args.backbones.split(","):
        times = time_steps(backbone, args)
        med = {kind: statistics.median(ts) for kind, ts in times.items()}
        spread = {kind: (min(ts), max(ts)) for kind, ts in times.items()}
        rows.append((backbone, med, spread))
        print(
            f"{backbone}: map {1e3 * med['map']:.1f} ms, iso x{med['deelbo-iso'] / med['map']:.3f}, "
            f"ptyl x{med['deelbo-ptyl'] / med['map']:.3f}",
            flush=True,
        )

    def cell(kind: str, med: dict[str, float], spread: dict[str, tuple[float, float]]) -> str:
        lo, hi = spread[kind]
        return f"{1e3 * med[kind]:.1f} ({1e3 * lo:.1f}-{1e3 * hi:.1f})"

    lines = [
        "| backbone | MAP ms/step | DE-ELBo iso ms/step | DE-ELBo PTYL ms/step | iso / MAP | PTYL / MAP |",
        "|---|---|---|---|---|---|",
    ]
    for backbone, med, spread in rows:
        lines.append(
            f"| {backbone} | {cell('map', med, spread)} | {cell('deelbo-iso', med, spread)} | "
            f"{cell('deelbo-ptyl', med, spread)} | {med['deelbo-iso'] / med['map']:.3f} | "
            f"{med['deelbo-ptyl'] / med['map']:.3f} |"
        )
    table = "\n".join(lines)
    iso_ok = "met" if all(m["deelbo-iso"] / m["map"] <= 1.03 for _, m, _ in rows) else "NOT met"
    ptyl_ok = "met" if all(m["deelbo-ptyl"] / m["map"] <= 1.08 for _, m, _ in rows) else "NOT met"
    text = f"""# DE-ELBo step-time overhead vs MAP

{record.header(str(device))}
- batch {args.batch_size} of 32x32 images, DeviceAugment on the device, {args.steps} timed steps x {args.repeats}
  repeats (the three kinds interleaved) after {args.warmup} warm-up steps; median (min-max) ms per step;
  PTYL rank K = {args.rank}

{table}

Goals (issue #3): iso / MAP <= 1.03 -> {iso_ok}; PTYL / MAP <= 1.08 -> {ptyl_ok}.
"""
    out = RESULTS / f"overhead-{device.type}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(table)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

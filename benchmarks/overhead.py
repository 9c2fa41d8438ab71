"""Step time of MAP vs DE-ELBo (isotropic and PTYL prior) for each backbone, and one whole trial of each.

Usage: python benchmarks/overhead.py [--device cuda] [--batch-size 128] [--steps 30] [--backbones ...]
       [--data-dir ../shared/data] [--trial-tasks split-cifar,wordnet] [--trial-repeats 3] [--trial-steps 200]

Writes benchmarks/results/overhead-<device>.md.

Steps: each row trains the same backbone from the same initial weights with the public `train`
loop (warm-up steps first, not timed), on a synthetic uint8 CIFAR-sized batch set kept on the
device and the same DeviceAugment as Split-CIFAR. The PTYL prior uses a random rank-K factor: only
its shape matters for timing. Goals from issue 3: ratio <= 1.03 (iso) and <= 1.08 (PTYL).

Trials (--trial-tasks; Split-CIFAR reads the CIFAR-10 archives in --data-dir, WordNet-4 needs the
``[text]`` extra): one DE-ELBo trial and one MAP trial of the same steps on Split-CIFAR N = 50
(cifar-resnet20) or WordNet-4 N = 40 (MiniLM, top 2 layers; the paper benchmark's CPU budgets), end to end through
``od.fit`` in a SQLite study (ask, fit, tell), interleaved, split into the phases the trials
record (training steps, BatchNorm recalibration, selection, test evaluation, the rest of the
call: model build, prior, validation pass; study writes = ask-to-tell minus the call). A DE-ELBo
trial's cost leaves out its test evaluation (reporting only: the search's cost counts the chosen
model's once, as grid search's retraining). Goal from issue 25: DE-ELBo trial <= 1.1x MAP trial. On
WordNet-4 a profile of one run of each adds where the DE-ELBo's extra time goes, op by op.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
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
        return od.bayes.DEELBoObjective(od.bayes.DEELBo(model, 5000, od.IsotropicGaussian(body), head=groups))
    g = torch.Generator(device=body.device).manual_seed(0)
    diagonal = torch.rand(body.shape[0], generator=g, device=body.device) * 1e-3 + 1e-4
    factor = torch.randn(body.shape[0], rank, generator=g, device=body.device) * 1e-2
    return od.bayes.DEELBoObjective(
        od.bayes.DEELBo(model, 5000, od.LowRankGaussian(body, diagonal, factor), head=groups)
    )


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
    trained = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    times["draw"] = []
    for _ in range(args.repeats):
        for kind in KINDS:
            times[kind].append(run(kind, args.steps))
        times["draw"].append(gaussian_draw_seconds(trained, device))
    return times


def gaussian_draw_seconds(count: int, device: torch.device, repeats: int = 5) -> float:
    """Median seconds of one N(0, 1) draw per weight (``count`` float32 values): the DE-ELBo step's floor.

    Every DE-ELBo step draws a fresh ``eps`` per trained weight (``WeightPosterior.draw_noise``, torch's
    generator); nothing the step does can cost less than this draw.
    """
    buffer = torch.empty(count, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    buffer.normal_(generator=generator)
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        buffer.normal_(generator=generator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


TRIAL_KINDS: tuple[str, ...] = ("map", "deelbo")
#: The phases of one trial, in the order they happen (seconds each).
PHASES: tuple[str, ...] = ("steps", "recalibrate", "select", "test_eval", "rest", "writes")


#: The whole-trial tasks: Split-CIFAR N = 50 (cifar-resnet20) and WordNet-4 N = 40 (MiniLM, top 2 layers).
TRIAL_TASKS: tuple[str, ...] = ("split-cifar", "wordnet")


def trial_task(name: str, args: argparse.Namespace, device: torch.device) -> tuple[od.TaskSpec, str]:
    """The task of a whole-trial table and its title (the paper benchmark's CPU settings)."""
    if name == "wordnet":
        task = od.wordnet_task(40, max_length=16, trainable_layers=2, steps=100, batch_size=16, device=str(device))[0]
        return task, "WordNet-4 N = 40, MiniLM top 2 layers, 100 x 16"
    task = od.split_cifar_task(
        50,
        data_dir=args.data_dir,
        steps=args.trial_steps,
        batch_size=32,
        pretrain_steps=args.pretrain_steps,
        device=str(device),
    )[0]
    return task, f"Split-CIFAR N = 50, cifar-resnet20, {args.trial_steps} x 32"


def time_trials(args: argparse.Namespace, task: od.TaskSpec) -> dict[str, list[dict[str, float]]]:
    """Per kind, ``args.trial_repeats`` whole trials' phases (s) on ``task``; the kinds interleaved."""
    import tempfile

    import optuna

    from optuna_deelbo.tuning import attrs as A

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    phases: dict[str, list[dict[str, float]]] = {kind: [] for kind in TRIAL_KINDS}
    with tempfile.TemporaryDirectory() as tmp:
        storage = od.tuning.open_storage(f"sqlite:///{tmp}/trials.db")
        studies = {
            "map": optuna.create_study(storage=storage, study_name="map"),
            "deelbo": optuna.create_study(
                storage=storage,
                study_name="deelbo",
                sampler=od.DEELBoSampler(optuna.samplers.RandomSampler(seed=0), learned=("weight_decay",)),
            ),
        }
        for _ in range(args.trial_repeats):
            for kind in TRIAL_KINDS:
                study = studies[kind]
                study.enqueue_trial({"lr": 0.03, "weight_decay": 1e-3} if kind == "map" else {"lr": 0.03})
                start = time.perf_counter()
                trial = study.ask()
                lr, weight_decay = od.tuning.strategies.suggest_hyperparameters(trial, (3e-3, 0.1))
                study.tell(trial, od.fit(trial, task, lr=lr, weight_decay=weight_decay))
                wall = time.perf_counter() - start
                attrs = study.trials[-1].user_attrs
                train = float(attrs[A.TIME_TRAIN_S])
                recal = float(attrs.get(A.TIME_RECALIBRATE_S, 0.0))
                select = float(attrs.get(A.TIME_SELECT_S, 0.0))
                test = float(attrs.get(A.TIME_TEST_EVAL_S, 0.0))
                call = float(attrs[A.TIME_TRIAL_S])
                phases[kind].append(
                    {
                        "steps": train - recal,
                        "recalibrate": recal,
                        "select": select,
                        "test_eval": test,
                        "rest": call - train - select - test,
                        "writes": wall - call,
                        "cost": wall - test,
                    }
                )
                print(f"trial {kind}: {wall:.1f} s ({attrs.get(A.TIME_TRAIN_S):.1f} s training)", flush=True)
    return phases


def op_gap(task: od.TaskSpec, top: int = 8, repeats: int = 2) -> str:
    """Where a DE-ELBo run's extra time goes: torch's ops by self time (cProfile) in MAP and DE-ELBo runs.

    Both train all N at lr 0.03 (MAP with weight decay 1e-3 through its penalty), ``repeats`` runs each,
    interleaved; per op the least self time of the repeats. The table lists the ops whose self time
    differs most, and the whole runs' least wall-clock.
    """
    import cProfile
    import pstats

    def profile(run: Callable[[], object]) -> tuple[dict[str, float], float]:
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        run()
        profiler.disable()
        total = time.perf_counter() - start
        stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
        by_name: dict[str, float] = {}
        for (filename, line, name), (_, _, tottime, _, _) in stats.items():
            label = name if filename == "~" else f"{Path(filename).name}:{line}({name})"
            by_name[label] = by_name.get(label, 0.0) + tottime
        return by_name, total

    od.tuning.trials.fit_deelbo(task, 0.03)  # warm-up: caches, first-call costs
    runs: dict[str, list[tuple[dict[str, float], float]]] = {"map": [], "deelbo": []}
    for _ in range(repeats):  # interleaved; per op the least of the repeats (the machine's noise only adds)
        runs["map"].append(profile(lambda: od.tuning.trials.fit_map(task, 0.03, 1e-3, task.train)))
        runs["deelbo"].append(profile(lambda: od.tuning.trials.fit_deelbo(task, 0.03)))

    def least(kind: str) -> tuple[dict[str, float], float]:
        names = {n for ops, _ in runs[kind] for n in ops}
        return {n: min(ops.get(n, 0.0) for ops, _ in runs[kind]) for n in names}, min(s for _, s in runs[kind])

    (map_ops, map_s), (deelbo_ops, deelbo_s) = least("map"), least("deelbo")
    names = sorted(set(map_ops) | set(deelbo_ops), key=lambda n: -abs(deelbo_ops.get(n, 0) - map_ops.get(n, 0)))
    lines = ["| op (self time) | MAP s | DE-ELBo s | difference s |", "|---|---|---|---|"]
    for name in names[:top]:
        a, b = map_ops.get(name, 0.0), deelbo_ops.get(name, 0.0)
        lines.append(f"| `{name}` | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
    lines.append(f"| whole run (wall-clock, profiled) | {map_s:.2f} | {deelbo_s:.2f} | {deelbo_s - map_s:+.2f} |")
    return "\n".join(lines)


def trial_section(phases: dict[str, list[dict[str, float]]], args: argparse.Namespace, title: str) -> str:
    """The markdown table of :func:`time_trials`: median (min-max) per phase and kind, and the ratio."""

    def cell(kind: str, phase: str) -> str:
        values = [p[phase] for p in phases[kind]]
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    lines = ["| phase (s) | MAP trial | DE-ELBo trial |", "|---|---|---|"]
    for phase in (*PHASES, "cost"):
        lines.append(f"| {phase} | {cell('map', phase)} | {cell('deelbo', phase)} |")
    ratios = [d["cost"] / m["cost"] for m, d in zip(phases["map"], phases["deelbo"], strict=True)]
    step_ratios = [d["steps"] / m["steps"] for m, d in zip(phases["map"], phases["deelbo"], strict=True)]
    ratio = statistics.median(ratios)
    return f"""## One whole trial: DE-ELBo vs MAP ({title})

`od.fit` in a SQLite study, lr 0.03 (MAP: weight decay 1e-3 on the 80 % split; DE-ELBo: all N), {args.trial_repeats}
repeats interleaved; median (min-max) seconds. cost = ask to tell without the reporting-only test evaluation.

{chr(10).join(lines)}

DE-ELBo / MAP trial cost: {ratio:.3f} (per repeat {", ".join(f"{r:.3f}" for r in ratios)}; training steps alone
{statistics.median(step_ratios):.3f}). Goal (issue 25): <= 1.1 -> {"met" if ratio <= 1.1 else "NOT met"}.

"""


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
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 JPEG archives (the Split-CIFAR trial table)")
    parser.add_argument("--trial-tasks", default="", help=f"whole-trial tables, of {','.join(TRIAL_TASKS)}")
    parser.add_argument("--trial-repeats", type=int, default=3)
    parser.add_argument("--trial-steps", type=int, default=200)
    parser.add_argument("--pretrain-steps", type=int, default=500, help="Split-CIFAR source pretraining (trials)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = od.train.resolve_device(args.device)

    rows = []
    all_times = []
    for backbone in args.backbones.split(","):
        times = time_steps(backbone, args)
        all_times.append(times)
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
        "| backbone | MAP ms/step | DE-ELBo iso ms/step | DE-ELBo PTYL ms/step | iso / MAP | PTYL / MAP | "
        "draw ms | (MAP + draw) / MAP |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def ratio(kind: str, med: dict[str, float], times: dict[str, list[float]]) -> str:
        """Median ratio and, in brackets, the min-max of the per-repeat ratios (the kinds ran back to back)."""
        per_repeat = [a / b for a, b in zip(times[kind], times["map"], strict=True)]
        return f"{med[kind] / med['map']:.3f} ({min(per_repeat):.2f}-{max(per_repeat):.2f})"

    ratio_spreads: list[float] = []
    for (backbone, med, spread), times in zip(rows, all_times, strict=True):
        lines.append(
            f"| {backbone} | {cell('map', med, spread)} | {cell('deelbo-iso', med, spread)} | "
            f"{cell('deelbo-ptyl', med, spread)} | {ratio('deelbo-iso', med, times)} | "
            f"{ratio('deelbo-ptyl', med, times)} | {1e3 * med['draw']:.1f} | {1 + med['draw'] / med['map']:.3f} |"
        )
        for kind in KINDS[1:]:
            per_repeat = [a / b for a, b in zip(times[kind], times["map"], strict=True)]
            ratio_spreads.append(max(per_repeat) - min(per_repeat))
    table = "\n".join(lines)
    trials = ""
    for name in [t for t in args.trial_tasks.split(",") if t]:
        if name not in TRIAL_TASKS:
            sys.exit(f"--trial-tasks: unknown task {name!r} (known: {', '.join(TRIAL_TASKS)})")
        task, title = trial_task(name, args, device)
        trials += trial_section(time_trials(args, task), args, title)
        if name == "wordnet":
            trials += f"""
Where the DE-ELBo run's extra time goes ({title}; 2 profiled runs of each, interleaved, cProfile self
time, per op the lesser):

{op_gap(task)}

"""
    iso_ok = "met" if all(m["deelbo-iso"] / m["map"] <= 1.03 for _, m, _ in rows) else "NOT met"
    ptyl_ok = "met" if all(m["deelbo-ptyl"] / m["map"] <= 1.08 for _, m, _ in rows) else "NOT met"
    text = f"""# DE-ELBo step-time overhead vs MAP

{record.header(str(device))}
- batch {args.batch_size} of 32x32 images, DeviceAugment on the device, {args.steps} timed steps x {args.repeats}
  repeats (the three kinds interleaved) after {args.warmup} warm-up steps; median (min-max) ms per step;
  PTYL rank K = {args.rank}

{table}

Goals (issue #3): iso / MAP <= 1.03 -> {iso_ok}; PTYL / MAP <= 1.08 -> {ptyl_ok}. draw: one N(0, 1) value
per trained weight with torch's generator (every DE-ELBo step draws one), timed alone; (MAP + draw) / MAP is
the lowest ratio a DE-ELBo step with a fresh draw per weight can have on this device.
Ratios: median (min-max of the per-repeat ratios); largest spread (max - min) of any: {max(ratio_spreads):.3f}.

{trials}"""
    out = RESULTS / f"overhead-{device.type}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(table)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

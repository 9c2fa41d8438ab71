"""benchmarks/gpu_check.py --smoke: the GPU run's code paths on the CPU at tiny size, on the real CIFAR-10 JPEGs."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import CIFAR_DATA_DIR

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check

HAS_CIFAR = (CIFAR_DATA_DIR / "cifar10-test-jpeg.tar.xz").is_file()


@pytest.mark.skipif(not HAS_CIFAR, reason=f"CIFAR-10 JPEG archives not found in {CIFAR_DATA_DIR}")
def test_smoke_run_writes_both_parts(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        gpu_check.main(["--smoke", "--data-dir", str(CIFAR_DATA_DIR), "--cache-dir", str(tmp_path / "cache"),
                        "--out-dir", str(tmp_path / "out")])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    text = (tmp_path / "out" / "gpu-check.md").read_text()
    assert "CPU (smoke run)" in text and "| cifar-resnet20 | False |" in text
    assert "| deelbo | 50 | 4 |" in text and "| grid | 50 | 24 |" in text
    with (tmp_path / "out" / "gpu-check.csv").open() as f:
        rows = list(csv.reader(f))
    step = [r for r in rows if r[0] == "step-time"]
    header = rows[0]
    assert header[:3] == ["part", "backbone", "compile"] and len(step) == 1
    ratios = [float(step[0][header.index(k)]) for k in ("deelbo-iso/map", "deelbo-ptyl/map")]
    assert all(math.isfinite(r) and r > 0 for r in ratios)
    accuracies = [float(r[5]) for r in rows if r[0] == "split-cifar" and r[1] in ("deelbo", "grid")]
    assert len(accuracies) == 2 and all(0 <= a <= 1 for a in accuracies)
    # the text part: WordNet-4 with every weight of the packaged encoder
    assert "WordNet-4 text" in text and "| deelbo | 8 | 1 |" in text and "| grid | 8 | 6 |" in text
    assert sorted(r[1] for r in rows if r[0] == "text") == ["deelbo", "grid"]
    # the batched search (issue 25): one run, sequential and batched on both tasks; the same trial values
    assert "The DE-ELBo search in one run" in text
    searches = [(r[1], r[2]) for r in rows if r[0] == "batched"]
    assert searches == [(t, s) for t in ("split-cifar", "digits") for s in ("single", "sequential", "batched")]
    assert all(float(r[-1]) < 1e-2 for r in rows if r[0] == "batched")  # max relative |value seq - batched|


def test_parts_can_be_chosen(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--smoke", "--parts", "step-time,nonsense"])
    assert exc.value.code == 2


def test_smoke_sizes_are_small_and_the_full_run_measures_every_backbone() -> None:
    smoke, full = gpu_check.Sizes.smoke(), gpu_check.Sizes()
    assert full.backbones == ("cifar-resnet20", "resnet18", "resnet50") and full.batch_size == 128
    assert full.compile_modes == (False, True)
    assert smoke.batch_size < full.batch_size and smoke.n_train < full.n_train and smoke.test_images == 500


def test_bad_n_is_refused() -> None:
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--smoke", "--n", "0"])
    assert exc.value.code == 2

"""Labelled text for the text tasks: WordNet noun definitions (offline, Debian) and AG News (CSV or ``datasets``).

:class:`TextExamples` is what every reader returns and what :func:`optuna_deelbo.task.text_task` takes.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from optuna_deelbo._errors import ConfigError, MissingDependency
from optuna_deelbo.data._splits import stratified_indices

__all__ = [
    "AG_NEWS_CLASSES",
    "WORDNET_CLASSES",
    "WORDNET_DIR",
    "TextExamples",
    "load_ag_news",
    "read_ag_news_csv",
    "read_wordnet_nouns",
]

#: Where Debian's ``wordnet-base`` package installs the WordNet 3.0 database.
WORDNET_DIR = Path("/usr/share/wordnet")
#: The four broad noun classes of the built-in text task (WordNet lexicographer files).
WORDNET_CLASSES: tuple[str, ...] = ("noun.animal", "noun.food", "noun.artifact", "noun.person")
#: AG News labels 0-3 (the ``datasets`` library's order; the original CSV's class index minus 1).
AG_NEWS_CLASSES: tuple[str, ...] = ("World", "Sports", "Business", "Sci/Tech")
#: WordNet 3.0's noun lexicographer file numbers (``lexnames(5WN)``).
_NOUN_LEXNAMES: dict[int, str] = {
    3: "noun.Tops", 4: "noun.act", 5: "noun.animal", 6: "noun.artifact", 7: "noun.attribute",
    8: "noun.body", 9: "noun.cognition", 10: "noun.communication", 11: "noun.event", 12: "noun.feeling",
    13: "noun.food", 14: "noun.group", 15: "noun.location", 16: "noun.motive", 17: "noun.object",
    18: "noun.person", 19: "noun.phenomenon", 20: "noun.plant", 21: "noun.possession", 22: "noun.process",
    23: "noun.quantity", 24: "noun.relation", 25: "noun.shape", 26: "noun.state", 27: "noun.substance",
    28: "noun.time",
}  # fmt: skip


@dataclass(frozen=True)
class TextExamples:
    """Labelled texts: ``texts[i]`` has label ``labels[i]`` (int64, ``(n,)``), an index into ``classes``."""

    texts: tuple[str, ...]
    labels: Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.labels, Tensor) or self.labels.ndim != 1 or self.labels.dtype != torch.int64:
            raise ConfigError("TextExamples.labels must be an int64 tensor of shape (n,)")
        if len(self.texts) != self.labels.shape[0]:
            raise ConfigError(f"{len(self.texts)} texts but {self.labels.shape[0]} labels")
        if not all(isinstance(t, str) for t in self.texts):
            raise ConfigError("TextExamples.texts must all be strings")
        if len(self.texts) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise ConfigError(f"labels must lie in 0..{len(self.classes) - 1} (one per class name)")

    @classmethod
    def of(
        cls, texts: Sequence[str], labels: Sequence[int] | Tensor, classes: Sequence[str] | None = None
    ) -> TextExamples:
        """From plain sequences; ``classes`` defaults to ``("0", "1", ...)`` up to the largest label."""
        y = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
        names = (
            tuple(classes) if classes is not None else tuple(str(k) for k in range(int(y.max()) + 1 if len(y) else 0))
        )
        return cls(tuple(texts), y, names)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: Tensor | Sequence[int]) -> TextExamples:
        """The examples at ``index`` (in that order)."""
        idx = torch.as_tensor(index, dtype=torch.int64)
        return TextExamples(tuple(self.texts[int(i)] for i in idx), self.labels[idx], self.classes)

    def split(
        self, n_train: int, n_test: int, seed: int, *, test_seed: int = 12345
    ) -> tuple[TextExamples, TextExamples]:
        """A stratified test set of ``n_test`` (fixed by ``test_seed``) and ``n_train`` training examples from the rest.

        The test set does not depend on ``seed``, so training sets of every seed are scored on the
        same examples. ``n_test=0``: only the training sample (the data has its own test split).
        """
        if n_train + n_test > len(self) or n_train <= 0 or n_test < 0:
            raise ConfigError(
                f"{n_train} training + {n_test} test examples asked for, {len(self)} available "
                "(n_train > 0, n_test >= 0)"
            )
        if n_test == 0:  # a separate test set (AG News has one)
            return self.subset(stratified_indices(self.labels, n_train, seed=seed)), self.subset([])
        test_idx = stratified_indices(self.labels, n_test, seed=test_seed)
        rest = torch.ones(len(self), dtype=torch.bool)
        rest[test_idx] = False
        pool = torch.nonzero(rest).squeeze(1)
        train_idx = pool[stratified_indices(self.labels[pool], n_train, seed=seed)]
        return self.subset(train_idx), self.subset(test_idx)


def _gloss(line: str) -> str:
    """A WordNet synset's definition: the gloss after ``|`` without its quoted examples."""
    gloss = line.split(" | ", 1)[1].strip() if " | " in line else ""
    return gloss.split('; "', 1)[0].split(' "', 1)[0].strip().rstrip(";").strip()


def read_wordnet_nouns(root: str | Path = WORDNET_DIR, classes: Sequence[str] = WORDNET_CLASSES) -> TextExamples:
    """Every noun synset's definition labelled by its lexicographer file (``noun.animal``, ...), in file order.

    Reads WordNet 3.0's ``data.noun`` (Debian: ``apt-get install wordnet-base``; Princeton's
    WordNet 3.0 licence, which permits use and redistribution with its copyright notice).

    Raises:
        ConfigError: ``data.noun`` is missing (with the install hint) or a class name is unknown.
    """
    path = Path(root) / "data.noun"
    if not path.is_file():
        raise ConfigError(f"{path} not found: install WordNet 3.0 (Debian: apt-get install wordnet-base) or pass root=")
    numbers = {name: number for number, name in _NOUN_LEXNAMES.items()}
    unknown = [c for c in classes if c not in numbers]
    if unknown or not classes:
        raise ConfigError(f"unknown WordNet noun classes {unknown or list(classes)}; choose from {sorted(numbers)}")
    label_of = {numbers[c]: k for k, c in enumerate(classes)}
    texts: list[str] = []
    labels: list[int] = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("  "):  # the licence header
                continue
            fields = line.split(" ", 2)
            if len(fields) < 3 or not fields[1].isdigit():
                continue
            label = label_of.get(int(fields[1]))
            gloss = _gloss(line)
            if label is not None and gloss:
                texts.append(gloss)
                labels.append(label)
    return TextExamples(tuple(texts), torch.tensor(labels, dtype=torch.int64), tuple(classes))


def read_ag_news_csv(path: str | Path) -> TextExamples:
    """AG News in its original CSV form: rows ``"class index","title","description"``, class index 1-4, no header.

    The text is ``title + " " + description`` (backslash line breaks as spaces), the label the
    class index minus 1 (:data:`AG_NEWS_CLASSES`).
    """
    texts: list[str] = []
    labels: list[int] = []
    with Path(path).open(newline="", encoding="utf-8") as fh:
        for number, row in enumerate(csv.reader(fh), start=1):
            if len(row) != 3 or row[0].strip() not in {"1", "2", "3", "4"}:
                raise ConfigError(f'{path}, row {number}: expected "class index (1-4)","title","description"')
            texts.append(f"{row[1]} {row[2]}".replace("\\n", " ").replace("\\", " ").strip())
            labels.append(int(row[0]) - 1)
    return TextExamples(tuple(texts), torch.tensor(labels, dtype=torch.int64), AG_NEWS_CLASSES)


def load_ag_news(split: str = "train", *, data_files: str | Path | None = None, **load_kwargs: Any) -> TextExamples:
    """AG News through the ``datasets`` library (columns ``text`` and ``label``, 0-3).

    Args:
        split: ``"train"`` (120,000 examples) or ``"test"`` (7,600).
        data_files: a local copy (``.parquet``, ``.csv`` or ``.json`` with those columns) instead of
            the hub's ``ag_news`` (which needs internet the first time).
        load_kwargs: passed to ``datasets.load_dataset`` (``cache_dir``, ...).
    """
    try:
        import datasets
    except ImportError as exc:
        raise MissingDependency("load_ag_news needs the datasets package: pip install datasets") from exc
    if data_files is None:
        table = datasets.load_dataset("ag_news", split=split, **load_kwargs)
    else:
        suffix = Path(data_files).suffix.lstrip(".")
        builder = {"parquet": "parquet", "csv": "csv", "json": "json", "jsonl": "json"}.get(suffix)
        if builder is None:
            raise ConfigError(f"data_files must be .parquet, .csv or .json(l), got {str(data_files)!r}")
        table = datasets.load_dataset(builder, data_files={split: str(data_files)}, split=split, **load_kwargs)
    missing = {"text", "label"} - set(table.column_names)
    if missing:
        raise ConfigError(
            f"AG News needs columns 'text' and 'label'; {sorted(missing)} missing in {table.column_names}"
        )
    return TextExamples.of(list(table["text"]), list(table["label"]), AG_NEWS_CLASSES)

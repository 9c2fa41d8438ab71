"""Tasks: what one trial trains on (TaskSpec), the built-in tasks, their stored form, and source pretraining.

A *task* is data + model + prior + budget (:class:`TaskSpec`); :func:`digits_task` and
:func:`split_cifar_task` build the built-in ones, :class:`BuiltinTask` is the JSON a planned study
stores so that workers rebuild the same task. How DE-ELBo trains is a *recipe*
(:class:`~optuna_deelbo.bayes.DEELBoRecipe`), carried by the task.
"""

from __future__ import annotations

from optuna_deelbo.task._builtin import DATASET_NAMES, digits_task, split_cifar_task
from optuna_deelbo.task._pretrain import Pretrained, pretrain
from optuna_deelbo.task._spec import TaskSpec
from optuna_deelbo.task._stored import BUILTIN_TASK_VERSION, BuiltinTask
from optuna_deelbo.task._text import text_task, tokenize, wordnet_task

__all__ = [
    "BUILTIN_TASK_VERSION",
    "DATASET_NAMES",
    "BuiltinTask",
    "Pretrained",
    "TaskSpec",
    "digits_task",
    "pretrain",
    "split_cifar_task",
    "text_task",
    "tokenize",
    "wordnet_task",
]

"""A griffe extension for the API reference: the docstrings' Sphinx roles become mkdocstrings cross-references.

``:class:`~optuna_deelbo.bayes.DEELBo``` renders as a link titled ``DEELBo`` (``~``: the last part only),
``:func:`optuna_deelbo.fit``` as a link titled with the whole path; a role whose target is not a dotted
``optuna_deelbo`` path (``:meth:`fresh```, a private module) renders as code. Loaded by mkdocs.yml.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|data|attr|mod|exc|obj):`(~?)([^`]+)`")


def _reference(match: re.Match[str]) -> str:
    short, target = match.group(1) == "~", match.group(2).strip()
    title = target.rsplit(".", 1)[-1] if short else target
    public = target.startswith("optuna_deelbo.") and not any(p.startswith("_") for p in target.split("."))
    return f"[`{title}`][{target}]" if public else f"`{title}`"


class SphinxRoles(griffe.Extension):
    """Rewrites every object's docstring once, when griffe loads it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_reference, obj.docstring.value)

"""The README's and the docs' code blocks, found by their ``<!-- marker -->`` line, to run in tests.

Every python block in README.md and docs/ sits under a marker of its own (tests/test_docs.py checks that each
marker is unique and run by some test); the tests run a block as it stands and check what it leaves behind.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: ``<!-- marker -->``, then a fenced python block.
BLOCK = re.compile(r"<!-- ([a-z0-9-]+) -->\n```python\n(.*?)```", re.S)


def doc_pages() -> dict[str, str]:
    """README.md and every page of docs/ (the benchmark records linked as docs/results/ left out), by path."""
    pages = {"README.md": (ROOT / "README.md").read_text()}
    for path in sorted(DOCS.rglob("*.md")):
        if "results" not in path.relative_to(DOCS).parts:
            pages[str(path.relative_to(ROOT))] = path.read_text()
    return pages


def doc_blocks() -> dict[str, tuple[str, str]]:
    """Every marked python block: marker -> (the page's path, the block's source)."""
    blocks: dict[str, tuple[str, str]] = {}
    for page, text in doc_pages().items():
        for marker, source in BLOCK.findall(text):
            assert marker not in blocks, f"block {marker!r} in both {blocks[marker][0]} and {page}"
            blocks[marker] = (page, source)
    return blocks


def run_doc_block(marker: str, namespace: dict[str, Any] | None = None, *, elsewhere: bool = False) -> dict[str, Any]:
    """Run the block as it stands (from a new temporary folder when ``elsewhere``, as a user outside the
    repository would); its namespace. Tracebacks name ``<page>:<marker>``."""
    blocks = doc_blocks()
    assert marker in blocks, f"no python block under <!-- {marker} --> in README.md or docs/"
    page, source = blocks[marker]
    namespace = {"__name__": f"doc_{marker.replace('-', '_')}"} if namespace is None else namespace
    here = os.getcwd()
    if elsewhere:
        os.chdir(tempfile.mkdtemp(prefix="doc-block-"))
    try:
        exec(compile(source, f"{page}:{marker}", "exec"), namespace)
    finally:
        os.chdir(here)
    return namespace

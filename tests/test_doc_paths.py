"""The documents cite only files of this repository that exist, and none points outside it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "benchmarks").glob("*.md"))]
# A path that starts at one of the repository's own folders, e.g. benchmarks/gpu_proof.sh or src/cifarlab/run.py.
REPO_PATH = re.compile(r"(?<![\w./-])((?:\.ci|benchmarks|docs|examples|src|tests|tools)/[\w./-]*\w)")
# The workspace's shared folder is not part of the repository: a reader of a clone has no such folder.
OUTSIDE = re.compile(r"\.\./shared|/work/shared|`shared/")


def cited_paths(text: str) -> list[str]:
    return REPO_PATH.findall(text)


def test_the_path_pattern_finds_repository_paths_and_nothing_else():
    text = "run `benchmarks/gpu_proof.sh`, see docs/architecture.md. A run folder: runs/quick, OUT/report.html"
    assert cited_paths(text) == ["benchmarks/gpu_proof.sh", "docs/architecture.md"]


def test_every_path_a_document_cites_exists():
    missing = [f"{doc.relative_to(ROOT)}: {path}" for doc in DOCUMENTS for path in cited_paths(doc.read_text())
               if not (ROOT / path).exists()]
    assert missing == []


def test_no_document_points_into_the_shared_workspace():
    found = [f"{doc.relative_to(ROOT)}:{n}" for doc in DOCUMENTS
             for n, line in enumerate(doc.read_text().splitlines(), 1) if OUTSIDE.search(line)]
    assert found == []

"""Shared fixtures: the real corpora in ../shared (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPUS = REPO.parent / "shared" / "corpus"


def corpus(name: str) -> Path:
    """Path of ``../shared/corpus/NAME``; skips the test when it is not there."""
    path = SHARED_CORPUS / name
    if not path.is_dir():
        pytest.skip(f"real corpus {path} is absent (it lives in ../shared, beside the repository)")
    return path

"""Shared test fixtures: the real data under ../shared/data (tests that need it skip when it is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the shared real data (``shared/data`` beside the repository)."""
    if not SHARED.is_dir():
        pytest.skip("shared data not available")
    return SHARED


@pytest.fixture(scope="session")
def real_data(shared_data: Path) -> Path:
    """``shared/data/real``: real particle stacks, metadata with cryoDRGN reference parses, RELION projections."""
    return shared_data / "real"


@pytest.fixture(scope="session")
def structures(shared_data: Path) -> Path:
    """``shared/data/structures``: atomic models (adenylate kinase trajectory, proteins)."""
    return shared_data / "structures"

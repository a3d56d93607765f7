"""Shared fixtures: every test runs on synthetic data with a private cache folder."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("UPGP_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def smoke_scenario():
    """A blended-noise backdoor on the synthetic dataset with its trained model (smoke preset)."""
    import os
    import tempfile

    from upgp.scenarios import backdoored_model

    old = os.environ.get("UPGP_CACHE")
    os.environ["UPGP_CACHE"] = tempfile.mkdtemp(prefix="upgp-smoke-")
    try:
        return backdoored_model("blended", "preact_resnet18", "smoke", seed=0, progress=False)
    finally:
        if old is None:
            os.environ.pop("UPGP_CACHE")
        else:
            os.environ["UPGP_CACHE"] = old

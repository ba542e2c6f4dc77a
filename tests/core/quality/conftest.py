"""Fixtures of the evaluation tests: a small demo set and one feature cache per module."""

from __future__ import annotations

import pytest

from core.data.demo import make_demo_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval") / "demo"
    make_demo_dataset(root, per_class=8, size=16, seed=0)  # 5 classes, 40 images
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module: the feature net trains once, the tests reuse it."""
    return tmp_path_factory.mktemp("cache")

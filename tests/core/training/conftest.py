"""Fixtures of the trainer tests that evaluate while training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.data.demo import make_demo_dataset


@pytest.fixture(scope="module")
def no_inception(tmp_path_factory):
    """--eval-every picks its features 'auto': an empty hub dir makes that the dataset net
    here, whatever this machine has downloaded."""
    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path_factory.mktemp("empty-hub")))
    yield
    torch.hub.set_dir(before)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "data"
    make_demo_dataset(root, per_class=4, size=16, seed=0)  # 5 classes, 20 images
    return root

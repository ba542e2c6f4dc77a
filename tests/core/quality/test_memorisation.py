"""The memorisation check (copy rate) and the held-out split (--eval-holdout), issue #21."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.data.dataset import DataOptions, ImageFolderDataset
from core.data.demo import make_demo_dataset
from core.data.split import holdout_mask, is_held_out
from core.quality import memorisation
from core.quality.evaluate import Evaluator


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("memo") / "demo"
    make_demo_dataset(root, per_class=30, size=16, seed=0)
    return root


def _side(root, part, holdout=0.2, cache=None):
    return ImageFolderDataset(root, DataOptions(image_size=16, flip=False), holdout=holdout, part=part,
                              cache_dir=cache)


def test_the_split_is_fixed_by_each_path_and_the_sides_are_disjoint(demo, tmp_path):
    rels = [f"beagle/{i:03d}.jpg" for i in range(1000)]
    mask = holdout_mask(rels, 0.1)
    assert 60 <= sum(mask) <= 140  # about the fraction
    assert holdout_mask(list(reversed(rels)), 0.1) == list(reversed(mask))  # listing order does not matter
    assert holdout_mask(rels + ["pug/new.jpg"], 0.1)[:-1] == mask  # adding a file moves no other
    assert not any(holdout_mask(rels, 0.0))
    train, held = _side(demo, "train", cache=tmp_path), _side(demo, "holdout", cache=tmp_path)
    whole = _side(demo, "all", cache=tmp_path)
    train_paths, held_paths = {p for p, _ in train.samples}, {p for p, _ in held.samples}
    assert held_paths and not train_paths & held_paths
    assert train_paths | held_paths == {p for p, _ in whole.samples}
    assert all(is_held_out(p.relative_to(demo).as_posix(), 0.2) for p in held_paths)
    # the training side's pixels are exactly its files' rows of the whole set (the cache kept working)
    rows = [i for i, (p, _) in enumerate(whole.samples) if p in train_paths]
    assert torch.equal(train.images, whole.images[rows]) and held.stats["reused"] == whole.stats["files"]
    assert torch.equal(train.labels, whole.labels[rows])


def test_the_trainer_loads_only_the_training_side_and_records_the_split(demo, tmp_path):
    import logging

    from core.training.config import TrainConfig
    from core.training.preflight import load_dataset

    config = TrainConfig(data=str(demo), image_size=16, eval_holdout=0.2)
    dataset = load_dataset(config, logging.getLogger("test"), None)
    held = {p for p, _ in _side(demo, "holdout").samples}
    assert held and not held & {p for p, _ in dataset.samples}
    assert dataset.held_out_count == len(held)
    assert TrainConfig.from_dict(config.to_dict()).eval_holdout == 0.2  # config.json carries it


def test_copy_rate_calibration_training_images_noise_and_unseen_images(demo):
    train, held = _side(demo, "train"), _side(demo, "holdout")
    pixels = memorisation.pixel_vectors(train.images)
    threshold = memorisation.copy_threshold(pixels)
    copies = memorisation.check_space(memorisation.pixel_vectors(train.images[:40]), pixels, threshold)
    assert copies.rate == 1.0 and (copies.nearest == np.arange(40)).all()
    noise = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert memorisation.check_space(memorisation.pixel_vectors(noise), pixels, threshold).rate == 0.0
    unseen = memorisation.check_space(memorisation.pixel_vectors(held.images), pixels, threshold)
    assert unseen.rate <= 0.25, unseen.rate


def test_the_evaluator_scores_against_held_out_images_and_checks_copies(demo, tmp_path, one_thread):
    ev = Evaluator(demo, image_size=16, features="dataset", cache_dir=tmp_path, holdout=0.2, feature_seconds=2)
    held = _side(demo, "holdout", cache=tmp_path)
    train = _side(demo, "train", cache=tmp_path)
    assert ev.real_count == len(held) and len(ev.train_features) == len(train)
    assert ev.settings_record(__import__("core.quality.evaluate", fromlist=["x"]).EvalSettings())["real"] == "holdout"
    own = ev.net.embed(train.images[:30])[0]
    check = ev.copy_check(own, memorisation.pixel_vectors(train.images[:30]), train.labels[:30].tolist())
    assert check.rate == 1.0 and check.pixels.rate == 1.0 and set(check.per_class.values()) == {1.0}
    unseen = ev.copy_check(ev.net.embed(held.images)[0], memorisation.pixel_vectors(held.images))
    assert unseen.rate <= 0.3 and unseen.pixels.rate <= 0.3, (unseen.rate, unseen.pixels.rate)
    fields = check.record_fields()
    assert {"rule", "threshold", "pixel_rate", "per_class"} <= set(fields)

"""Feature networks: Inception from a file on disk only; the dataset net trains, separates
the demo classes and is cached by the dataset's content."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from core.quality import features
from core.data.dataset import DataOptions, ImageFolderDataset
from core.data.demo import make_demo_dataset


def _load(root, size=32):
    return ImageFolderDataset(root, DataOptions(image_size=size, flip=False))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    make_demo_dataset(base / "train", per_class=40, size=32, seed=0)
    make_demo_dataset(base / "heldout", per_class=20, size=32, seed=1)  # other pictures
    return base


def test_dataset_net_separates_the_demo_classes_on_unseen_images(demo, tmp_path, one_thread):
    train = _load(demo / "train")
    net = features.dataset_feature_net(train.images, train.labels, train.classes, root=demo / "train",
                                       cache_dir=tmp_path, seconds=300, epochs=12)
    held = _load(demo / "heldout")
    assert held.classes == train.classes
    feats, probs = net.embed(held.images)
    assert feats.shape == (len(held), 128) and feats.dtype == np.float64
    accuracy = (probs.argmax(1) == held.labels.numpy()).mean()
    assert accuracy >= 0.9, accuracy
    # float inputs in [-1, 1] give the same features as the uint8 images
    again, _ = net.embed(held.images[:8].float() / 127.5 - 1)
    np.testing.assert_allclose(again, feats[:8], rtol=1e-4, atol=1e-5)


def test_dataset_net_cache_is_reused_and_invalidated(demo, tmp_path, one_thread):
    root = tmp_path / "data"
    make_demo_dataset(root, per_class=6, size=16, seed=2)
    kw = dict(root=root, cache_dir=tmp_path / "cache", seconds=60, epochs=1)
    ds = _load(root, 16)
    first = features.dataset_feature_net(ds.images, ds.labels, ds.classes, **kw)
    assert not first.cached and len(list((tmp_path / "cache").glob("featnet-*.pt"))) == 1
    second = features.dataset_feature_net(ds.images, ds.labels, ds.classes, **kw)
    assert second.cached and second.key == first.key
    x = ds.images[:4]
    np.testing.assert_array_equal(first.embed(x)[0], second.embed(x)[0])

    # Change one image's pixels: another content key, so the net is retrained and replaced.
    victim = next((root / ds.classes[0]).glob("*.jpg"))
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (255, 0, 255)).save(buf, "JPEG")
    victim.write_bytes(buf.getvalue())
    changed = _load(root, 16)
    third = features.dataset_feature_net(changed.images, changed.labels, changed.classes, **kw)
    assert not third.cached and third.key != first.key
    assert len(list((tmp_path / "cache").glob("featnet-*.pt"))) == 1
    assert features.dataset_feature_net(changed.images, changed.labels, changed.classes, **kw).cached


def test_dataset_net_damaged_cache_is_rebuilt(tmp_path, one_thread):
    root = tmp_path / "data"
    make_demo_dataset(root, per_class=4, size=16, seed=3)
    ds = _load(root, 16)
    kw = dict(root=root, cache_dir=tmp_path / "cache", seconds=60, epochs=1)
    features.dataset_feature_net(ds.images, ds.labels, ds.classes, **kw)
    (cache_file,) = (tmp_path / "cache").glob("featnet-*.pt")
    cache_file.write_bytes(b"not a torch file")
    net = features.dataset_feature_net(ds.images, ds.labels, ds.classes, **kw)
    assert not net.cached
    assert features.dataset_feature_net(ds.images, ds.labels, ds.classes, **kw).cached


def test_dataset_net_time_budget_stops_training(one_thread):
    calls = []
    images = torch.randint(0, 256, (128, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(128) % 2
    features.train_dataset_net(images, labels, 2, seconds=1e-6, epochs=5,
                               progress=lambda done, total, what: calls.append((done, total)))
    assert calls == [(1, 10)]  # one step (the minimum), then the clock says stop
    calls.clear()
    features.train_dataset_net(images, labels, 2, seconds=600, epochs=2,
                               progress=lambda done, total, what: calls.append((done, total)))
    assert calls[-1] == (4, 4)


def test_dataset_net_needs_two_classes():
    with pytest.raises(features.FeatureError, match="at least 2 breed"):
        features.train_dataset_net(torch.zeros((4, 3, 8, 8), dtype=torch.uint8), torch.zeros(4), 1)


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """Random but fixed InceptionV3 weights in torchvision's file name, written once."""
    from torchvision.models.inception import Inception3

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hub") / "checkpoints" / features.INCEPTION_FILE
    path.parent.mkdir()
    torch.save(Inception3(aux_logits=True, init_weights=False).state_dict(), path)
    return path


def _known_image(size=32):
    """A picture with edges, a gradient and distinct channels (so a wrong resize, scale or
    channel normalisation shows)."""
    y, x = np.mgrid[0:size, 0:size]
    rgb = np.stack([x * 255 // (size - 1), y * 255 // (size - 1), ((x // 4 + y // 4) % 2) * 200 + 30], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def test_inception_preprocessing_matches_torchvisions_documented_transform(inception_file, one_thread):
    """Reference, written independently: what torchvision documents for its IMAGENET1K_V1
    weights, i.e. the weights' own transform (bilinear resize, ImageNet mean/std; here
    resize_size = crop_size = 299, FID's whole-image squash rather than a crop) on the PIL
    image, into Inception3 with transform_input=True (as inception_v3(weights=...) builds
    it). Equal features mean our input scaling, 299 px resize and transform_input setting
    give the network the pixels torchvision's weights expect."""
    from torchvision.models import Inception_V3_Weights
    from torchvision.models.inception import Inception3

    pil = _known_image()
    reference_transform = Inception_V3_Weights.IMAGENET1K_V1.transforms(resize_size=299)
    assert reference_transform.crop_size == [299] and reference_transform.mean == [0.485, 0.456, 0.406]
    # given a float tensor (not the PIL image, which PIL would resize in uint8, rounding)
    from torchvision.transforms.functional import to_tensor

    x = reference_transform(to_tensor(pil))[None]
    assert x.shape == (1, 3, 299, 299)
    ref_net = Inception3(aux_logits=True, transform_input=True, init_weights=False)
    ref_net.load_state_dict(torch.load(inception_file, weights_only=True))
    ref_net.fc = torch.nn.Identity()
    with torch.inference_mode():
        expected = ref_net.eval()(x).double().numpy()

    ours = features.load_inception(inception_file)
    uint8 = torch.from_numpy(np.array(pil)).permute(2, 0, 1)[None].contiguous()
    got, probs = ours.embed(uint8)
    assert probs is None and got.shape == (1, 2048)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # the model's float range [-1, 1] is the same picture
    again, _ = ours.embed(uint8.float() / 127.5 - 1)
    np.testing.assert_allclose(again, got, rtol=1e-5, atol=1e-6)


def test_auto_features_choose_inception_when_its_weights_are_on_disk(inception_file, tmp_path, one_thread):
    from core.quality import evaluate

    hub_before = torch.hub.get_dir()
    try:
        torch.hub.set_dir(str(tmp_path / "empty-hub"))
        assert not features.inception_available()
        assert evaluate.resolve_features("auto") == "dataset"
        torch.hub.set_dir(str(inception_file.parent.parent))  # <hub>/checkpoints/<file>
        assert features.default_inception_path() == inception_file
        assert evaluate.resolve_features("auto") == "inception"
        root = tmp_path / "data"
        make_demo_dataset(root, per_class=1, size=16, seed=0)
        ev = evaluate.Evaluator(root, image_size=16, features="auto")
        assert ev.features == "inception" and ev.net.name == "inception"
        assert ev.real_features.shape == (ev.real_count, 2048)
    finally:
        torch.hub.set_dir(hub_before)


def test_inception_loads_a_state_dict_from_disk(inception_file, one_thread):
    path = inception_file
    assert features.inception_available(path)
    net = features.load_inception(path)
    feats, probs = net.embed(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert feats.shape == (2, 2048) and probs is None
    assert np.isfinite(feats).all()
    assert net.key and net.name == "inception"


def test_inception_missing_or_bad_weights_give_one_line(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(features.FeatureError) as err:
        features.load_inception(missing)
    text = str(err.value)
    assert "\n" not in text and str(missing) in text
    assert features.INCEPTION_URL in text and "--fid-weights" in text
    assert features.INCEPTION_FILE in features.missing_inception_message()

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"<html>not weights</html>")
    with pytest.raises(features.FeatureError, match=r"junk\.pth: not a PyTorch weights file$"):
        features.load_inception(junk)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(features.FeatureError, match="not torchvision InceptionV3"):
        features.load_inception(wrong)

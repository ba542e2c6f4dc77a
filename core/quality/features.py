"""Feature networks for the sample-quality metrics, chosen by name.

- ``inception``: torchvision's InceptionV3, its 2048-d pool features, images resized to
  299x299. Loaded only from a weights file on disk (torch's hub cache, or a path the user
  gives); never downloaded. Note: torchvision's ImageNet weights, not the TensorFlow graph
  that papers' FID uses, so the figures are close to but not the same as published FIDs.
- ``dataset``: a small CNN trained on the dataset's own breed folders for a bounded time,
  cached under ``<workspace>/cache/`` and reused while the dataset's content is unchanged.
  Its penultimate layer gives the features and its head the breed of an image, so the
  numbers compare runs on the same dataset only.

Images go in as float tensors (N, 3, S, S) in [-1, 1] (the model's range) or uint8 (N, 3, S, S).
``embed`` returns float64 features and, for the dataset net, class probabilities.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.diffusion.checkpoint import atomic_torch_save

FEATURES = ("inception", "dataset")
INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"  # torchvision's IMAGENET1K_V1 file name
INCEPTION_URL = f"https://download.pytorch.org/models/{INCEPTION_FILE}"
# torch.hub's convention: the name's last part is the start of the file's sha256
INCEPTION_SHA256_PREFIX = INCEPTION_FILE.rsplit("-", 1)[1].split(".")[0]
INCEPTION_SIZE = 299
INCEPTION_PREPROCESSING = 2  # in the key: features (and evaluations) of another version are not comparable
FEATNET_FORMAT = "ddpm-tui-featnet"
FEATNET_VERSION = 2  # bump when the architecture or the training recipe changes
TRAIN_SECONDS = 60.0  # the dataset net's training budget (the demo set needs ~10 s of CPU)
TRAIN_EPOCHS = 10
TRAIN_STEPS = 300  # at least this many optimizer steps: a small dataset gets more epochs

Progress = Callable[[int, int, str], None]
_log = logging.getLogger(__name__)


class FeatureError(Exception):
    """A feature network that cannot be used; the message is one line for the user."""


def as_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [-1, 1] -> float32 [-1, 1]."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    return images.float().clamp(-1.0, 1.0)


class FeatureNet:
    """A network that turns images into feature rows (and maybe class probabilities)."""

    name: str = ""
    key: str = ""  # identity of the weights: evaluations with another key are not comparable
    classes: list[str] | None = None

    def __init__(self, net: nn.Module, device: torch.device | str = "cpu") -> None:
        self.net = net.eval()
        self.device = torch.device(device)

    def to(self, device: torch.device | str) -> "FeatureNet":
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    @torch.inference_mode()
    def embed(self, images: torch.Tensor, *, batch_size: int = 100,
              progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(features (N, d) float64, class probabilities (N, C) or None)."""
        feats, probs = [], []
        n = images.shape[0]
        for lo in range(0, n, batch_size):
            x = as_unit_range(images[lo:lo + batch_size]).to(self.device)
            f, logits = self._forward(x)
            feats.append(f.double().cpu())
            if logits is not None:
                probs.append(torch.softmax(logits.double(), dim=1).cpu())
            if progress is not None:
                progress(min(lo + batch_size, n), n, f"{self.name} features")
        features = torch.cat(feats).numpy() if feats else np.zeros((0, 0))
        return features, (torch.cat(probs).numpy() if probs else None)


# ---------------------------------------------------------------------------- inception


def default_inception_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def missing_inception_message(path: Path | None = None) -> str:
    where = path or default_inception_path()
    return (f"Inception weights not found at {where}: download {INCEPTION_URL} "
            f"({INCEPTION_FILE}, sha256 starting {INCEPTION_SHA256_PREFIX}; never fetched for you) and put it in "
            f"{default_inception_path().parent}/ (or pass --fid-weights PATH), or use --features dataset")


def inception_available(path: str | os.PathLike | None = None) -> bool:
    return Path(path or default_inception_path()).expanduser().is_file()


def _file_key(path: Path) -> str:
    """Size + hash of the first MiB: tells weight files apart without reading 100 MB."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


class InceptionFeatures(FeatureNet):
    name = "inception"

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        return self.net(x), None  # fc is Identity: the 2048-d average-pool output


def load_inception(path: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> InceptionFeatures:
    """InceptionV3 from a state-dict file on disk; FeatureError (one line) when absent or wrong."""
    from torchvision.models.inception import Inception3

    path = Path(path).expanduser() if path else default_inception_path()
    if not path.is_file():
        raise FeatureError(missing_inception_message(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file, HTML saved as .pth, a pickle with code
        # torch's own message runs to many lines (and is cut anywhere): the one line that matters.
        raise FeatureError(f"{path}: not a PyTorch weights file") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    # torchvision's transform_input turns ImageNet-normalised inputs into [-1, 1], the range
    # these (ported Google) weights were trained on. Ours are in [-1, 1] already, so it is
    # off (version 1 had it on: the net saw x * 0.46 - 0.03).
    net = Inception3(num_classes=1000, aux_logits=True, transform_input=False, init_weights=False)
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise FeatureError(f"{path}: not torchvision InceptionV3 weights ({first})") from None
    net.fc = nn.Identity()
    out = InceptionFeatures(net, device).to(device)
    out.key = f"{_file_key(path)}-p{INCEPTION_PREPROCESSING}"
    return out


# ---------------------------------------------------------------------------- dataset net


class SmallCNN(nn.Module):
    """Four conv stages, global average pool -> ``width`` features -> class logits."""

    def __init__(self, num_classes: int, width: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        chans = [3, 16, 32, 64, width]
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False),
                       nn.BatchNorm2d(chans[i + 1]), nn.ReLU(inplace=True)]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.body(x)
        return f, self.head(f)


class DatasetFeatures(FeatureNet):
    name = "dataset"
    cached = False  # loaded from the cache (True) or trained just now

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x)


def dataset_key(images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> str:
    """A hash of the decoded pixels, labels and class names: the dataset's content."""
    h = hashlib.sha256(f"{FEATNET_VERSION}|{tuple(images.shape)}|{list(classes)}".encode())
    h.update(labels.to(torch.int64).numpy().tobytes())
    h.update(images.contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def _seeded_net(num_classes: int, seed: int = 0) -> SmallCNN:
    """A SmallCNN initialised from ``seed``, leaving the global random stream as it was: an
    evaluation inside training must not change the trainer's (--eval-every)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SmallCNN(num_classes)


def train_dataset_net(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                      seconds: float = TRAIN_SECONDS, epochs: int | None = None, seed: int = 0,
                      batch_size: int = 64, progress: Progress | None = None) -> SmallCNN:
    """Train the small CNN on uint8 images (N, 3, S, S) for ``epochs`` (default: TRAIN_EPOCHS,
    or more to make TRAIN_STEPS steps) or ``seconds``, whichever ends first, with random
    horizontal flips. The learning rate follows a cosine over whichever of the two is
    further along, so a run cut short by the clock still ends at a low rate (converged)."""
    if num_classes < 2:
        raise FeatureError(f"the dataset feature net needs at least 2 breed folders, found {num_classes}")
    gen = torch.Generator().manual_seed(seed)
    net = _seeded_net(num_classes, seed)
    max_lr = 2e-3
    opt = torch.optim.Adam(net.parameters(), lr=max_lr)
    n = images.shape[0]
    steps_per_epoch = max(1, -(-n // batch_size))
    if epochs is None:
        epochs = max(TRAIN_EPOCHS, -(-TRAIN_STEPS // steps_per_epoch))
    total = epochs * steps_per_epoch
    warmup = max(1, total // 20)
    labels = labels.to(torch.long)
    start = time.monotonic()
    step = 0
    net.train()
    while step < total:
        order = torch.randperm(n, generator=gen)
        for lo in range(0, n, batch_size):
            done = max(step / total, (time.monotonic() - start) / max(seconds, 1e-9))
            if done >= 1.0 and step > 0:  # at least one step, whatever the budget
                break
            done = min(done, 1.0)
            for group in opt.param_groups:
                group["lr"] = max_lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * done))
            idx = order[lo:lo + batch_size]
            x = as_unit_range(images[idx])
            flip = torch.rand(x.shape[0], generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            _, logits = net(x)
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if progress is not None:
                progress(step, total, "training the dataset feature net")
        else:
            continue
        break
    if step < total:
        _log.info("dataset feature net: stopped at step %d of %d, the %.0f s budget", step, total, seconds)
    return net.eval()


def _cache_file(cache_dir: Path, root: Path | str, image_size: int) -> Path:
    tag = hashlib.sha256(f"{Path(root).resolve()}|{image_size}".encode()).hexdigest()[:16]
    return Path(cache_dir) / f"featnet-{tag}.pt"


def dataset_feature_net(images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], *,
                        root: Path | str, cache_dir: Path | str | None, device: torch.device | str = "cpu",
                        seconds: float = TRAIN_SECONDS, epochs: int | None = None,
                        progress: Progress | None = None) -> DatasetFeatures:
    """The dataset's feature net: loaded from the cache when it was trained on this exact
    content (pixels, labels, class names, image size), else trained and cached (atomically,
    replacing the stale one for this folder and size)."""
    key = dataset_key(images, labels, classes)
    path = _cache_file(Path(cache_dir), root, int(images.shape[-1])) if cache_dir is not None else None
    net = _seeded_net(len(classes))
    loaded = False
    if path is not None and path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if (isinstance(blob, dict) and blob.get("format") == FEATNET_FORMAT
                    and blob.get("version") == FEATNET_VERSION and blob.get("key") == key):
                net.load_state_dict(blob["state"])
                loaded = True
        except Exception as exc:  # a damaged cache file is rebuilt, never fatal
            _log.warning("ignoring the feature-net cache %s: %s", path, exc)
    if not loaded:
        net = train_dataset_net(images, labels, len(classes), seconds=seconds, epochs=epochs, progress=progress)
        if path is not None:
            try:
                atomic_torch_save({"format": FEATNET_FORMAT, "version": FEATNET_VERSION, "key": key,
                                   "classes": list(classes), "image_size": int(images.shape[-1]),
                                   "state": net.state_dict()}, path)
            except OSError as exc:  # a full disk costs a retrain next time, not the evaluation
                _log.warning("cannot cache the feature net at %s: %s", path, exc)
    out = DatasetFeatures(net.eval(), device).to(device)
    out.key = key
    out.classes = list(classes)
    out.cached = loaded
    return out

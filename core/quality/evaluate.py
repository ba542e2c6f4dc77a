"""Evaluate a model's samples against its training images: FID, KID ± std, precision,
recall, and (with the dataset feature net) class accuracy of conditional samples or class
entropy of unconditional ones.

Two entry points:
- :class:`Evaluator` holds the real side (the feature net and the real images' features),
  so the trainer can build it once and call :meth:`Evaluator.evaluate` every N steps with
  its EMA model in-process;
- :func:`evaluate_checkpoint` does the whole job for a checkpoint file (``ddpm-tui eval``),
  reusing an evaluation already in ``<run>/eval.jsonl`` for the same checkpoint and settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from core.quality import eval_log, memorisation, metrics
from core.quality.features import (FEATURES, FeatureError, FeatureNet, dataset_feature_net, inception_available,
                           load_inception)

from core.diffusion.registry import (DEFAULT_GUIDANCE, DEFAULT_SAMPLER, MAX_IMAGES, SAMPLER_NAMES as SAMPLERS,
                                     default_steps, sampler_spec)
AUTO_FEATURES = "auto"  # inception when its weights are on disk, else dataset
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
REAL_CACHE_VERSION = 2  # 2: a sidecar .json describes the .npy (what it was computed from, its digest)

Progress = Callable[[int, int, str], None]
_log = logging.getLogger(__name__)


class EvalError(Exception):
    """An evaluation that cannot run; the message is one line for the user."""


@dataclass(frozen=True)
class EvalSettings:
    """Everything that changes the numbers (batch size and device do not, statistically)."""

    n: int = 1000
    sampler: str = DEFAULT_SAMPLER
    steps: int | None = None  # None: the sampler's own default (ddpm always runs all T)
    eta: float = 0.0
    guidance: float = DEFAULT_GUIDANCE  # conditional runs (1 = plain conditional); as `sample` draws
    seed: int = 0
    weights: str = "ema"  # "ema" | "raw"
    ema_length: float | None = None  # power EMA's sigma_rel (None: the run's own, or an exponential EMA)

    def __post_init__(self) -> None:
        if self.steps is None and self.sampler in SAMPLERS:  # an unknown one: validate says so
            object.__setattr__(self, "steps", default_steps(self.sampler))

    def validate(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 2:
            raise EvalError(f"n must be at least 2 images (FID needs a covariance), got {self.n!r}")
        if self.n > MAX_IMAGES:
            raise EvalError(f"n must be at most {MAX_IMAGES} images (FID's customary sample size), got {self.n!r}")
        if self.sampler not in SAMPLERS:
            raise EvalError(f"unknown sampler {self.sampler!r}; use one of {', '.join(SAMPLERS)}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise EvalError(f"steps must be a positive integer, got {self.steps!r}")
        if self.weights not in ("ema", "raw"):
            raise EvalError(f"weights must be 'ema' or 'raw', got {self.weights!r}")
        if self.ema_length is not None:
            from core.diffusion.sampling import check_ema_length

            try:
                check_ema_length(self.ema_length)
            except ValueError as exc:
                raise EvalError(str(exc)) from None

    def as_used(self, conditional: bool) -> "EvalSettings":
        """These settings as the draw uses them: eta 0 for a sampler that takes none, guidance
        1 for an unconditional model. The record then says what was used, and an evaluation
        that differs only in an ignored setting is reused, not recomputed."""
        eta = self.eta if sampler_spec(self.sampler).uses_eta else 0.0
        guidance = self.guidance if conditional else 1.0  # what generate uses without labels
        return EvalSettings(**{**asdict(self), "eta": eta, "guidance": guidance})


@dataclass
class EvalResult:
    values: dict[str, float]  # fid, kid, kid_std, precision, recall, class_accuracy | class_entropy
    step: int
    features: str
    settings: EvalSettings
    seconds: float
    reused: bool = False
    records: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------------------- sampling


def generate_images(model: nn.Module, diffusion, n: int, settings: EvalSettings, *,
                    device: torch.device | str = "cpu", amp: str = "auto", batch_size: int = 100,
                    progress: Progress | None = None) -> Iterator[torch.Tensor]:
    """n samples, one batch at a time, as uint8 (B, C, H, W) on the CPU like the dataset's
    images, drawn through core.diffusion.sampling.generate (the one sampling path): a
    conditional model draws its classes in turn, every class equally often. A batch is
    yielded as soon as it is drawn, so a caller that keeps only features stays bounded."""
    from core.diffusion.sampling import SampleRequest, generate

    request = SampleRequest(n=n, sampler=settings.sampler, steps=settings.steps, eta=settings.eta,
                            guidance=settings.guidance, seed=settings.seed, weights=settings.weights,
                            amp=amp, batch_size=batch_size)
    for step in generate((model, diffusion), request, device=device):
        if progress is not None:
            progress(step.batch * step.total + step.index + 1, step.batches * step.total, "sampling")
        if step.images is not None:
            yield step.images.permute(0, 3, 1, 2).contiguous().cpu()


# ---------------------------------------------------------------------------- the real side


def resolve_features(name: str, fid_weights: str | os.PathLike | None = None) -> str:
    """'auto' -> 'inception' when its weights are on disk (or a weights file was named:
    a wrong path is then an error, not a silent switch), else 'dataset'."""
    if name == AUTO_FEATURES:
        return "inception" if fid_weights or inception_available() else "dataset"
    if name not in FEATURES:
        raise EvalError(f"unknown features {name!r}; use one of {', '.join((AUTO_FEATURES,) + FEATURES)}")
    return name


def _real_cache_file(cache_dir: Path, net: FeatureNet, images: torch.Tensor) -> tuple[Path, dict]:
    """The cache file of these images' features by this net, and the description its sidecar
    .json must hold: the digest of the images (pixels of every file, in order), the net's
    key and the row count. The digest of the features themselves is added when written."""
    h = hashlib.sha256(f"{REAL_CACHE_VERSION}|{net.name}|{net.key}|{tuple(images.shape)}".encode())
    h.update(images.contiguous().numpy().tobytes())
    described = {"version": REAL_CACHE_VERSION, "dataset": h.hexdigest(), "features": net.name,
                 "feature_key": net.key, "rows": int(images.shape[0])}
    return cache_dir / f"realfeat-{h.hexdigest()[:24]}.npy", described


def _features_digest(feats: np.ndarray) -> str:
    return hashlib.sha256(f"{feats.dtype}|{feats.shape}".encode() + np.ascontiguousarray(feats).tobytes()).hexdigest()


def _load_real_cache(path: Path, described: dict) -> np.ndarray | None:
    """The cached features when they are what the sidecar says and the sidecar describes this
    dataset and net; None (recompute) for anything else: no sidecar, another dataset, a
    tampered, cut, NaN or wrong-width file."""
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        feats = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        _log.warning("ignoring the real-feature cache %s: %s", path, exc)
        return None
    fits = (isinstance(meta, dict) and all(meta.get(k) == v for k, v in described.items())
            and feats.ndim == 2 and feats.shape[0] == described["rows"] and feats.shape[1] == meta.get("width")
            and feats.dtype == np.float64 and bool(np.isfinite(feats).all())
            and meta.get("sha256") == _features_digest(feats))
    if not fits:
        _log.warning("ignoring the real-feature cache %s: it does not match its dataset; recomputing", path)
    return feats if fits else None


class Evaluator:
    """The real images of a dataset, a feature net and the real features, built once."""

    def __init__(self, data_dir: str | os.PathLike, *, image_size: int, resize: str = "squash",
                 classes: Sequence[str] | None = None, features: str = AUTO_FEATURES,
                 fid_weights: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 device: torch.device | str = "cpu", feature_seconds: float | None = None,
                 progress: Progress | None = None, holdout: float = 0.0) -> None:
        """``holdout``: the run's --eval-holdout. With it the real side is the held-out
        images (FID against images never trained on); the training side is always what the
        memorisation check (core.quality.memorisation) compares samples with."""
        from core.data.dataset import DataOptions, DatasetError, ImageFolderDataset

        self.device = torch.device(device)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.features = resolve_features(features, fid_weights)
        root = Path(data_dir).expanduser()
        if not str(data_dir) or not root.is_dir():
            raise EvalError(f"dataset folder {root} not found (the run's training images; pass --data DIR)")
        try:
            data = ImageFolderDataset(root, DataOptions(image_size=int(image_size), resize=resize, flip=False),
                                      cache_dir=self.cache_dir, classes=list(classes) if classes else None,
                                      progress=progress, holdout=holdout, part="all")
        except (DatasetError, ValueError) as exc:
            raise EvalError(str(exc)) from None
        self.holdout = float(holdout)
        held = torch.tensor(data.held_out, dtype=torch.bool)
        train_images, train_labels = data.images[~held], data.labels[~held]
        real_images = data.images[held] if self.holdout else train_images
        if len(real_images) < 2 or len(train_images) < 2:
            side = "held-out" if len(real_images) < 2 else "training"
            raise EvalError(f"{root}: at least 2 readable {side} images are needed, found "
                            f"{min(len(real_images), len(train_images))}")
        self.classes = list(data.classes)
        self.real_labels = (data.labels[held] if self.holdout else train_labels).numpy()
        self.train_labels = train_labels.numpy()
        if self.features == "inception":
            try:
                self.net: FeatureNet = load_inception(fid_weights, self.device)
            except FeatureError as exc:
                raise EvalError(str(exc)) from None
        else:
            extra = {"seconds": feature_seconds} if feature_seconds is not None else {}
            try:
                self.net = dataset_feature_net(train_images, train_labels, data.classes, root=root,
                                               cache_dir=self.cache_dir, device=self.device,
                                               progress=progress, **extra)
            except FeatureError as exc:
                raise EvalError(str(exc)) from None
        self.real_features = self._real_features(real_images, progress)
        self.train_features = self._real_features(train_images, progress) if self.holdout else self.real_features
        self.train_pixels = memorisation.pixel_vectors(train_images)
        self._thresholds: tuple[float, float] | None = None
        self.real_count = len(real_images)

    def _real_features(self, images: torch.Tensor, progress: Progress | None) -> np.ndarray:
        if self.cache_dir is None:
            return self.net.embed(images, progress=progress)[0]
        path, described = _real_cache_file(self.cache_dir, self.net, images)
        cached = _load_real_cache(path, described)
        if cached is not None:
            return cached
        feats, _ = self.net.embed(images, progress=progress)
        from core.io.atomic import atomic_write, atomic_write_text

        meta = {**described, "width": int(feats.shape[1]), "sha256": _features_digest(feats)}
        try:  # the features first: a sidecar never describes a file that is not there yet
            atomic_write(path, lambda fh: np.save(fh, feats, allow_pickle=False))
            atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=1) + "\n")
        except OSError as exc:
            _log.warning("cannot cache real features at %s: %s", path, exc)
        return feats

    def settings_record(self, settings: EvalSettings) -> dict:
        held = {"real": "holdout", "holdout": self.holdout} if getattr(self, "holdout", 0.0) else {}
        # ema_length only when given: the ids of evaluations recorded before it existed stay the same.
        chosen = {k: v for k, v in asdict(settings).items() if k != "ema_length" or v is not None}
        return {**chosen, "features": self.features, "feature_key": self.net.key, **held}

    def copy_check(self, fake: np.ndarray, pixels: np.ndarray | None,
                   labels: Sequence[int] | None = None) -> memorisation.CopyCheck | None:
        """The memorisation check of samples' features (and downscaled pixels) against the
        training images; None for a real side without training images (reference statistics)."""
        if getattr(self, "train_features", None) is None:
            return None
        if self._thresholds is None:  # the training set's own spacing: computed once
            self._thresholds = (memorisation.copy_threshold(self.train_features),
                                memorisation.copy_threshold(self.train_pixels))
        feats = memorisation.check_space(fake, self.train_features, self._thresholds[0])
        pix = memorisation.check_space(pixels, self.train_pixels, self._thresholds[1]) if pixels is not None else None
        per_class = (memorisation.per_class_rates(feats.copies, labels, self.classes)
                     if labels is not None and self.classes else {})
        return memorisation.CopyCheck(feats, pix, per_class)

    def score(self, samples: torch.Tensor, labels: Sequence[int] | None = None,
              progress: Progress | None = None) -> dict[str, float]:
        """The metrics of generated images (float [-1, 1] or uint8) against the real set."""
        fake, probs = self.net.embed(samples, progress=progress)
        return self.score_features(fake, probs, labels)

    def score_features(self, fake: np.ndarray, probs: np.ndarray | None,
                       labels: Sequence[int] | None = None) -> dict[str, float]:
        """The metrics of generated images' features (and class probabilities) against the real
        set; EvalError (one line) for features the metrics refuse (NaN, another width)."""
        try:
            return self._metrics(self.real_features, fake, probs, labels)
        except ValueError as exc:
            raise EvalError(f"cannot compute the metrics: {exc}") from None

    @staticmethod
    def _metrics(real: np.ndarray, fake: np.ndarray, probs: np.ndarray | None,
                 labels: Sequence[int] | None) -> dict[str, float]:
        kid_mean, kid_std = metrics.kid(real, fake, subsets=KID_SUBSETS, subset_size=kid_subset_size(len(real), len(fake)))
        # k-NN manifolds over equal-sized sets (the paper's protocol), bounded memory.
        rng = np.random.default_rng(0)
        m = min(len(real), len(fake))
        real_pr = real[rng.choice(len(real), m, replace=False)] if len(real) > m else real
        values = {"fid": metrics.fid(real, fake), "kid": kid_mean, "kid_std": kid_std}
        if m > metrics.PR_NEIGHBOURS:
            values["precision"], values["recall"] = metrics.precision_recall(real_pr, fake[:m])
        if probs is not None:
            if labels is not None:
                values["class_accuracy"] = metrics.class_accuracy(probs.argmax(1), labels)
            else:
                values["class_entropy"] = metrics.class_entropy(probs)
        return values

    def evaluate(self, model: nn.Module, diffusion, settings: EvalSettings, *, step: int,
                 identity: dict | None = None, run_dir: str | os.PathLike | None = None,
                 amp: str = "auto", batch_size: int = 100, progress: Progress | None = None) -> EvalResult:
        """Sample ``settings.n`` images from ``model`` (already holding the weights to judge),
        score them and, with ``run_dir``, append the result to eval.jsonl. An evaluation
        already there with the same identity and settings is returned instead."""
        settings.validate()
        num_classes = int(getattr(model.config, "num_classes", 0) or 0)
        settings = settings.as_used(conditional=bool(num_classes))
        identity = identity if identity is not None else {"step": int(step)}
        eid = eval_log.eval_id(identity, self.settings_record(settings))
        if run_dir is not None:
            _check_log(run_dir)
            earlier = eval_log.find_evaluation(run_dir, eid)
            if earlier:
                return _result_from_records(earlier, settings, self.features)
        t0 = time.perf_counter()
        labels = None
        if num_classes:
            labels = [i % num_classes for i in range(settings.n)]  # every breed equally often
            if self.net.classes is not None and len(self.net.classes) != num_classes:
                raise EvalError(f"the model knows {num_classes} classes but the dataset has {len(self.net.classes)}")
        fake, probs, pixels = self._embed_samples(model, diffusion, settings, amp=amp, batch_size=batch_size,
                                                  progress=progress)
        values = self.score_features(fake, probs, labels if self.net.classes is not None else None)
        copies = self.copy_check(fake, pixels, labels)
        if copies is not None:
            values["copy_rate"] = copies.rate
        seconds = time.perf_counter() - t0
        held = {"real": "holdout"} if getattr(self, "holdout", 0.0) else {}
        records = _records(values, step=step, settings=settings, features=self.features, eid=eid,
                           identity=identity, extra={"feature_key": self.net.key, "seconds": round(seconds, 3),
                                                     "real_n": self.real_count, **held})
        for record in records:
            if record["metric"] == "copy_rate" and copies is not None:
                record.update(copies.record_fields())
        if run_dir is not None:
            try:
                eval_log.append_records(run_dir, records)
            except eval_log.EvalLogError as exc:
                raise EvalError(str(exc)) from None
        return EvalResult(values, int(step), self.features, settings, seconds, False, records)

    def _embed_samples(self, model: nn.Module, diffusion, settings: EvalSettings, *, amp: str, batch_size: int,
                       progress: Progress | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Draw ``settings.n`` images and keep only their features and downscaled pixels (the
        copy check's): one batch of full images in memory."""
        feats, probs, pixels = [], [], []
        for batch in generate_images(model, diffusion, settings.n, settings, device=_model_device(model), amp=amp,
                                     batch_size=batch_size, progress=progress):
            f, p = self.net.embed(batch, batch_size=batch_size)
            feats.append(f)
            pixels.append(memorisation.pixel_vectors(batch))
            if p is not None:
                probs.append(p)
        return np.concatenate(feats), (np.concatenate(probs) if probs else None), np.concatenate(pixels)


def _check_log(run_dir: str | os.PathLike) -> None:
    try:
        eval_log.check_writable(run_dir)
    except eval_log.EvalLogError as exc:
        raise EvalError(str(exc)) from None


def kid_subset_size(n_real: int, n_fake: int) -> int:
    """1000 (the usual size) when both sets are larger; else half the smaller set, so the
    subsets differ and the std means something (subsets of a whole set are all the same)."""
    smaller = min(n_real, n_fake)
    return KID_SUBSET_SIZE if smaller > KID_SUBSET_SIZE else max(2, smaller // 2)


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _records(values: dict[str, float], *, step: int, settings: EvalSettings, features: str, eid: str,
             identity: dict, extra: dict) -> list[dict]:
    now = time.time()
    out = []
    for metric, value in values.items():
        if metric == "kid_std":
            continue
        r = {"step": int(step), "metric": metric, "value": float(value), "sampler": settings.sampler,
             "steps": settings.steps, "n": settings.n, "features": features, "time": now}
        if metric == "kid":
            r["std"] = float(values["kid_std"])
        r.update(eta=settings.eta, guidance=settings.guidance, seed=settings.seed, weights=settings.weights,
                 eval_id=eid, checkpoint=identity, metrics=sorted(m for m in values if m != "kid_std"), **extra)
        if settings.ema_length is not None:
            r["ema_length"] = settings.ema_length
        out.append(r)
    return out


def _result_from_records(records: dict[str, dict], settings: EvalSettings, features: str) -> EvalResult:
    values = {m: float(r["value"]) for m, r in records.items() if isinstance(r.get("value"), (int, float))}
    if "kid" in records and isinstance(records["kid"].get("std"), (int, float)):
        values["kid_std"] = float(records["kid"]["std"])
    any_record = records["fid"]
    return EvalResult(values, int(any_record.get("step") or 0), features, settings,
                      float(any_record.get("seconds") or 0.0), True, list(records.values()))


# ---------------------------------------------------------------------------- checkpoints


def checkpoint_identity(path: str | os.PathLike, step: int) -> dict:
    """What makes a checkpoint file the same one later: name, step, size and mtime."""
    st = Path(path).stat()
    return {"file": Path(path).name, "step": int(step), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def evaluate_checkpoint(ckpt_path: str | os.PathLike, *, run_dir: str | os.PathLike | None,
                        run_config: dict | None = None,
                        settings: EvalSettings, data_dir: str | os.PathLike | None = None,
                        features: str = AUTO_FEATURES, fid_weights: str | os.PathLike | None = None,
                        cache_dir: str | os.PathLike | None = None, device: torch.device | str = "cpu",
                        amp: str = "auto", batch_size: int = 100,
                        progress: Progress | None = None, evaluator: Evaluator | None = None) -> EvalResult:
    """Load a checkpoint, evaluate it against its run's dataset (or ``data_dir``) and append
    the result to ``run_dir``/eval.jsonl (reused when already there). ``run_config`` is the
    run's config.json (its dataset, classes and resize), read by the caller. ``evaluator``:
    a real side built by the caller (reference statistics), used instead of the dataset."""
    from core.diffusion.checkpoint import CheckpointError, build_model_from_checkpoint, load_checkpoint

    settings.validate()
    try:
        ckpt = load_checkpoint(ckpt_path)
    except CheckpointError as exc:
        raise EvalError(str(exc)) from None
    config = dict(run_config or {})
    extra = ckpt.get("extra") or {}
    classes = list(extra.get("classes") or config.get("classes") or [])
    model_cfg = ckpt.get("model_config") or {}
    data = data_dir or config.get("data") or extra.get("data")
    if not data and evaluator is None:
        raise EvalError(f"{ckpt_path}: no dataset recorded for this checkpoint; pass --data DIR")
    use_ema = settings.weights == "ema" and (bool(ckpt.get("ema")) or settings.ema_length is not None)
    try:
        model, diffusion = build_model_from_checkpoint(ckpt, use_ema=use_ema, ema_length=settings.ema_length)
    except CheckpointError as exc:
        raise EvalError(str(exc)) from None
    step = int(ckpt.get("step") or 0)
    del ckpt
    if settings.weights == "ema" and not use_ema:
        settings = EvalSettings(**{**asdict(settings), "weights": "raw"})  # say what was used
    evaluator = evaluator or Evaluator(data, image_size=int(model_cfg.get("image_size") or model.config.image_size),
                          resize=str(config.get("resize") or "squash"),
                          classes=classes if model.config.num_classes else None, features=features,
                          fid_weights=fid_weights, cache_dir=cache_dir, device=device, progress=progress,
                          holdout=float(config.get("eval_holdout") or 0.0))  # the run's split
    model, diffusion = model.to(device), diffusion.to(device)
    return evaluator.evaluate(model, diffusion, settings, step=step,
                              identity=checkpoint_identity(ckpt_path, step), run_dir=run_dir,
                              amp=amp, batch_size=batch_size, progress=progress)

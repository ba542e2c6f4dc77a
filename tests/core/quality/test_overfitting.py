"""The overfitting warning's rule on constructed eval.jsonl records (issue #21)."""

from __future__ import annotations

from core.quality.overfitting import FLAG, overfitting_warning


def _evals(fids, copies, real="holdout"):
    out = []
    for i, (fid, copy) in enumerate(zip(fids, copies)):
        step = (i + 1) * 100
        out += [{"step": step, "metric": "fid", "value": fid, "real": real},
                {"step": step, "metric": "copy_rate", "value": copy, "real": real}]
    return out


def test_fires_when_copies_rise_while_held_out_fid_stopped_falling():
    warning = overfitting_warning(_evals([80, 50, 40, 41, 40.5], [0.05, 0.05, 0.06, 0.12, 0.25]))
    assert warning is not None and warning.step == 500 and warning.best_step == 300
    assert "copy rate rose to 25%" in warning.message and "held-out" in warning.message
    assert "more data" in warning.message and "stop here" in warning.message and FLAG


def test_quiet_on_a_normal_run_and_while_fid_still_falls():
    assert overfitting_warning(_evals([80, 50, 40, 35, 30], [0.05, 0.04, 0.06, 0.05, 0.06])) is None
    # copying rises, but FID against held-out images still improves: not (yet) overfitting
    assert overfitting_warning(_evals([80, 50, 40, 30, 20], [0.05, 0.1, 0.2, 0.3, 0.4])) is None
    # a plateau without copying is the trend's business, not this warning's
    assert overfitting_warning(_evals([80, 50, 40, 41, 40.5], [0.05, 0.05, 0.06, 0.07, 0.06])) is None
    assert overfitting_warning(_evals([80, 81], [0.0, 0.5])) is None  # too few evaluations
    assert overfitting_warning([{"step": "x", "metric": "fid"}, "junk"]) is None


def test_uses_held_out_fid_when_the_run_has_it():
    train_side = _evals([80, 50, 40, 41, 40.5], [0.05, 0.05, 0.06, 0.12, 0.25], real=None)
    held_side = _evals([80, 50, 40, 30, 20], [0.05, 0.05, 0.06, 0.12, 0.25])
    assert overfitting_warning(train_side) is not None
    assert overfitting_warning(train_side + held_side) is None

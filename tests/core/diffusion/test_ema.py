"""EMA: parameters only, the update rule, warm-up, state round trip, the EMA copy."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from core.diffusion.ema import EMA


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)  # has buffers, which the EMA must not track


def _set_params(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_shadow_holds_parameters_only():
    model = Net()
    ema = EMA(model)
    assert set(ema.shadow) == {"lin.weight", "lin.bias", "bn.weight", "bn.bias"}
    assert "bn.running_mean" not in ema.shadow
    # A copy, not an alias of the live weights.
    _set_params(model, 5.0)
    assert not torch.equal(ema.shadow["lin.bias"], model.lin.bias)


def _one_update(decay: float) -> tuple[nn.Module, EMA]:
    """An EMA made at weights 0, then updated once with the weights at 1."""
    model = Net()
    _set_params(model, 0.0)
    ema = EMA(model, decay=decay)
    _set_params(model, 1.0)
    ema.update(model)
    return model, ema


def test_update_follows_the_rule():
    model, ema = _one_update(0.9)
    torch.testing.assert_close(ema.shadow["lin.weight"], torch.full((2, 3), 0.1))
    ema.update(model)
    torch.testing.assert_close(ema.shadow["lin.weight"], torch.full((2, 3), 0.19))
    assert ema.num_updates == 2
    assert EMA(model).decay == 0.995  # the original's decay by default


def test_warmup_ramps_the_decay():
    model = Net()
    ema = EMA(model, decay=0.995, warmup_steps=10)
    assert ema.current_decay() == pytest.approx(1 / 10)
    _set_params(model, 0.0)
    ema2 = EMA(model, decay=0.995, warmup_steps=10)
    _set_params(model, 1.0)
    ema2.update(model)
    torch.testing.assert_close(ema2.shadow["lin.bias"], torch.full((2,), 0.9))  # decay 0.1 at n=0
    ema2.num_updates = 100_000
    assert ema2.current_decay() == 0.995  # capped
    assert EMA(model, decay=0.995).current_decay() == 0.995


def test_buffers_are_not_averaged_by_copy_to():
    model = Net()
    ema = EMA(model)
    with torch.no_grad():
        model.bn.running_mean.fill_(3.0)
    _set_params(model, 7.0)
    ema.copy_to(model)
    assert torch.equal(model.bn.running_mean, torch.full((2,), 3.0))
    assert not torch.equal(model.lin.weight, torch.full((2, 3), 7.0))


def test_state_dict_round_trip_and_mismatch():
    torch.manual_seed(0)
    model = Net()
    ema = EMA(model, decay=0.99, warmup_steps=5)
    for _ in range(3):
        with torch.no_grad():
            model.lin.weight.add_(torch.randn(2, 3))
        ema.update(model)
    state = ema.state_dict()
    fresh = EMA(Net(), decay=0.5)
    fresh.load_state_dict(state)
    assert (fresh.decay, fresh.warmup_steps, fresh.num_updates) == (0.99, 5, 3)
    for k in ema.shadow:
        assert torch.equal(fresh.shadow[k], ema.shadow[k])
    other = EMA(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="does not match"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="not an EMA state"):
        fresh.load_state_dict({"shadow": {}})
    with pytest.raises(ValueError, match="does not match this model's parameters"):
        ema.update(nn.Linear(4, 4))


def test_applied_swaps_the_averaged_weights_in_and_back_out():
    model, ema = _one_update(0.5)
    weight = model.lin.weight
    with ema.applied(model) as same:
        assert same is model and model.lin.weight is weight  # the same parameters, other storage
        torch.testing.assert_close(model.lin.weight, torch.full((2, 3), 0.5))
        assert model.lin.bias.tolist() == [0.5, 0.5]
    assert torch.equal(model.lin.weight, torch.full((2, 3), 1.0))  # its own weights again
    with pytest.raises(RuntimeError, match="boom"):
        with ema.applied(model):
            raise RuntimeError("boom")
    assert torch.equal(model.lin.weight, torch.full((2, 3), 1.0))  # restored on an error too
    torch.testing.assert_close(ema.shadow["lin.weight"], torch.full((2, 3), 0.5))


def test_bad_arguments():
    with pytest.raises(ValueError, match="decay"):
        EMA(Net(), decay=1.5)
    with pytest.raises(ValueError, match="warmup_steps"):
        EMA(Net(), warmup_steps=-1)

"""The power-function EMA of Karras et al. 2024 (EDM2, "Analyzing and Improving the Training
Dynamics of Diffusion Models", Sec. 3), and its post-hoc reconstruction.

A power EMA of exponent ``gamma`` averages the weights with ``beta_t = (1 - 1/t)^(gamma+1)``
after the t-th (1-based) update, so the first update copies the weights and the average at
update t weighs update tau by ``(tau/t)^(g+1) - ((tau-1)/t)^(g+1)``: its width grows with
the run instead of being a fixed number of steps. EDM2 names a profile by its relative
standard deviation ``sigma_rel`` (the width of the weighting as a share of the run):
``sigma_rel^2 = (g+1) / ((g+2)^2 (g+3))``.

:class:`PowerEMA` tracks two profiles (sigma_rel 0.05 and 0.10, EDM2's) with the interface the
trainer uses for core.diffusion.ema.EMA. Any other sigma_rel is reconstructed after the fact
(:func:`solve_coefficients`): the target profile is fitted, by least squares, as a sum of the
stored profiles (the two current ones and the snapshots core.diffusion.ema_snapshots writes
at every checkpoint). The fit is DISCRETE: each profile is the exact vector of weights over
the updates tau = 1..t that the update rule above gives (not EDM2's continuous approximation),
so a target that is one of the stored profiles is returned exactly.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from core.diffusion.ema import swapped_in, unwrap_model
from core.diffusion.registry import EMA_PROFILES as DEFAULT_PROFILES, MAX_SIGMA_REL  # EDM2's two; the largest
_CHUNK = 1 << 15  # updates per block when the Gram matrix is summed (bounded memory for long runs)


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent gamma of a profile of relative width ``sigma_rel``: the largest real root of
    g^3 + 7 g^2 + (16 - s) g + (12 - s) = 0 with s = sigma_rel^-2 (EDM2's std_to_exp), by Newton
    from the right of that root (monotone for a cubic with a positive leading term)."""
    if not 0.0 < float(sigma_rel) <= MAX_SIGMA_REL:
        raise ValueError(f"sigma_rel must be in (0, {MAX_SIGMA_REL:g}], got {sigma_rel!r}")
    s = float(sigma_rel) ** -2
    g = math.sqrt(s) + 10.0
    for _ in range(200):
        f = ((g + 7.0) * g + 16.0 - s) * g + 12.0 - s
        df = (3.0 * g + 14.0) * g + 16.0 - s
        step = f / df
        g -= step
        if abs(step) <= 1e-14 * max(1.0, abs(g)):
            break
    return g


def gamma_to_sigma_rel(gamma: float) -> float:
    g = float(gamma)
    return math.sqrt((g + 1.0) / ((g + 2.0) ** 2 * (g + 3.0)))


def same_length(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) <= 1e-9


def _profiles(sources: Sequence[tuple[int, float]], start: int, stop: int) -> torch.Tensor:
    """The weights that each (t, gamma) average gives updates tau = start+1..stop (float64,
    one row per source; zero after its own t)."""
    tau = torch.arange(start + 1, stop + 1, dtype=torch.float64)
    rows = []
    for t, gamma in sources:
        e = float(gamma) + 1.0
        row = (tau / t).pow(e) - ((tau - 1.0) / t).pow(e)
        rows.append(torch.where(tau <= t, row, torch.zeros_like(row)))
    return torch.stack(rows)


def solve_coefficients(sources: Sequence[tuple[int, float]], target: tuple[int, float]) -> list[float]:
    """Least-squares weights x so that sum_i x_i * profile(sources[i]) ~ profile(target), each
    profile an exact vector over the updates 1..max t (Gram matrix summed in blocks: memory
    stays bounded; time grows with (number of sources)^2 x updates)."""
    if not sources:
        raise ValueError("no stored EMA profiles to reconstruct from")
    last = max([int(t) for t, _ in sources] + [int(target[0])])
    n = len(sources)
    gram = torch.zeros(n, n, dtype=torch.float64)
    rhs = torch.zeros(n, 1, dtype=torch.float64)
    for start in range(0, last, _CHUNK):
        stop = min(last, start + _CHUNK)
        p = _profiles(sources, start, stop)
        q = _profiles([target], start, stop)
        gram += p @ p.T
        rhs += p @ q.T
    x = torch.linalg.lstsq(gram, rhs, rcond=None, driver="gelsd").solution
    return [float(v) for v in x[:, 0]]


def accumulate(total: dict[str, torch.Tensor] | None,
               parts: Sequence[tuple[float, Mapping[str, torch.Tensor]]]) -> dict[str, torch.Tensor] | None:
    """``total`` + sum_i x_i * weights_i in float64 (foreach ops); ``total`` None starts a sum."""
    for x, weights in parts:
        if total is None:
            total = {k: v.detach().to(torch.float64) * float(x) for k, v in weights.items()}
        else:
            names = list(total)
            torch._foreach_add_([total[k] for k in names],
                                [weights[k].detach().to(total[k].device, torch.float64) for k in names], alpha=float(x))
    return total


def combine(parts: Sequence[tuple[float, Mapping[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """sum_i x_i * weights_i, summed in float64, as float32."""
    total = accumulate(None, parts)
    if total is None:
        raise ValueError("nothing to combine")
    return {k: v.float() for k, v in total.items()}


class PowerEMA:
    """Two power-EMA profiles of a model's parameters (float32, on their devices), with the
    interface of core.diffusion.ema.EMA. ``length``: the sigma_rel that ``applied``/``copy_to``
    use (reconstructed from the two current profiles when it is neither of them)."""

    kind = "power"

    def __init__(self, model: nn.Module, length: float = 0.10, sigma_rels: Sequence[float] = DEFAULT_PROFILES):
        self.sigma_rels = tuple(float(s) for s in sigma_rels)
        self.gammas = tuple(sigma_rel_to_gamma(s) for s in self.sigma_rels)
        sigma_rel_to_gamma(length)  # ValueError for a length out of range
        self.length = float(length)
        params = list(unwrap_model(model).named_parameters())
        self.profiles: list[dict[str, torch.Tensor]] = [
            {name: p.detach().clone().float() for name, p in params} for _ in self.sigma_rels]
        # Updates so far, counted on the device (a skipped step adds 0), so t never needs the host.
        device = params[0][1].device if params else torch.device("cpu")
        self.count = torch.zeros((), dtype=torch.int64, device=device)
        # length -> weights for a length that is not tracked; the trainer sets it to rebuild from
        # the run's snapshots too (core.diffusion.ema_snapshots.live_weights), as sample does later.
        self.rebuild: Callable[[float], dict[str, torch.Tensor]] | None = None

    @property
    def num_updates(self) -> int:
        return int(self.count)

    def _params(self, model: nn.Module) -> dict[str, torch.Tensor]:
        params = dict(unwrap_model(model).named_parameters())
        if params.keys() != self.profiles[0].keys():
            missing = sorted(self.profiles[0].keys() - params.keys())
            extra = sorted(params.keys() - self.profiles[0].keys())
            detail = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
            raise ValueError(f"EMA does not match this model's parameters: {detail}")
        return params

    @torch.no_grad()
    def update(self, model: nn.Module, active: torch.Tensor | None = None) -> None:
        """One averaging step of both profiles: one foreach kernel each. ``active`` (a 0-dim 0/1
        tensor) 0 leaves them as they are and does not count the update."""
        params = self._params(model)
        sources = [p.detach() if p.dtype == torch.float32 else p.detach().float() for p in params.values()]
        device = sources[0].device
        if self.count.device != device:  # model moved after the EMA was made
            self.count = self.count.to(device)
            self.profiles = [{k: v.to(device) for k, v in prof.items()} for prof in self.profiles]
        act = torch.ones((), device=device) if active is None else active.to(device, torch.float32)
        self.count += act.to(torch.int64)
        t = self.count.clamp(min=1).to(torch.float32)
        for gamma, prof in zip(self.gammas, self.profiles):
            # 1 - beta_t = 1 - (1 - 1/t)^(g+1), accurate for large t; 1 at t = 1 (a copy).
            weight = -torch.expm1((gamma + 1.0) * torch.log1p(-1.0 / t)) * act
            torch._foreach_lerp_(list(prof.values()), sources, [weight] * len(sources))

    def uncount(self, n: int) -> None:
        """Nothing to correct: skipped updates are never counted (``count`` lives on the device)."""

    def weights_at(self, length: float | None = None) -> dict[str, torch.Tensor]:
        """The average of relative width ``length`` (default: ``self.length``): a tracked profile
        itself (not a copy), or a reconstruction from the two current ones."""
        length = self.length if length is None else float(length)
        for sigma_rel, prof in zip(self.sigma_rels, self.profiles):
            if same_length(sigma_rel, length):
                return prof
        if self.rebuild is not None:
            return self.rebuild(length)
        t = max(1, self.num_updates)
        x = solve_coefficients([(t, g) for g in self.gammas], (t, sigma_rel_to_gamma(length)))
        return combine(list(zip(x, self.profiles)))

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        weights = self.weights_at()
        for name, p in self._params(model).items():
            p.copy_(weights[name])

    def applied(self, model: nn.Module):
        """``model`` holding the average at ``length`` inside the block, its own weights after
        (storages swapped, nothing copied when ``length`` is a tracked profile)."""
        return swapped_in(model, self._params(model), self.weights_at())

    def state_dict(self) -> dict[str, Any]:
        """Plain dict, safe for ``torch.load(weights_only=True)``. ``shadow`` holds the average
        at ``length`` for readers that know only the exponential EMA (when it is a tracked
        profile it is the same tensors, stored once)."""
        profiles = [{k: v.detach().clone() for k, v in prof.items()} for prof in self.profiles]
        shadow = next((prof for s, prof in zip(self.sigma_rels, profiles) if same_length(s, self.length)), None)
        return {
            "kind": self.kind, "sigma_rels": list(self.sigma_rels), "length": self.length,
            "num_updates": self.num_updates, "profiles": profiles,
            "shadow": shadow if shadow is not None else {k: v.detach().clone() for k, v in self.weights_at().items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError("this checkpoint's EMA is exponential (ema_kind exp), not power")
        try:
            sigma_rels = tuple(float(s) for s in state["sigma_rels"])
            profiles = list(state["profiles"])
            num_updates = int(state["num_updates"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a power EMA state: missing or bad field {exc}") from None
        if len(sigma_rels) != len(self.sigma_rels) or not all(map(same_length, sigma_rels, self.sigma_rels)):
            raise ValueError(f"power EMA state tracks sigma_rel {list(sigma_rels)}, expected {list(self.sigma_rels)}")
        ours = self.profiles[0]
        for prof in profiles:
            if prof.keys() != ours.keys():
                raise ValueError("power EMA state does not match this model's parameters")
            for name, value in prof.items():
                if tuple(value.shape) != tuple(ours[name].shape):
                    raise ValueError(f"EMA state {name!r} has shape {tuple(value.shape)}, expected {tuple(ours[name].shape)}")
        self.profiles = [{k: v.detach().to(ours[k].device, torch.float32).clone() for k, v in prof.items()}
                         for prof in profiles]
        self.count = torch.tensor(num_updates, dtype=torch.int64, device=self.count.device)
        if "length" in state and state.get("length") is not None:
            self.length = float(state["length"])

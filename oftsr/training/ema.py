"""Exponential moving average of parameters, with the paper's warm-up
decay_n = min(decay, (1 + n) / (10 + n))."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def ema_step_(averages: list[torch.Tensor], params: Iterable[torch.Tensor], decay: float) -> None:
    """averages <- decay * averages + (1 - decay) * params, in the averages' dtype (float32
    shadows of bf16 weights stay float32)."""
    params = [p.detach().to(a.dtype) for a, p in zip(averages, params, strict=True)]
    torch._foreach_lerp_(averages, params, 1.0 - decay)


class EMA:
    """Float32 shadow copies of `model.parameters()` (the same order as the authors'
    `shadow_params`). `state_dict`/`load_state_dict` let Accelerate checkpoint it; loading
    restores the averages and the update count, not the decay."""

    def __init__(self, model: nn.Module, decay: float = 0.9999) -> None:
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow_params = [p.detach().float().clone() for p in model.parameters()]

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        ema_step_(self.shadow_params, model.parameters(), self.current_decay())

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for p, s in zip(model.parameters(), self.shadow_params, strict=True):
            p.copy_(s.to(p.dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow_params": self.shadow_params}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow_params"]) != len(self.shadow_params):
            raise ValueError(f"EMA state has {len(state['shadow_params'])} tensors, the model {len(self.shadow_params)}")
        # The decay stays the one this EMA was made with: a resumed run may change --ema_decay.
        self.num_updates = int(state["num_updates"])
        device = self.shadow_params[0].device
        self.shadow_params = [s.to(device).float() for s in state["shadow_params"]]

"""Router auxiliary losses for mixture-of-experts and memory routers (seed 004, ``losses.py``).

A router scores each token against ``E`` experts (or memory chapters) with logits of shape
``[..., E]`` and dispatches it to its top ``k``. With ``T`` (unmasked) tokens:

- ``f_i``: the fraction of the ``T·k`` dispatches that go to expert ``i`` (``Σ_i f_i = 1``);
- ``P_i``: the mean router probability of expert ``i``, ``mean_t softmax(logits_t)_i``.

=================  ======================================  =========================================
loss               formula                                 purpose
=================  ======================================  =========================================
load balance       ``E · Σ_i f_i · P_i``                   uniform expert usage (Switch
                                                           Transformer); 1.0 when balanced
auxiliary          ``Σ_i (f_i − 1/E)²``                    penalise deviation from uniform dispatch;
                                                           0 when balanced
z-loss             ``mean_t logsumexp(logits_t)²``         keep router logits small (ST-MoE)
=================  ======================================  =========================================

``f`` counts discrete choices, so it carries no gradient: the load-balance loss trains the
router through ``P`` alone (as in the Switch Transformer), and the auxiliary loss as written has
no gradient at all under hard top-k dispatch. It then only monitors balance; pass
``auxiliary_on="probabilities"`` to compute it on ``P`` instead, which is differentiable.

Padding is excluded with ``mask`` (shape ``logits.shape[:-1]``, true or non-zero for real
tokens, the attention-mask convention). Statistics are per call, i.e. over this rank's
micro-batch; logits are computed in float32 (float64 stays float64).

Per router, :func:`router_losses` returns ``{"load_balance", "auxiliary", "z_loss"}``;
:func:`compute_router_auxiliary_loss` (004's name and signature) weights and combines such
dicts from several layers; :class:`RouterLossConfig` does both from the logits::

    router_loss = RouterLossConfig(load_balance_coef=0.01, z_loss_coef=0.001, top_k=2)
    out = router_loss([layer.router_logits for layer in model.layers], mask=attention_mask)
    self.backward(lm_loss + out.total)
    return {"loss": lm_loss, **{f"router_{k}": v for k, v in out.parts.items()}}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from dream_trainer.configs.errors import ConfigError, require_choice, require_int

LOSS_NAMES = ("load_balance", "auxiliary", "z_loss")
"""The keys of a router's loss dict, as in seed 004."""

AuxiliaryOn = Literal["dispatch", "probabilities"]


def _flatten(router_logits: torch.Tensor, mask: torch.Tensor | None,
             name: str = "router_logits") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits as float32 ``[T, E]`` and per-token weights ``[T]`` (1 real, 0 padding)."""
    if not isinstance(router_logits, torch.Tensor) or router_logits.ndim < 1:
        raise ValueError(f"{name} must be a tensor of shape [..., num_experts], got "
                         f"{getattr(router_logits, 'shape', type(router_logits).__name__)}")
    num_experts = router_logits.shape[-1]
    if num_experts < 1:
        raise ValueError(f"{name} has shape {tuple(router_logits.shape)}: the last dimension "
                         "(num_experts) must be >= 1")
    # float32 at least: bf16 logits lose the precision softmax and logsumexp need.
    logits = router_logits if router_logits.dtype == torch.float64 else router_logits.float()
    logits = logits.reshape(-1, num_experts)
    if mask is None:
        weights = torch.ones(logits.shape[0], device=logits.device, dtype=logits.dtype)
    else:
        if tuple(mask.shape) != tuple(router_logits.shape[:-1]):
            raise ValueError(f"mask has shape {tuple(mask.shape)} but {name} has "
                             f"{tuple(router_logits.shape)}; the mask must have the logits' shape "
                             f"without the expert dimension: {tuple(router_logits.shape[:-1])}")
        weights = (mask.reshape(-1) != 0).to(logits.device, logits.dtype)
    return logits, weights


def _dispatch_indices(logits: torch.Tensor, top_k: int, expert_indices: torch.Tensor | None,
                      shape: torch.Size) -> torch.Tensor:
    """The experts each token was sent to, as ``[T, k]``."""
    num_experts = logits.shape[-1]
    if expert_indices is None:
        require_int("top_k", top_k, minimum=1)
        if top_k > num_experts:
            raise ConfigError("top_k", top_k, f"a token cannot go to more than the "
                              f"{num_experts} experts", f"use top_k <= {num_experts}")
        return logits.topk(top_k, dim=-1).indices
    if expert_indices.dtype.is_floating_point or expert_indices.dtype == torch.bool:
        raise ValueError(f"expert_indices must hold integer expert ids, got {expert_indices.dtype}")
    if tuple(expert_indices.shape[:-1]) != tuple(shape[:-1]):
        raise ValueError(f"expert_indices has shape {tuple(expert_indices.shape)}; expected the "
                         f"logits' token dimensions {tuple(shape[:-1])} followed by k")
    indices = expert_indices.reshape(logits.shape[0], -1).to(logits.device)
    # Checked on CPU only: on a GPU the check would sync the device every step.
    if indices.device.type == "cpu" and indices.numel() and (
            int(indices.min()) < 0 or int(indices.max()) >= num_experts):
        raise ValueError(f"expert_indices must be in [0, {num_experts}), got values from "
                         f"{int(indices.min())} to {int(indices.max())}")
    return indices


def router_statistics(router_logits: torch.Tensor, *, top_k: int = 1,
                      mask: torch.Tensor | None = None,
                      expert_indices: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f, P)``, each of shape ``[E]``: the dispatch fractions (no gradient, summing to 1 over
    experts) and the mean router probabilities, over unmasked tokens.

    Args:
        router_logits: ``[..., E]`` router scores.
        top_k: experts per token, used when ``expert_indices`` is None (dispatch is then the
            top-k of the logits).
        mask: ``router_logits.shape[:-1]``; true/non-zero marks real tokens.
        expert_indices: ``[..., k]`` the experts actually chosen, when routing is not the plain
            top-k of these logits (noise, capacity limits, memory lookups).
    """
    logits, weights = _flatten(router_logits, mask)
    num_experts = logits.shape[-1]
    count = weights.sum().clamp_min(1.0)
    probs = torch.softmax(logits, dim=-1)
    mean_probs = (probs * weights[:, None]).sum(0) / count
    with torch.no_grad():
        indices = _dispatch_indices(logits, top_k, expert_indices, router_logits.shape)
        k = indices.shape[-1]
        dispatched = torch.zeros(num_experts, device=logits.device, dtype=logits.dtype)
        dispatched.scatter_add_(0, indices.reshape(-1), weights.repeat_interleave(k))
        fractions = dispatched / (count * max(k, 1))
    return fractions, mean_probs


def load_balance_loss(router_logits: torch.Tensor, *, top_k: int = 1,
                      mask: torch.Tensor | None = None,
                      expert_indices: torch.Tensor | None = None) -> torch.Tensor:
    """Switch Transformer load balancing, ``E · Σ_i f_i · P_i`` (see :func:`router_statistics`
    for the arguments). 1.0 when dispatch and probabilities are uniform; it grows as tokens
    pile onto experts the router also favours. Gradients flow through ``P``."""
    fractions, mean_probs = router_statistics(router_logits, top_k=top_k, mask=mask,
                                              expert_indices=expert_indices)
    return fractions.shape[0] * (fractions * mean_probs).sum()


def auxiliary_loss(router_logits: torch.Tensor, *, top_k: int = 1,
                   mask: torch.Tensor | None = None, expert_indices: torch.Tensor | None = None,
                   on: AuxiliaryOn = "dispatch") -> torch.Tensor:
    """Seed 004's auxiliary loss, ``Σ_i (f_i − 1/E)²``: 0 for uniform dispatch, at most
    ``1 − 1/E`` when every token goes to one expert.

    With ``on="dispatch"`` (004's formula) ``f`` is the hard dispatch fraction and the loss has
    no gradient; ``on="probabilities"`` uses the mean router probability ``P`` in its place,
    ``Σ_i (P_i − 1/E)²``, which trains the router towards uniform importance."""
    require_choice("on", on, ("dispatch", "probabilities"))
    fractions, mean_probs = router_statistics(router_logits, top_k=top_k, mask=mask,
                                              expert_indices=expert_indices)
    share = fractions if on == "dispatch" else mean_probs
    return ((share - 1.0 / share.shape[0]) ** 2).sum()


def router_z_loss(router_logits: torch.Tensor, *,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """ST-MoE router z-loss, ``mean_t logsumexp(logits_t)²`` over unmasked tokens. Zero logits
    over ``E`` experts give ``log(E)²``."""
    logits, weights = _flatten(router_logits, mask)
    squared = torch.logsumexp(logits, dim=-1) ** 2
    return (squared * weights).sum() / weights.sum().clamp_min(1.0)


def router_losses(router_logits: torch.Tensor, *, top_k: int = 1,
                  mask: torch.Tensor | None = None, expert_indices: torch.Tensor | None = None,
                  auxiliary_on: AuxiliaryOn = "dispatch") -> dict[str, torch.Tensor]:
    """All three unweighted losses of one router: ``{"load_balance", "auxiliary", "z_loss"}``
    (one softmax and one dispatch count shared between them)."""
    require_choice("auxiliary_on", auxiliary_on, ("dispatch", "probabilities"))
    fractions, mean_probs = router_statistics(router_logits, top_k=top_k, mask=mask,
                                              expert_indices=expert_indices)
    num_experts = fractions.shape[0]
    share = fractions if auxiliary_on == "dispatch" else mean_probs
    return {
        "load_balance": num_experts * (fractions * mean_probs).sum(),
        "auxiliary": ((share - 1.0 / num_experts) ** 2).sum(),
        "z_loss": router_z_loss(router_logits, mask=mask),
    }


def _check_coefficient(field: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field, value, f"expected a number, got {type(value).__name__}",
                          "pass a number >= 0, e.g. 0.01 (0 turns the term off)")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(field, value, "must be a finite number >= 0",
                          "pass a number >= 0, e.g. 0.01 (0 turns the term off)")


def compute_router_auxiliary_loss(
    router_losses: Sequence[Mapping[str, torch.Tensor | float]],
    load_balance_coef: float = 0.01,
    auxiliary_coef: float = 0.0,
    z_loss_coef: float = 0.001,
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """Weight and combine the losses of several routers (seed 004)::

        total = lb_coef · R(load_balance) + aux_coef · R(auxiliary) + z_coef · R(z_loss)

    where ``R`` is the mean over routers (``reduction="mean"``, so the coefficients mean the
    same whatever the depth) or their sum. Each entry of ``router_losses`` is a dict from one
    router, e.g. :func:`router_losses`'s; a term whose coefficient is 0 is skipped, so its key
    may be missing. Keys other than ``load_balance``, ``auxiliary`` and ``z_loss`` are ignored
    (routers may report more, for logging). Returns a scalar tensor (0 for no routers).
    """
    for name, value in (("load_balance_coef", load_balance_coef),
                        ("auxiliary_coef", auxiliary_coef), ("z_loss_coef", z_loss_coef)):
        _check_coefficient(name, value)
    require_choice("reduction", reduction, ("mean", "sum"))
    if isinstance(router_losses, Mapping):
        raise TypeError("router_losses must be a list of dicts (one per router), got a single "
                        "dict; wrap it: [losses]")
    device = next((v.device for losses in router_losses for v in losses.values()
                   if isinstance(v, torch.Tensor)), None)
    total = torch.zeros((), device=device)
    coefficients = {"load_balance": load_balance_coef, "auxiliary": auxiliary_coef,
                    "z_loss": z_loss_coef}
    for key, coef in coefficients.items():
        if coef == 0 or not router_losses:
            continue
        values = []
        for i, losses in enumerate(router_losses):
            if key not in losses:
                coef_name = "auxiliary_coef" if key == "auxiliary" else f"{key}_coef"
                raise KeyError(f"router_losses[{i}] has no {key!r} entry (keys: "
                               f"{sorted(losses)}) but {coef_name}={coef}; return {key!r} from "
                               f"every router or set {coef_name}=0")
            value = losses[key]
            values.append(value.float().reshape(()) if isinstance(value, torch.Tensor)
                          else torch.tensor(float(value), device=device))
        stacked = torch.stack([v.to(total.device) for v in values])
        total = total + coef * (stacked.mean() if reduction == "mean" else stacked.sum())
    return total


@dataclass
class RouterLossOutput:
    """What :class:`RouterLossConfig` returns."""

    total: torch.Tensor
    """The weighted sum to add to the training loss (with gradients)."""
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    """Unweighted ``load_balance``, ``auxiliary`` and ``z_loss``, reduced over routers like
    the total, detached: scalar tensors to return from ``training_step`` for logging."""


@dataclass(kw_only=True)
class RouterLossConfig:
    """Coefficients of the router losses, and the combiner (seed 004's defaults).

    Call it with one router's logits or a list of them (one per layer)::

        out = RouterLossConfig(load_balance_coef=0.01, z_loss_coef=0.001)(logits, mask=mask)
        loss = lm_loss + out.total
    """

    load_balance_coef: float = 0.01
    """Weight of the load-balance loss (0 turns it off)."""
    auxiliary_coef: float = 0.0
    """Weight of seed 004's auxiliary loss ``Σ(f_i − 1/E)²``."""
    z_loss_coef: float = 0.001
    """Weight of the router z-loss."""
    top_k: int = 1
    """Experts per token, when dispatch is the top-k of the logits."""
    auxiliary_on: AuxiliaryOn = "dispatch"
    """``dispatch``: 004's hard fractions (no gradient); ``probabilities``: mean router
    probabilities (differentiable)."""
    reduction: Literal["mean", "sum"] = "mean"
    """How losses of several routers combine: their mean (default) or sum."""

    def __post_init__(self) -> None:
        for name in ("load_balance_coef", "auxiliary_coef", "z_loss_coef"):
            _check_coefficient(f"RouterLossConfig.{name}", getattr(self, name))
        require_int("RouterLossConfig.top_k", self.top_k, minimum=1)
        require_choice("RouterLossConfig.auxiliary_on", self.auxiliary_on,
                       ("dispatch", "probabilities"))
        require_choice("RouterLossConfig.reduction", self.reduction, ("mean", "sum"))

    def combine(self, router_losses: Sequence[Mapping[str, torch.Tensor | float]]
                ) -> torch.Tensor:
        """:func:`compute_router_auxiliary_loss` with these coefficients."""
        return compute_router_auxiliary_loss(
            router_losses, load_balance_coef=self.load_balance_coef,
            auxiliary_coef=self.auxiliary_coef, z_loss_coef=self.z_loss_coef,
            reduction=self.reduction)

    def __call__(self, router_logits: torch.Tensor | Sequence[torch.Tensor], *,
                 mask: torch.Tensor | None = None,
                 expert_indices: torch.Tensor | Sequence[torch.Tensor | None] | None = None
                 ) -> RouterLossOutput:
        """The weighted total and the unweighted parts for the logits of one router or of
        several (``mask`` applies to each; ``expert_indices`` is one per router)."""
        logits = [router_logits] if isinstance(router_logits, torch.Tensor) else list(
            router_logits)
        if expert_indices is None or isinstance(expert_indices, torch.Tensor):
            indices = [expert_indices] * len(logits)
        else:
            indices = list(expert_indices)
            if len(indices) != len(logits):
                raise ValueError(f"expert_indices has {len(indices)} entries for {len(logits)} "
                                 "routers; pass one per router (or None)")
        per_router = [router_losses(x, top_k=self.top_k, mask=mask, expert_indices=i,
                                    auxiliary_on=self.auxiliary_on)
                      for x, i in zip(logits, indices, strict=True)]
        total = self.combine(per_router)
        parts = {}
        if per_router:
            for key in LOSS_NAMES:
                stacked = torch.stack([r[key].detach() for r in per_router])
                parts[key] = stacked.mean() if self.reduction == "mean" else stacked.sum()
        return RouterLossOutput(total=total, parts=parts)


__all__ = ["LOSS_NAMES", "RouterLossConfig", "RouterLossOutput", "auxiliary_loss",
           "compute_router_auxiliary_loss", "load_balance_loss", "router_losses",
           "router_statistics", "router_z_loss"]

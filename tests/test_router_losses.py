"""Router auxiliary losses (seed 004): each against its formula computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from dream_trainer.configs import ConfigError
from dream_trainer.losses import (
    RouterLossConfig,
    auxiliary_loss,
    compute_router_auxiliary_loss,
    load_balance_loss,
    router_losses,
    router_statistics,
    router_z_loss,
)


def by_hand(logits: list[list[float]], chosen: list[list[int]]) -> dict[str, float]:
    """f, P and the three losses with plain Python loops, for [T, E] logits and [T, k] choices."""
    tokens, experts, k = len(logits), len(logits[0]), len(chosen[0])
    probs = []
    for row in logits:
        exps = [math.exp(x) for x in row]
        probs.append([e / sum(exps) for e in exps])
    f = [sum(c.count(i) for c in chosen) / (tokens * k) for i in range(experts)]
    p = [sum(probs[t][i] for t in range(tokens)) / tokens for i in range(experts)]
    lse = [math.log(sum(math.exp(x) for x in row)) for row in logits]
    return {"f": f, "P": p,
            "load_balance": experts * sum(fi * pi for fi, pi in zip(f, p, strict=True)),
            "auxiliary": sum((fi - 1 / experts) ** 2 for fi in f),
            "z_loss": sum(x * x for x in lse) / tokens}


LOGITS = [[1.0, -0.5, 0.2, 0.0], [0.3, 2.0, -1.0, 0.5], [-0.2, 0.1, 0.4, 1.5],
          [2.5, 0.0, 0.1, -0.3], [0.0, 0.2, 1.1, 0.9]]


def test_top1_losses_match_the_formulas() -> None:
    logits = torch.tensor(LOGITS)
    chosen = [[max(range(4), key=row.__getitem__)] for row in LOGITS]
    want = by_hand(LOGITS, chosen)
    f, p = router_statistics(logits)
    torch.testing.assert_close(f, torch.tensor(want["f"]))
    torch.testing.assert_close(p, torch.tensor(want["P"]))
    assert load_balance_loss(logits).item() == pytest.approx(want["load_balance"], rel=1e-6)
    assert auxiliary_loss(logits).item() == pytest.approx(want["auxiliary"], rel=1e-6)
    assert router_z_loss(logits).item() == pytest.approx(want["z_loss"], rel=1e-6)
    parts = router_losses(logits)
    assert {k: v.item() for k, v in parts.items()} == pytest.approx(
        {k: want[k] for k in ("load_balance", "auxiliary", "z_loss")}, rel=1e-6)


def test_top2_counts_every_dispatch() -> None:
    logits = torch.tensor(LOGITS)
    chosen = [sorted(range(4), key=row.__getitem__, reverse=True)[:2] for row in LOGITS]
    want = by_hand(LOGITS, chosen)
    f, _ = router_statistics(logits, top_k=2)
    assert f.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(f, torch.tensor(want["f"]))
    assert load_balance_loss(logits, top_k=2).item() == pytest.approx(want["load_balance"],
                                                                      rel=1e-6)
    assert auxiliary_loss(logits, top_k=2).item() == pytest.approx(want["auxiliary"], rel=1e-6)


def test_balanced_and_collapsed_routers() -> None:
    experts = 4
    # Token t prefers expert t % 4, by the same margin: uniform dispatch and probabilities.
    balanced = 3.0 * torch.eye(experts).repeat(3, 1)
    assert load_balance_loss(balanced).item() == pytest.approx(1.0, abs=1e-6)
    assert load_balance_loss(balanced, top_k=2).item() == pytest.approx(1.0, abs=1e-6)
    assert auxiliary_loss(balanced).item() == pytest.approx(0.0, abs=1e-12)
    # Everything to expert 0 with certainty: load balance -> E, auxiliary -> 1 - 1/E.
    collapsed = torch.tensor([[50.0, 0.0, 0.0, 0.0]]).repeat(6, 1)
    assert load_balance_loss(collapsed).item() == pytest.approx(experts, rel=1e-6)
    assert auxiliary_loss(collapsed).item() == pytest.approx(1 - 1 / experts, rel=1e-6)


def test_z_loss_of_zero_logits_is_log_e_squared() -> None:
    for experts in (1, 2, 8, 64):
        zeros = torch.zeros(2, 5, experts)
        assert router_z_loss(zeros).item() == pytest.approx(math.log(experts) ** 2, abs=1e-6)
    # bf16 logits are computed in float32.
    assert router_z_loss(torch.zeros(3, 8, dtype=torch.bfloat16)).dtype == torch.float32


def test_gradients_flow() -> None:
    logits = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x: router_z_loss(x), (logits,))
    torch.autograd.gradcheck(lambda x: load_balance_loss(x, top_k=2), (logits,))
    torch.autograd.gradcheck(lambda x: auxiliary_loss(x, on="probabilities"), (logits,))
    # z-loss by hand: d/dx mean_t lse_t^2 = 2 lse_t softmax(x_t) / T.
    router_z_loss(logits).backward()
    lse = torch.logsumexp(logits.detach(), -1, keepdim=True)
    want = 2 * lse * torch.softmax(logits.detach(), -1) / len(LOGITS)
    torch.testing.assert_close(logits.grad, want)
    # 004's auxiliary loss counts discrete choices: no gradient (documented).
    assert not auxiliary_loss(logits).requires_grad
    # The combined loss trains the router through load balance and z-loss.
    logits.grad = None
    RouterLossConfig(load_balance_coef=0.5, auxiliary_coef=0.3, z_loss_coef=0.1)(
        logits).total.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_masks_exclude_padding() -> None:
    real = torch.tensor(LOGITS)
    padded = torch.cat([real, torch.tensor([[90.0, -5.0, 3.0, 7.0]]).repeat(3, 1)])
    mask = torch.tensor([True] * 5 + [False] * 3)
    for fn in (load_balance_loss, auxiliary_loss, router_z_loss):
        assert fn(padded, mask=mask).item() == pytest.approx(fn(real).item(), rel=1e-6)
        # Integer (attention-mask style) and batched [B, S] masks mean the same.
        batched = padded.reshape(2, 4, 4)
        assert fn(batched, mask=mask.long().reshape(2, 4)).item() == pytest.approx(
            fn(real).item(), rel=1e-6)
    # Padding gets no gradient.
    logits = padded.clone().requires_grad_(True)
    (load_balance_loss(logits, mask=mask) + router_z_loss(logits, mask=mask)).backward()
    assert logits.grad[5:].abs().sum() == 0 and logits.grad[:5].abs().sum() > 0
    # All padding: zero, not NaN.
    assert router_z_loss(real, mask=torch.zeros(5, dtype=torch.bool)).item() == 0.0
    with pytest.raises(ValueError, match=r"mask has shape \(4,\) .* \(5,\)"):
        router_z_loss(real, mask=torch.ones(4))


def test_explicit_expert_indices() -> None:
    logits = torch.tensor(LOGITS)
    chosen = [[3], [3], [0], [1], [3]]  # not the argmax: e.g. after capacity limits
    want = by_hand(LOGITS, chosen)
    got = load_balance_loss(logits, expert_indices=torch.tensor(chosen))
    assert got.item() == pytest.approx(want["load_balance"], rel=1e-6)
    with pytest.raises(ValueError, match=r"expert_indices must be in \[0, 4\)"):
        load_balance_loss(logits, expert_indices=torch.tensor([[4]] * 5))
    with pytest.raises(ConfigError, match="top_k=5"):
        load_balance_loss(logits, top_k=5)


def test_compute_router_auxiliary_loss_as_in_seed_004() -> None:
    losses = [{"load_balance": 0.01, "z_loss": 0.001}, {"load_balance": 0.02, "z_loss": 0.002}]
    total = compute_router_auxiliary_loss(losses, load_balance_coef=0.01, auxiliary_coef=0.0,
                                          z_loss_coef=0.001)
    assert total.item() == pytest.approx(0.01 * 0.015 + 0.001 * 0.0015)
    summed = compute_router_auxiliary_loss(losses, reduction="sum")
    assert summed.item() == pytest.approx(0.01 * 0.03 + 0.001 * 0.003)
    assert compute_router_auxiliary_loss([]).item() == 0.0
    with pytest.raises(KeyError, match=r"router_losses\[0\] has no 'auxiliary' entry .*"
                                       r"auxiliary_coef=0.1.* or set auxiliary_coef=0"):
        compute_router_auxiliary_loss(losses, auxiliary_coef=0.1)
    with pytest.raises(ConfigError, match=r"z_loss_coef=-1.*Fix: pass a number >= 0"):
        compute_router_auxiliary_loss(losses, z_loss_coef=-1)
    with pytest.raises(TypeError, match="one per router"):
        compute_router_auxiliary_loss(losses[0])  # type: ignore[arg-type]


def test_router_loss_config_combines_layers() -> None:
    torch.manual_seed(0)
    layers = [torch.randn(2, 6, 4, requires_grad=True) for _ in range(3)]
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    config = RouterLossConfig(load_balance_coef=0.01, auxiliary_coef=0.5, z_loss_coef=0.001,
                              top_k=2)
    out = config(layers, mask=mask)
    per_layer = [router_losses(x, top_k=2, mask=mask) for x in layers]
    mean = {k: sum(p[k] for p in per_layer) / 3 for k in per_layer[0]}
    want = 0.01 * mean["load_balance"] + 0.5 * mean["auxiliary"] + 0.001 * mean["z_loss"]
    assert out.total.item() == pytest.approx(want.item(), rel=1e-6)
    assert set(out.parts) == {"load_balance", "auxiliary", "z_loss"}
    for key, value in out.parts.items():
        assert not value.requires_grad and value.item() == pytest.approx(mean[key].item())
    out.total.backward()
    assert all(x.grad is not None for x in layers)
    # One router: a tensor instead of a list.
    assert config(layers[0], mask=mask).total.item() == pytest.approx(
        config.combine([per_layer[0]]).item(), rel=1e-6)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"RouterLossConfig.load_balance_coef=nan"):
        RouterLossConfig(load_balance_coef=float("nan"))
    with pytest.raises(ConfigError, match=r"RouterLossConfig.top_k=0"):
        RouterLossConfig(top_k=0)
    with pytest.raises(ConfigError, match=r"RouterLossConfig.auxiliary_on='soft'"):
        RouterLossConfig(auxiliary_on="soft")  # type: ignore[arg-type]

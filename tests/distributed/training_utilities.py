"""Training utilities under 2-rank FSDP2, run by tests/test_training_utilities.py:

    python -m torch.distributed.run --standalone --nproc-per-node 2 \
        tests/distributed/training_utilities.py OUT_DIR

Rank 0 writes ``OUT_DIR/result.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dream_trainer.callbacks import CheckpointCallback
from dream_trainer.callbacks.early_stopping import EarlyStoppingCallback
from dream_trainer.callbacks.ema import EMACallback
from dream_trainer.configs import CheckpointParameters, DeviceParameters
from toy import ToyTrainer, toy_config

SCRIPT = (5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 2.0, 1.0, 0.5, 0.1)


class RankSkewed(ToyTrainer):
    """Rank 0's local validation loss rises every epoch, rank 1's falls (each alone would stop at
    another epoch, or never); their mean, which callbacks see, is SCRIPT."""

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        skew = 10.0 * self.current_epoch * (1 if self.world.rank == 0 else -1)
        return {"val_loss": torch.tensor(SCRIPT[self.current_epoch] + skew)}


def early_stopping() -> dict[str, Any]:
    stopper = EarlyStoppingCallback(patience=3)
    trainer = RankSkewed(toy_config(DeviceParameters.FSDP(), steps=None, n_epochs=10,
                                    train_steps_per_epoch=1, val_steps_per_epoch=1,
                                    callbacks=[stopper]))
    trainer.fit()
    mine = {"current_epoch": trainer.current_epoch, "global_step": trainer.global_step,
            "wait": stopper.wait}
    ranks: list[dict[str, Any]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(ranks, mine)
    return {"ranks": ranks}


def full(shadow: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: (t.full_tensor() if isinstance(t, DTensor) else t).detach().cpu().clone()
            for n, t in shadow.items()}


def ema(out: Path) -> dict[str, Any]:
    callback = EMACallback(decay=0.5)
    trainer = ToyTrainer(toy_config(DeviceParameters.FSDP(), steps=4, callbacks=[callback]))
    trainer.fit()
    shadow = callback.shadow["model"]
    result: dict[str, Any] = {
        "shadow_is_dtensor": all(isinstance(t, DTensor) for t in shadow.values()),
        "ema": full(shadow)}
    # Swap round trip on sharded parameters: inside, the (all-gathered) weights are the average;
    # afterwards every local shard is bitwise what it was.
    before = [p.to_local().clone() for p in trainer.model.parameters()]
    with callback.average_weights():
        inside = all(torch.equal(p.full_tensor(), shadow[n].full_tensor())
                     for n, p in trainer.model.named_parameters())
        trainer.eval()
        trainer.model(torch.zeros(2, 4, dtype=torch.long))  # FSDP all-gathers the average
    after = [p.to_local() for p in trainer.model.parameters()]
    result["swap_exact"] = inside and all(torch.equal(a, b) for a, b in zip(before, after,
                                                                           strict=True))
    # DCP saves the DTensor average and a resumed run continues it.
    root = str(out / "ckpt")
    every = lambda: CheckpointCallback(CheckpointParameters(root_dir=root,
                                                            checkpoint_every_n_steps=2))
    ToyTrainer(toy_config(DeviceParameters.FSDP(), steps=2,
                          callbacks=[EMACallback(decay=0.5), every()])).fit()
    resumed = EMACallback(decay=0.5)
    ToyTrainer(toy_config(DeviceParameters.FSDP(), steps=4, callbacks=[resumed, every()])).fit()
    result["resumed_ema"] = full(resumed.shadow["model"])
    return result


def lr_finder() -> dict[str, Any]:
    """The range test on sharded parameters: every rank sees the same (all-reduced) curve and
    suggestion, and each rank's shards and AdamW moments come back bitwise."""
    from dream_trainer.callbacks.ema import reshard
    from dream_trainer.callbacks.lr_finder import find_learning_rate

    class AdamToy(ToyTrainer):
        def configure_optimizers(self) -> None:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)

    trainer = AdamToy(toy_config(DeviceParameters.FSDP(), steps=2, val_every_n_steps=2,
                                 val_steps_per_epoch=1))
    trainer.fit()  # ends with a validation: the FSDP root is left unsharded...
    reshard(trainer.model)  # ...so register the sharded parameters to compare them
    shards = [p.to_local().clone() for p in trainer.model.parameters()]
    moments = [s["exp_avg"].to_local().clone() for s in trainer.optimizer.state.values()]
    found = find_learning_rate(trainer, min_lr=1e-5, max_lr=1.0, num_steps=12)
    restored = (all(torch.equal(a, p.to_local()) for a, p in zip(
        shards, trainer.model.parameters(), strict=True)) and all(torch.equal(
            a, s["exp_avg"].to_local()) for a, s in zip(moments, trainer.optimizer.state.values(),
                                                        strict=True)))
    mine = {"losses": found.losses, "suggestion": found.suggestion, "restored": restored}
    ranks: list[dict[str, Any]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(ranks, mine)
    return {"lr_finder": ranks}


def main() -> None:
    out = Path(sys.argv[1])
    result = {**early_stopping(), **ema(out), **lr_finder()}
    if dist.get_rank() == 0:
        torch.save(result, out / "result.pt")
    dist.barrier()


if __name__ == "__main__":
    main()

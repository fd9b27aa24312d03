"""Multi-process scenarios for EvalMetricMixin and the loggers, run under torchrun by
``tests/test_metrics.py`` (one 2-rank launch for all of them).

    python -m torch.distributed.run --standalone --nproc-per-node 2 \
        tests/distributed/metric_scenarios.py OUT_DIR SCENARIO [SCENARIO ...]

Rank 0 saves each scenario's result to ``OUT_DIR/<scenario>.pt``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dream_trainer.callbacks import LoggerCallback
from dream_trainer.configs import DeviceParameters
from metric_toy import MetricTrainer, full_parameters, metric_config

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")


def all_ranks(value: Any) -> list[Any]:
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def classifier(device: DeviceParameters, with_logger: bool = False) -> Callable[[], dict]:
    def scenario() -> dict[str, Any]:
        name = f"{device.dp_shard}x{device.tensor_parallel}"
        log_dir = OUT / f"logs-{name}-rank{os.environ['RANK']}"  # before the group exists
        callbacks = [LoggerCallback(log_every_n_train_batches=1)] if with_logger else []
        config = metric_config(device, callbacks=callbacks, log_dir=str(log_dir))
        trainer = MetricTrainer(config)
        trainer.fit()
        return {"results": all_ranks(config.callbacks["ValidationRecorder"].results),
                "params": full_parameters(trainer), "log_dirs": all_ranks(str(log_dir)),
                "global_step": trainer.global_step}
    return scenario


def pipeline() -> dict[str, Any]:
    """pp=2: only the last stage sees the outputs (and updates ``last_stage_tokens``); every
    stage must report the last stage's values."""
    import torchmetrics
    from toy import ToyTrainer, toy_config

    class PipelineMetrics(ToyTrainer):
        def configure_metrics(self) -> None:
            self.mean_loss = torchmetrics.MeanMetric()
            self.last_stage_tokens = torchmetrics.SumMetric()

        def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
            result = super().validation_step(batch, batch_idx)
            self.mean_loss.update(result["val_loss"])
            if self.pipelines["model"].has_last_stage:
                self.last_stage_tokens.update(float(batch["input_ids"].numel()))
            return result

    config = toy_config(DeviceParameters(dp_shard=1, pipeline_parallel=2,
                                         pipeline_schedule="GPipe"),
                        n_layers=2, steps=2, val_every_n_steps=2)
    config.log_dir = str(OUT / "logs-pp")  # the mixin logs the metrics (no LoggerCallback)
    trainer = PipelineMetrics(config)
    trainer.fit()
    return {"results": all_ranks(trainer.last_validation_result)}


SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {
    "fsdp": classifier(DeviceParameters.FSDP(), with_logger=True),
    "tp": classifier(DeviceParameters(dp_shard=1, tensor_parallel=2)),
    "pp": pipeline,
}


def main(names: list[str]) -> None:
    for name in names:
        result = SCENARIOS[name]()
        if dist.get_rank() == 0:
            torch.save(result, OUT / f"{name}.pt")
        dist.barrier()


if __name__ == "__main__":
    main(sys.argv[2:])

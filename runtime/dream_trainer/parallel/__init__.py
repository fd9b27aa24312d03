"""One function per parallelism technique. Each takes a module, a mesh and plain arguments."""

from dream_trainer.parallel.data_parallel import apply_ddp, apply_fsdp, set_gradient_sync
from dream_trainer.parallel.grad_norm import clip_grad_norm_

__all__ = ["apply_ddp", "apply_fsdp", "clip_grad_norm_", "set_gradient_sync"]

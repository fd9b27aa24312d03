"""Reference models used by the examples, tests and benchmarks."""

from dream_trainer.models.llama import Llama, LlamaArgs

__all__ = ["Llama", "LlamaArgs"]

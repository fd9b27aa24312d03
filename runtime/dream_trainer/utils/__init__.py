"""Small utilities: rank-zero printing and launching."""

from dream_trainer.utils.launch import distributed_launch
from dream_trainer.utils.param_groups import param_groups
from dream_trainer.utils.rank_zero import rank_zero_print

__all__ = ["distributed_launch", "param_groups", "rank_zero_print"]

from dream_trainer.trainer.base import BaseTrainer, BaseTrainerConfig
from dream_trainer.trainer.dream import DreamTrainer, DreamTrainerConfig

__all__ = ["BaseTrainer", "BaseTrainerConfig", "DreamTrainer", "DreamTrainerConfig"]

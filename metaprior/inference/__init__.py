"""Objectives, regularizers, schedules and the SVI trainer."""
from .elbo import ELBO, ELBOResult, Latent, NonFiniteLoss, TermContext
from .importance import ImportanceDraws, importance_draws, iwae_log_likelihood, log_importance_weights
from .schedules import Constant, Cyclic, LinearWarmup, Schedule, parse_schedule
from .trainer import AuxiliaryUpdate, CheckpointError, ModelGuide, TrainConfig, Trainer, TrainingError

__all__ = [
    "ELBO", "ELBOResult", "Latent", "NonFiniteLoss", "TermContext",
    "ImportanceDraws", "importance_draws", "iwae_log_likelihood", "log_importance_weights",
    "Constant", "Cyclic", "LinearWarmup", "Schedule", "parse_schedule",
    "AuxiliaryUpdate", "CheckpointError", "ModelGuide", "TrainConfig", "Trainer", "TrainingError",
]

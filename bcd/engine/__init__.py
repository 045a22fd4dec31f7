"""Engine: argument parser, launch, setup, the trainer with hooks, and checkpoints."""
from .checkpoint import Checkpointer, atomic_torch_save, deploy_model
from .defaults import (
    DefaultTrainer,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    default_writers,
)
from .hooks import (
    BestCheckpointer,
    CallbackHook,
    EvalHook,
    IterationTimer,
    LRScheduler,
    PeriodicCheckpointer,
    PeriodicWriter,
)
from .launch import launch
from .train_loop import AMPTrainer, HookBase, SimpleTrainer, TrainerBase, unwrap_model

__all__ = [
    "AMPTrainer",
    "BestCheckpointer",
    "CallbackHook",
    "Checkpointer",
    "DefaultTrainer",
    "EvalHook",
    "HookBase",
    "IterationTimer",
    "LRScheduler",
    "PeriodicCheckpointer",
    "PeriodicWriter",
    "SimpleTrainer",
    "TrainerBase",
    "atomic_torch_save",
    "create_ddp_model",
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "deploy_model",
    "launch",
    "unwrap_model",
]

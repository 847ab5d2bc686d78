"""Training engine: Trainer, launch (DDP / torchrun), command-line defaults."""
from .defaults import default_argument_parser, default_setup, flush_denormal, setup_cfg
from .launch import launch
from .trainer import NonFiniteLossError, Trainer, flatten_results, print_results_table

__all__ = ["Trainer", "NonFiniteLossError", "launch", "default_argument_parser", "default_setup", "setup_cfg",
           "flush_denormal", "flatten_results", "print_results_table"]

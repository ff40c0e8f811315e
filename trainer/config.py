"""Typed hyperparameters of the built-in MLP trainer.

Every field is a sweepable key of a sweep file's ``parameters:`` block.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Activation = Literal["relu", "leaky_relu", "elu", "selu", "gelu", "tanh", "sigmoid"]
Optimizer = Literal["sgd", "momentum", "nesterov", "adam", "adamw"]


class MLPConfig(BaseModel):
    """Hyperparameters of one training run of the built-in MLP.

    Example:
        >>> from trainer.config import MLPConfig
        >>> MLPConfig(hidden_layers=2, hidden_size=64, optimizer="momentum", lr=0.05).widths()
        (64, 64)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden_layers: int = Field(2, ge=0, le=64)  # depth: number of hidden layers
    hidden_size: int = Field(128, ge=1, le=65536)  # width of every hidden layer
    hidden_sizes: tuple[int, ...] | None = None  # explicit widths; overrides hidden_layers/hidden_size
    activation: Activation = "relu"  # hidden-layer non-linearity
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # inverted dropout probability after each hidden layer
    l2: float = Field(0.0, ge=0.0)  # L2 loss penalty: loss += l2 * sum(w**2) over weights (biases excluded)
    optimizer: Optimizer = "adam"  # update rule
    lr: float = Field(1e-3, gt=0.0, le=10.0)  # learning rate (eta)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # alpha for momentum / nesterov
    weight_decay: float = Field(0.0, ge=0.0)  # decoupled weight decay (adamw); ignored by other optimizers
    batch_size: int = Field(64, ge=1)  # mini-batch size; larger than the train split means full batch
    epochs: int = Field(20, ge=1, le=100000)  # passes over the training split
    seed: int = Field(0, ge=0)  # weight init, data order and dropout masks

    @model_validator(mode="after")
    def _check_widths(self) -> MLPConfig:
        if self.hidden_sizes is not None and any(w < 1 for w in self.hidden_sizes):
            raise ValueError(f"hidden_sizes={list(self.hidden_sizes)!r}: every width must be >= 1")
        return self

    def widths(self) -> tuple[int, ...]:
        """Hidden-layer widths, from ``hidden_sizes`` or ``hidden_layers`` x ``hidden_size``."""
        if self.hidden_sizes is not None:
            return tuple(self.hidden_sizes)
        return (self.hidden_size,) * self.hidden_layers

"""Feedforward MLP on flattened 8x8 digit images."""

import torch
from torch import nn

from edgedl.data import Digits
from edgedl.recipe import Recipe, TensorSpec, TrainConfig


class MLP(nn.Module):
    def __init__(self, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)


recipe = Recipe(
    name="mlp",
    build=MLP,
    inputs=[TensorSpec("pixels", ("batch", 64))],
    outputs=[TensorSpec("logits", ("batch", 10))],
    dim_examples={"batch": (2, 5)},
    data=Digits(shape=(64,)),
    train=TrainConfig(epochs=40, batch_size=32, lr=2e-3, weight_decay=1e-4),
    labels=[str(d) for d in range(10)],
    preprocessing=Digits.PREPROCESSING,
)

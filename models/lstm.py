"""LSTM classifier reading each digit image row by row as an 8-step sequence of 8 pixels."""

import torch
from torch import nn

from edgedl.data import Digits
from edgedl.recipe import Recipe, TensorSpec, TrainConfig


class LSTMClassifier(nn.Module):
    def __init__(self, hidden: int = 64):
        super().__init__()
        self.lstm = nn.LSTM(input_size=8, hidden_size=hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        _, (h_n, _) = self.lstm(rows)
        return self.head(h_n[-1])


recipe = Recipe(
    name="lstm",
    build=LSTMClassifier,
    inputs=[TensorSpec("rows", ("batch", "seq", 8))],
    outputs=[TensorSpec("logits", ("batch", 10))],
    dim_examples={"batch": (2, 5), "seq": (8, 5)},
    data=Digits(shape=(8, 8)),
    train=TrainConfig(epochs=40, batch_size=32, lr=5e-3),
    labels=[str(d) for d in range(10)],
    preprocessing={**Digits.PREPROCESSING, "layout": "rows as sequence steps"},
)

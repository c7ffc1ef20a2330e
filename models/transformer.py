"""Transformer encoder with multi-head self-attention: image rows as tokens, learned positional embedding."""

import torch
from torch import nn

from edgedl.data import Digits
from edgedl.recipe import Recipe, TensorSpec, Tolerance, TrainConfig

MAX_TOKENS = 8


class TransformerClassifier(nn.Module):
    def __init__(self, d_model: int = 64, heads: int = 4, layers: int = 2):
        super().__init__()
        self.embed = nn.Linear(8, d_model)
        self.position = nn.Parameter(torch.zeros(1, MAX_TOKENS, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=2 * d_model, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 10)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position[:, : tokens.shape[1]]
        return self.head(self.encoder(x).mean(dim=1))


recipe = Recipe(
    name="transformer",
    build=TransformerClassifier,
    inputs=[TensorSpec("tokens", ("batch", "seq", 8))],
    outputs=[TensorSpec("logits", ("batch", 10))],
    dim_examples={"batch": (2, 5), "seq": (8, 5)},
    data=Digits(shape=(8, 8)),
    train=TrainConfig(epochs=40, batch_size=32, lr=1e-3, weight_decay=1e-4),
    tolerance=Tolerance(atol=1e-4, rtol=1e-3),
    labels=[str(d) for d in range(10)],
    preprocessing={**Digits.PREPROCESSING, "layout": "rows as tokens"},
)

"""CNN: conv -> ReLU -> pool, twice, then fully connected, on 1x8x8 digit images."""

import torch
from torch import nn

from edgedl.data import Digits
from edgedl.recipe import Recipe, TensorSpec, TrainConfig


class CNN(nn.Module):
    def __init__(self, channels: tuple[int, int] = (32, 64), hidden: int = 128, dropout: float = 0.3):
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # c1 x 4 x 4
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # c2 x 2 x 2
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(c2 * 2 * 2, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image))


recipe = Recipe(
    name="cnn",
    build=CNN,
    inputs=[TensorSpec("image", ("batch", 1, 8, 8))],
    outputs=[TensorSpec("logits", ("batch", 10))],
    dim_examples={"batch": (2, 5)},
    data=Digits(shape=(1, 8, 8)),
    train=TrainConfig(epochs=60, batch_size=32, lr=2e-3, weight_decay=1e-3),
    labels=[str(d) for d in range(10)],
    preprocessing=Digits.PREPROCESSING,
)

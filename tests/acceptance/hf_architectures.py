"""transformers architectures built from tiny configs (random weights, no download), wrapped as plain modules
for ``edgedl export tests/acceptance/hf_architectures.py:CLASS``: each ``forward`` takes tensors and returns
tensors, as a user's own wrapper around a transformers model would.

Random weights make weak references (shared REAL_MODELS.md): with BatchNorm's initial statistics MobileNetV2's
logits are ~1e-25 and EfficientNet's exactly 0, and small classifier heads give logits of ~0.01, so that
"max abs diff 0" would prove nothing. Each wrapper therefore recalibrates its BatchNorm statistics on real photos
(scikit-learn's, cut into crops) and rescales its head so that its outputs have unit scale on them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

SEED = 0


def photo_crops(size: int, count: int = 16) -> torch.Tensor:
    """``count`` crops of scikit-learn's two photos, resized to ``size`` x ``size``: [count, 3, size, size] in
    [0, 1] (the preprocessing of an image classifier's processor, without its mean/std)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(SEED)
    photos = load_sample_images().images
    crops = []
    for k in range(count):
        image = photos[k % len(photos)]
        h, w = image.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(image[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
        crops.append(np.asarray(crop, np.float32).transpose(2, 0, 1) / 255.0)
    return torch.from_numpy(np.stack(crops))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, run, batch: torch.Tensor) -> None:
    """BatchNorm running statistics measured on ``batch`` (a cumulative average over one pass) instead of their
    initial mean 0 / variance 1, which random weights do not match."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    run(batch)
    model.eval()


@torch.no_grad()
def rescale(layer: nn.Linear, outputs: torch.Tensor) -> None:
    """Scale ``layer`` (the last one before ``outputs``) so that ``outputs`` have unit standard deviation."""
    scale = float(outputs.std())
    if scale > 0:
        layer.weight.div_(scale)
        if layer.bias is not None:
            layer.bias.div_(scale)


def _head(layer: nn.Linear) -> None:
    """A freshly drawn head (He-style), not the zero or 0.02-std initialization of the checkpoint-less model."""
    with torch.no_grad():
        nn.init.normal_(layer.weight, std=1.0 / math.sqrt(layer.in_features))
        nn.init.zeros_(layer.bias)


class _ImageClassifier(nn.Module):
    """pixel_values [N, 3, S, S] -> logits [N, classes]."""

    image_size = 64
    classes = 10

    def __init__(self, calibrate: bool = True):
        """``calibrate=False``: the checkpoint-less model as transformers initialises it (weak outputs)."""
        super().__init__()
        torch.manual_seed(SEED)
        self.model = self.build().eval()
        if not calibrate:
            return
        head = self.model.classifier
        head = head if isinstance(head, nn.Linear) else next(m for m in head.modules() if isinstance(m, nn.Linear))
        _head(head)
        crops = photo_crops(self.image_size)
        recalibrate_batchnorm(self.model, self.model, crops)
        with torch.no_grad():
            rescale(head, self.forward(crops))

    def build(self) -> nn.Module:
        raise NotImplementedError

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


class ResNet(_ImageClassifier):
    def build(self):
        from transformers import ResNetConfig, ResNetForImageClassification

        return ResNetForImageClassification(ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                                                         layer_type="basic", num_labels=self.classes))


class MobileNetV2(_ImageClassifier):
    def build(self):
        from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

        return MobileNetV2ForImageClassification(MobileNetV2Config(depth_multiplier=0.35, image_size=self.image_size,
                                                                   num_labels=self.classes))


class ConvNeXt(_ImageClassifier):
    def build(self):
        from transformers import ConvNextConfig, ConvNextForImageClassification

        return ConvNextForImageClassification(ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1],
                                                             num_labels=self.classes))


class EfficientNet(_ImageClassifier):
    def build(self):
        from transformers import EfficientNetConfig, EfficientNetForImageClassification

        # hidden_dim is the width of the last convolution: round_filters(1280) at this width coefficient
        return EfficientNetForImageClassification(EfficientNetConfig(
            image_size=self.image_size, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320,
            num_labels=self.classes))


class ViT(_ImageClassifier):
    image_size = 32  # its position embeddings fix the image size

    def build(self):
        from transformers import ViTConfig, ViTForImageClassification

        return ViTForImageClassification(ViTConfig(image_size=self.image_size, patch_size=8, hidden_size=32,
                                                   num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                                   num_labels=self.classes))


class YOLOS(nn.Module):
    """A detector: pixel_values [N, 3, 64, 64] -> logits [N, detection tokens, classes + 1] and pred_boxes
    [N, detection tokens, 4] (centre x, centre y, width, height in [0, 1])."""

    image_size = 64

    def __init__(self):
        super().__init__()
        from transformers import YolosConfig, YolosForObjectDetection

        torch.manual_seed(SEED)
        self.model = YolosForObjectDetection(YolosConfig(
            image_size=[self.image_size, self.image_size], patch_size=16, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=64, num_detection_tokens=5, num_labels=3)).eval()
        classes, boxes = self.model.class_labels_classifier.layers[-1], self.model.bbox_predictor.layers[-1]
        _head(classes)
        _head(boxes)
        crops = photo_crops(self.image_size)
        with torch.no_grad():
            logits, _ = self.forward(crops)
            rescale(classes, logits)
            out = self.model(pixel_values=crops)
            rescale(boxes, torch.logit(out.pred_boxes))  # boxes spread over (0, 1), not all at 0.5

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(pixel_values=pixel_values)
        return out.logits, out.pred_boxes


class _TextClassifier(nn.Module):
    """input_ids, attention_mask [N, T] (int64) -> logits [N, 2]."""

    vocab = 1000

    def __init__(self):
        super().__init__()
        torch.manual_seed(SEED)
        self.model = self.build().eval()
        head = self.model.classifier
        _head(head)
        ids = torch.randint(0, self.vocab, (16, 16), generator=torch.Generator().manual_seed(SEED))
        with torch.no_grad():
            rescale(head, self.forward(ids, torch.ones_like(ids)))

    def build(self) -> nn.Module:
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class BERT(_TextClassifier):
    def build(self):
        from transformers import BertConfig, BertForSequenceClassification

        return BertForSequenceClassification(BertConfig(vocab_size=self.vocab, hidden_size=32, num_hidden_layers=2,
                                                        num_attention_heads=2, intermediate_size=64,
                                                        max_position_embeddings=64, num_labels=2))


class DistilBERT(_TextClassifier):
    def build(self):
        from transformers import DistilBertConfig, DistilBertForSequenceClassification

        return DistilBertForSequenceClassification(DistilBertConfig(vocab_size=self.vocab, dim=32, n_layers=2,
                                                                    n_heads=2, hidden_dim=64,
                                                                    max_position_embeddings=64, num_labels=2))


class WhisperEncoder(nn.Module):
    """input_features [N, 16 mel bins, 32 frames] -> last_hidden_state [N, 16, 32] (layer-normed: unit scale).
    Whisper's encoder fixes the frame count (2 x max_source_positions)."""

    def __init__(self):
        super().__init__()
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder as Encoder

        torch.manual_seed(SEED)
        # token ids inside the tiny vocabulary: the defaults (50256...) only draw warnings here
        self.encoder = Encoder(WhisperConfig(num_mel_bins=16, d_model=32, encoder_layers=2, encoder_attention_heads=2,
                                             encoder_ffn_dim=64, max_source_positions=16, vocab_size=100,
                                             pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                             decoder_start_token_id=1)).eval()

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_features=input_features).last_hidden_state

"""silero-vad (16 kHz), the voice-activity detector people deploy, rebuilt as a PyTorch module.

The architecture is the one the silero-vad package describes in its ``tinygrad_model.py`` (a learnt STFT as a
strided Conv1d, four Conv1d+ReLU, one LSTM cell, a 1x1 Conv1d + sigmoid). Weights: either file of the package's
``silero_vad/data`` folder, passed as the checkpoint:

    edgedl export silero_vad --checkpoint silero_vad/data/silero_vad.jit -o silero_vad.onnx
    edgedl export silero_vad --checkpoint silero_vad/data/silero_vad_16k.safetensors -o silero_vad.onnx

``silero_vad.jit`` (TorchScript; only its 16 kHz weights are read) holds the weights of the package's ONNX models:
exported from it, this module matches ``silero_vad.onnx`` chunk by chunk. ``silero_vad_16k.safetensors`` uses
this module's parameter names but holds other weights (of its 15 tensors only the STFT basis equals the ONNX
model's), so its probabilities differ from ``silero_vad.onnx`` although its speech decisions mostly agree.

Inputs follow silero's own ONNX model: ``input`` is one window of 576 samples at 16 kHz (the 64 last samples of
the previous window as context, then 512 new ones: 32 ms), ``state`` the LSTM's (h, c) with the batch on axis 1.
Outputs: ``output`` [batch, 1], the speech probability, and ``stateN`` to feed back with the next window.
Unlike silero's ONNX this model has no ``sr`` input: the 16 kHz weights only do 16 kHz, and a request that sends
``sr`` is refused (an unknown input) instead of having 8 kHz audio scored by 16 kHz weights.
"""

import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from edgedl.errors import EdgeDLError
from edgedl.recipe import Recipe, TensorSpec, Tolerance

SAMPLE_RATE = 16000
CHUNK = 512  # new samples per call
CONTEXT = 64  # samples of the previous window each call sees again
WINDOW = CONTEXT + CHUNK
HIDDEN = 128


class SileroVAD16k(nn.Module):
    def __init__(self):
        super().__init__()
        self.n_fft, self.stride, self.pad = 256, 128, 64
        self.cutoff = self.n_fft // 2 + 1
        # the STFT as a convolution: 129 real then 129 imaginary basis filters
        self.stft_conv = nn.Conv1d(1, 2 * self.cutoff, kernel_size=self.n_fft, stride=self.stride, bias=False)
        self.conv1 = nn.Conv1d(self.cutoff, 128, kernel_size=3, stride=1, padding=1)
        self.conv2 = nn.Conv1d(128, 64, kernel_size=3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, kernel_size=3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, HIDDEN, kernel_size=3, stride=1, padding=1)
        self.lstm_cell = nn.LSTMCell(HIDDEN, HIDDEN)
        self.final_conv = nn.Conv1d(HIDDEN, 1, kernel_size=1)

    def forward(self, input: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.pad(input.unsqueeze(1), (0, self.pad), mode="reflect")  # [B, 1, 640]
        x = self.stft_conv(x)  # [B, 258, 4]
        x = torch.sqrt(x[:, : self.cutoff] ** 2 + x[:, self.cutoff:] ** 2)  # magnitude spectrum
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x)).squeeze(-1)  # one frame left: [B, 128]
        h, c = self.lstm_cell(x, (state[0], state[1]))
        prob = torch.sigmoid(self.final_conv(F.relu(h).unsqueeze(-1))).squeeze(1).mean(dim=1, keepdim=True)
        return prob, torch.stack([h, c])


# silero_vad.jit's 16 kHz model (`_model`) -> this module
_JIT_NAMES = {
    "stft.forward_basis_buffer": "stft_conv.weight",
    **{f"encoder.{i}.reparam_conv.{p}": f"conv{i + 1}.{p}" for i in range(4) for p in ("weight", "bias")},
    **{f"decoder.rnn.{p}": f"lstm_cell.{p}" for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")},
    "decoder.decoder.2.weight": "final_conv.weight",
    "decoder.decoder.2.bias": "final_conv.bias",
}


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """silero's published weights: ``silero_vad_16k.safetensors`` as it is, or ``silero_vad.jit`` renamed."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix not in (".jit", ".pt"):
        raise EdgeDLError(f"{path}: silero-vad weights are silero_vad.jit or silero_vad_16k.safetensors, "
                          f"not a '{path.suffix}' file")
    with warnings.catch_warnings():  # torch deprecates TorchScript; silero still ships it
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(path), map_location="cpu")
    inner = getattr(scripted, "_model", None)
    state = inner.state_dict() if inner is not None else {}
    missing = sorted(set(_JIT_NAMES) - set(state))
    if missing:
        raise EdgeDLError(f"{path} is not silero-vad's TorchScript model (its 16 kHz part lacks {missing[0]}); "
                          "pass the package's silero_vad.jit")
    return {ours: state[theirs] for theirs, ours in _JIT_NAMES.items()}


recipe = Recipe(
    name="silero_vad",
    build=SileroVAD16k,
    inputs=[TensorSpec("input", ("batch", WINDOW), value_range=(-1.0, 1.0)),
            TensorSpec("state", (2, "batch", HIDDEN), value_range=(-1.0, 1.0), batch_axis=1)],
    outputs=[TensorSpec("output", ("batch", 1)), TensorSpec("stateN", (2, "batch", HIDDEN), batch_axis=1)],
    dim_examples={"batch": (2, 5)},
    tolerance=Tolerance(atol=1e-5, rtol=1e-4),
    preprocessing={"sample_rate": SAMPLE_RATE, "window": f"{CONTEXT} context + {CHUNK} new samples, mono float32 "
                   "in [-1, 1]", "state": "zeros [2, batch, 128] at the start of a stream, then the last stateN"},
    task="voice-activity",
    load_checkpoint=load_checkpoint,
)

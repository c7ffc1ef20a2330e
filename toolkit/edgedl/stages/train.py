"""Train a recipe's model on its data on CPU; write weights (safetensors), metrics and the resolved config."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from edgedl import __version__
from edgedl._lazy import require
from edgedl.console import progress
from edgedl.errors import EdgeDLError
from edgedl.recipe import Recipe, Split
from edgedl.stages.files import writable_output
from edgedl.stages.torch_source import METRICS_FILE, WEIGHTS_FILE


@dataclass
class TrainResult:
    out_dir: Path
    weights: Path
    metrics: dict[str, Any]
    config: dict[str, Any]


def evaluate_torch(model, split: Split, input_names: list[str], batch_size: int = 256) -> float:
    torch = require("torch")
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            args = [torch.from_numpy(split.inputs[n][start:start + batch_size]) for n in input_names]
            logits = model(*args)
            correct += int((logits.argmax(-1).numpy() == split.labels[start:start + batch_size]).sum())
    return correct / len(split)


def train(recipe: Recipe, out_dir: Path, overrides: dict[str, Any] | None = None, show_progress: bool = True) -> TrainResult:
    torch = require("torch")
    safetensors_torch = require("safetensors.torch")
    config = dataclasses.replace(recipe.train, **{k: v for k, v in (overrides or {}).items() if v is not None})
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgeDLError(f"--out {out_dir} is a file; pass a directory")
    writable_output(out_dir, "--out", directory=True)  # before training, not after
    train_split, val_split, test_split = (recipe.split(s) for s in ("train", "val", "test"))

    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True)
    # Batches of 32 tiny images gain nothing from intra-op threads, and on a busy machine spinning worker
    # threads multiply training time; one thread also keeps results bit-identical run to run.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = recipe.build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    inputs = [torch.from_numpy(train_split.inputs[n]) for n in recipe.input_names]
    labels = torch.from_numpy(train_split.labels)
    generator = torch.Generator().manual_seed(config.seed)

    best_val, best_state, best_epoch = -1.0, None, 0
    started = time.perf_counter()
    with progress(f"train {recipe.name}", config.epochs, enabled=show_progress) as advance:
        for epoch in range(config.epochs):
            model.train()
            order = torch.randperm(len(labels), generator=generator)
            total_loss = 0.0
            for start in range(0, len(order), config.batch_size):
                idx = order[start:start + config.batch_size]
                optimizer.zero_grad()
                loss = loss_fn(model(*[t[idx] for t in inputs]), labels[idx])
                loss.backward()
                optimizer.step()
                total_loss += float(loss.detach()) * len(idx)
            scheduler.step()
            val_acc = evaluate_torch(model, val_split, recipe.input_names)
            if val_acc > best_val or config.keep == "last":
                best_val, best_epoch = val_acc, epoch + 1
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            advance(info=f"loss {total_loss / len(labels):.3f}  val {val_acc:.1%}")
    seconds = time.perf_counter() - started
    torch.set_num_threads(threads)
    model.load_state_dict(best_state)
    test_acc = evaluate_torch(model, test_split, recipe.input_names)

    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    tmp = weights.with_suffix(".tmp")
    # one metadata key: safetensors writes a metadata map in random order, so several keys would make two
    # identical trainings produce different bytes
    safetensors_torch.save_file({k: v.contiguous() for k, v in best_state.items()}, str(tmp),
                                metadata={"edgedl": json.dumps({"recipe": recipe.name, "version": __version__})})
    tmp.replace(weights)
    metrics = {
        "test_accuracy": round(test_acc, 6),
        "val_accuracy": round(best_val, 6),
        "best_epoch": best_epoch,
        "train_seconds": round(seconds, 2),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "test_samples": len(test_split),
    }
    resolved = {
        "recipe": recipe.name,
        "recipe_source": recipe.source,
        "train": dataclasses.asdict(config),
        "data": recipe.data.describe() if recipe.data else None,
        "torch": torch.__version__,
        "edgedl": __version__,
    }
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
    return TrainResult(out_dir, weights, metrics, resolved)


__all__ = ["TrainResult", "train", "evaluate_torch"]

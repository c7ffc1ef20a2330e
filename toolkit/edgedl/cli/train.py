from __future__ import annotations

from pathlib import Path

import click

from edgedl.cli import debug_option, emit_json, json_option


@click.command()
@click.argument("recipe")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Directory for weights and metrics.")
@click.option("--epochs", type=click.IntRange(min=1), help="Override the recipe's epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Override the recipe's batch size.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Override the recipe's learning rate.")
@click.option("--seed", type=int, help="Override the recipe's seed.")
@json_option
@debug_option
def train(recipe: str, out_dir: Path, epochs, batch_size, lr, seed, as_json: bool, debug: bool) -> None:
    """Train RECIPE (a recipe file such as models/cnn.py, or a zoo name) on CPU.

    Writes OUT/model.safetensors, OUT/metrics.json (test accuracy) and OUT/config.json (the resolved config).
    """
    from edgedl.recipe import load_recipe
    from edgedl.stages.train import train as run_train

    r = load_recipe(recipe)
    result = run_train(r, out_dir, {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed},
                       show_progress=not as_json)
    if as_json:
        emit_json({"out_dir": str(result.out_dir), "weights": str(result.weights), "metrics": result.metrics,
                   "config": result.config})
        return
    m = result.metrics
    click.echo(f"{r.name}: test accuracy {m['test_accuracy']:.2%} ({m['test_samples']} held-out images), "
               f"{m['parameters']:,} parameters, {m['train_seconds']:.1f} s -> {result.weights}")

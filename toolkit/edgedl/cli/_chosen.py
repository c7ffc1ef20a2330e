"""``--config FILE`` for quantize and bench: the configuration ``edgedl optimize`` chose (its config.json) as the
defaults of the command's own options; options given on the command line still win."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import click


def _quantize_defaults(chosen) -> dict:
    from edgedl.errors import EdgeDLError

    q = chosen.quantize
    if q.get("mode") == "fp32":
        raise EdgeDLError("the chosen configuration keeps the model in fp32: there is nothing to quantize; deploy "
                          "the input model itself (bench --config FILE times it with the chosen session settings)")
    names = {"mode": "mode", "preset": "preset", "format": "fmt", "per_channel": "per_channel",
             "calibration_method": "calibration_method", "calibration_samples": "calibration_samples",
             "activation_type": "activation_type", "weight_type": "weight_type", "reduce_range": "reduce_range"}
    out = {param: q[key] for key, param in names.items() if q.get(key) is not None}
    if q.get("exclude_nodes"):
        out["exclude_nodes"] = (",".join(q["exclude_nodes"]),)
    return out


def _bench_defaults(chosen) -> dict:
    session = chosen.session
    return {"threads": str(session["threads"]), "batch": str(chosen.candidate.batch), "spinning": session["spinning"],
            "scenario": chosen.scenario, "providers": (chosen.provider,)}


DEFAULTS = {"quantize": _quantize_defaults, "bench": _bench_defaults}


def config_option(command: str) -> Callable:
    """``--config FILE``: the command receives the loaded ``ChosenConfig`` (or None) as ``chosen``."""

    def load(ctx: click.Context, _param, value):
        if value is None or ctx.resilient_parsing:
            return None
        from edgedl.stages.optimize.report import ChosenConfig

        chosen = ChosenConfig.load(Path(value))
        ctx.default_map = {**(ctx.default_map or {}), **DEFAULTS[command](chosen)}
        return chosen

    return click.option("--config", "chosen", type=click.Path(path_type=Path), is_eager=True, callback=load,
                        metavar="FILE", help="A configuration `edgedl optimize` chose (its config.json) as defaults; "
                                             "options given here win.")

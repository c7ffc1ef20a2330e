"""The search space of ``edgedl optimize``: every knob declared once - name (the field), type (its annotation),
default, the values searched, a description, the stage it acts on and when it applies - as Olive's passes
declare their parameters. ``Candidate`` is one point of the space; ``Space`` the values a run searches (narrowed
to the target and the user's ``--space`` choices) and their enumeration.

Stages: ``model`` knobs change the model file (they are built and judged for accuracy once per file), ``session``
knobs are onnxruntime session settings and ``scenario`` the load (only timed). A knob that does not apply to a
candidate (calibration for dynamic int8, inter-op threads in sequential mode) holds its default, so that two
candidates that would run the same are one candidate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Mapping

from edgedl.errors import EdgeDLError

STAGES = ("model", "session", "scenario")


def knob(default, values: tuple, description: str, stage: str, applies: Callable[["Candidate"], bool] | None = None):
    """A dataclass field that is a search knob: its ``values`` are what the search tries by default."""
    return field(default=default, metadata={"values": values, "description": description, "stage": stage,
                                            "applies": applies})


def _quantized(c: "Candidate") -> bool:
    return c.precision in ("dynamic", "static")


def _static(c: "Candidate") -> bool:
    return c.precision == "static"


def _pooled(c: "Candidate") -> bool:
    """A thread pool exists whose idle threads could spin."""
    return c.intra_op_threads != 1 or c.execution_mode == "parallel"


@dataclass(frozen=True)
class Candidate:
    """One configuration: how the model file is made, how onnxruntime runs it, and the load it is timed under."""

    precision: str = knob("fp32", ("fp32", "dynamic", "static", "fp16"),
                          "fp32 as exported, int8 with activation scales computed at run time (dynamic) or "
                          "calibrated (static), or fp16 (GPU targets only)", "model")
    quant_format: str = knob("qdq", ("qdq", "qoperator"),
                             "static int8 graph form: QuantizeLinear/DequantizeLinear pairs or QLinear* ops", "model",
                             _static)
    per_channel: bool = knob(True, (True, False), "static int8 weight scales per output channel (else per tensor)",
                             "model", _static)
    calibration_method: str = knob("minmax", ("minmax", "percentile", "entropy"),
                                   "how activation ranges are fitted to the calibration data", "model", _static)
    calibration_samples: int | None = knob(None, (32, 128, None),
                                           "calibration samples used (None: all of the calibration data)", "model",
                                           _static)
    activation_type: str = knob("uint8", ("uint8", "int8"), "static int8 activation type", "model", _static)
    weight_type: str = knob("int8", ("int8", "uint8"), "int8 weight type", "model", _quantized)
    reduce_range: bool = knob(False, (False, True),
                              "static int8 weights in 7 bits (exact on AVX2 without VNNI, whose u8s8 products can "
                              "saturate)", "model", _static)
    exclude_nodes: tuple[str, ...] = knob((), ((),), "nodes kept in float (sets given with --exclude-nodes)",
                                          "model", _quantized)
    saved_optimized: bool = knob(False, (False, True),
                                 "ship the graph onnxruntime optimized (at graph_optimization), saved once, so the "
                                 "device skips optimizing at load; False: the device optimizes at load", "model")
    graph_optimization: str = knob("all", ("all", "extended", "basic"),
                                   "onnxruntime graph optimization level (at load, or before saving)", "session")
    intra_op_threads: int = knob(1, (1, 2, 4), "threads inside an operator", "session")
    execution_mode: str = knob("sequential", ("sequential", "parallel"),
                               "run independent branches of the graph one after another, or in parallel", "session")
    inter_op_threads: int = knob(0, (2, 4), "threads running branches in parallel mode (0: onnxruntime's default)",
                                 "session", lambda c: c.execution_mode == "parallel")
    spinning: bool = knob(True, (True, False), "idle pool threads spin (lower latency, burns CPU) or sleep",
                          "session", _pooled)
    memory_arena: bool = knob(True, (True, False), "onnxruntime's CPU memory arena", "session")
    batch: int = knob(1, (1,), "samples per query of the scenario", "scenario")

    def key(self) -> str:
        return digest(self.to_json())

    def part(self, stage: str) -> dict[str, Any]:
        """The knobs of one stage (``model``: what the file depends on)."""
        return {k.name: getattr(self, k.name) for k in KNOBS if k.stage == stage}

    def to_json(self) -> dict[str, Any]:
        return {k.name: list(v) if isinstance(v := getattr(self, k.name), tuple) else v for k in KNOBS}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Candidate":
        unknown = sorted(set(data) - {k.name for k in KNOBS})
        if unknown:
            raise EdgeDLError(f"unknown knob(s) {', '.join(unknown)} in a configuration; known: "
                              f"{', '.join(k.name for k in KNOBS)}")
        values = {k: tuple(v) if k == "exclude_nodes" else v for k, v in data.items()}
        return cls(**values)

    def normalized(self) -> "Candidate":
        """Knobs that do not apply hold their defaults."""
        values = {}
        for k in KNOBS:
            values[k.name] = getattr(self, k.name)
            partial = dataclasses.replace(DEFAULT, **values)
            if k.applies is not None and not k.applies(partial):
                values[k.name] = k.default
        return Candidate(**values)

    def describe(self) -> str:
        """A short label: what differs from the defaults (the precision always)."""
        parts = [self.precision if self.precision != "static" else f"static/{self.quant_format}"]
        for k in KNOBS:
            value = getattr(self, k.name)
            if k.name in ("precision", "quant_format") or value == k.default:
                continue
            parts.append(SHORT.get((k.name, value)) or f"{SHORT.get(k.name, k.name)}={_text(value)}")
        return " ".join(parts)


def _text(value) -> str:
    if isinstance(value, tuple):
        return ",".join(value) or "-"
    return "all" if value is None else str(value)


# how a label names a non-default value
SHORT: dict = {"per_channel": "per-channel", ("per_channel", False): "per-tensor", "calibration_method": "cal",
               "calibration_samples": "samples", "activation_type": "act", "weight_type": "w",
               ("reduce_range", True): "reduce-range",
               "exclude_nodes": "float", ("saved_optimized", True): "saved-opt", "graph_optimization": "opt",
               "intra_op_threads": "t", "inter_op_threads": "inter", ("execution_mode", "parallel"): "parallel",
               ("spinning", False): "no-spin", ("memory_arena", False): "no-arena", "batch": "b"}


@dataclass(frozen=True)
class Knob:
    name: str
    type: str
    default: Any
    values: tuple
    description: str
    stage: str
    applies: Callable[[Candidate], bool] | None

    def parse(self, text: str):
        """One value from the command line (``--space NAME=V1,V2``)."""
        t = text.strip()
        if self.name == "exclude_nodes":
            return tuple(n for n in t.split("+") if n) if t not in ("", "-", "none") else ()
        if isinstance(self.default, bool):
            if t.lower() in ("true", "1", "yes", "on"):
                return True
            if t.lower() in ("false", "0", "no", "off"):
                return False
        elif self.name == "calibration_samples" and t.lower() in ("all", "none"):
            return None
        elif isinstance(self.default, int) or self.name == "calibration_samples":
            if t.isdigit():
                return int(t)
        else:
            import difflib

            options = [str(v) for v in self.values]
            if t.lower() in options:
                return t.lower()
            close = difflib.get_close_matches(t.lower(), options, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise EdgeDLError(f"knob {self.name} has no value '{text}'; {hint}choose from {', '.join(options)}")
        raise EdgeDLError(f"knob {self.name} takes {self.type} values (e.g. {_text(self.default)}), got '{text}'")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "default": _jsonable(self.default),
                "values": [_jsonable(v) for v in self.values], "description": self.description, "stage": self.stage}


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


KNOBS: tuple[Knob, ...] = tuple(
    Knob(f.name, str(f.type), f.default, f.metadata["values"], f.metadata["description"], f.metadata["stage"],
         f.metadata["applies"]) for f in dataclasses.fields(Candidate))
KNOB_BY_NAME = {k.name: k for k in KNOBS}
DEFAULT = Candidate()


def digest(data) -> str:
    """A short stable hash of JSON-able data (cache keys)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:20]


def knob_named(name: str) -> Knob:
    key = name.strip().replace("-", "_")
    if key in KNOB_BY_NAME:
        return KNOB_BY_NAME[key]
    import difflib

    close = difflib.get_close_matches(key, list(KNOB_BY_NAME), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise EdgeDLError(f"unknown knob '{name}'; {hint}knobs: {', '.join(KNOB_BY_NAME)}")


def parse_space(texts) -> dict[str, tuple]:
    """``["precision=fp32,static", "intra_op_threads=1"]`` -> {knob: values}; a knob named twice is an error."""
    out: dict[str, tuple] = {}
    for text in texts:
        name, sep, values = str(text).partition("=")
        if not sep or not values.strip():
            raise EdgeDLError(f"a search restriction is KNOB=VALUE[,VALUE...] (e.g. precision=fp32,static), got "
                              f"'{text}'", option=("space", "KNOB=V1,V2"))
        k = knob_named(name)
        if k.name in out:
            raise EdgeDLError(f"knob {k.name} is restricted twice; give all its values at once")
        out[k.name] = tuple(dict.fromkeys(k.parse(v) for v in values.split(",")))
    return out


@dataclass(frozen=True)
class Space:
    """The values searched per knob, and the candidate every run starts from (the target's defaults)."""

    values: Mapping[str, tuple]
    base: Candidate = DEFAULT

    def size(self) -> int:
        return sum(1 for _ in self.candidates())

    def candidates(self) -> Iterator[Candidate]:
        """Every distinct candidate: knobs branch only where they apply (given the knobs before them)."""
        partial = SimpleNamespace(**{k.name: getattr(self.base, k.name) for k in KNOBS})  # what `applies` reads

        def walk(index: int, chosen: dict) -> Iterator[Candidate]:
            if index == len(KNOBS):
                yield Candidate(**chosen)
                return
            k = KNOBS[index]
            options = self.values[k.name] if k.applies is None or k.applies(partial) else (k.default,)
            for value in options:
                setattr(partial, k.name, value)
                chosen[k.name] = value
                yield from walk(index + 1, chosen)

        yield from walk(0, {})

    def contains(self, c: Candidate) -> bool:
        c = c.normalized()
        return all(getattr(c, k.name) in self.values[k.name] or (k.applies is not None and not k.applies(c))
                   for k in KNOBS)

    def holding(self, c: Candidate, stages: tuple[str, ...]) -> "Space":
        """This space with the knobs of ``stages`` held at ``c``'s values."""
        values = dict(self.values)
        for k in KNOBS:
            if k.stage in stages:
                values[k.name] = (getattr(c, k.name),)
        return Space(values, c)

    def variants(self, seed: int, first: list[Candidate]) -> list[Candidate]:
        """The model files to build, in the order a search visits them: ``first`` (the baselines), then the rest
        in a seeded shuffle taken in turn from each precision, so that no kind is drowned by the many static
        variants. Session and scenario knobs hold ``first[0]``'s values."""
        sub = self.holding(first[0], ("session", "scenario"))
        start = list(dict.fromkeys(sub_c for c in first if self.contains(c)
                                   for sub_c in [merge(c, first[0])]))
        seen = set(start)
        rng = random.Random(seed)
        families: dict[str, list[Candidate]] = {}
        for c in sub.candidates():
            if c not in seen:
                families.setdefault(c.precision, []).append(c)
        for members in families.values():
            rng.shuffle(members)
        rest: list[Candidate] = []
        queues = [families[p] for p in KNOB_BY_NAME["precision"].values if p in families]
        while any(queues):
            for queue in queues:
                if queue:
                    rest.append(queue.pop())
        return start + rest

    def sessions(self, seed: int, first: Candidate) -> list[Candidate]:
        """Session and scenario settings in visiting order: ``first``'s, then a seeded shuffle of the rest (model
        knobs at ``first``'s values; combine with a model file through ``merge``)."""
        others = [c for c in self.holding(first, ("model",)).candidates() if c != first]
        random.Random(seed + 1).shuffle(others)
        return ([first] if self.contains(first) else []) + others

    def to_json(self) -> dict[str, list]:
        return {name: [_jsonable(v) for v in values] for name, values in self.values.items()}


def merge(variant: Candidate, session: Candidate) -> Candidate:
    """``variant``'s model knobs with ``session``'s session and scenario knobs."""
    values = {k.name: getattr(variant if k.stage == "model" else session, k.name) for k in KNOBS}
    return Candidate(**values).normalized()

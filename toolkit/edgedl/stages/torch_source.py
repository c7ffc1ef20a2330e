"""Where a PyTorch module comes from, and how to build it again: a recipe, a ``file.py:Class`` with constructor
arguments, or a TorchScript file, plus the checkpoint its weights came from (path and sha256).

Export builds the module it exports from a ``TorchSource`` and stores the source in the ONNX model's metadata
(``torch_source``); ``bench --baseline torch`` reads it back and builds the same module, so the baseline runs the
network the ONNX file was made from. Weights come from a safetensors file, a ``state_dict`` saved with
``torch.save`` (loaded with ``weights_only=True``: a pickled module would run code), a ``train --out`` directory,
or are the random initialization under torch seed 0 when there is no checkpoint. torch is imported lazily.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgedl._lazy import require
from edgedl.errors import EdgeDLError

if TYPE_CHECKING:
    from edgedl.recipe import Recipe

KINDS = ("recipe", "module", "torchscript")
TORCHSCRIPT_SUFFIXES = (".jit", ".pt", ".pth", ".ts", ".torchscript")
INIT_SEED = 0  # a module built without a checkpoint is initialized under this torch seed, at export and in bench
# what a ``train --out`` directory holds: the weights, and the metrics training measured (export records them)
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_weights(recipe: "Recipe", checkpoint: Path):
    """Build the recipe's model and load weights from a safetensors file (or a train --out directory)."""
    require("torch")
    safetensors_torch = require("safetensors.torch")
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        checkpoint = checkpoint / WEIGHTS_FILE
    if not checkpoint.is_file():
        raise EdgeDLError(f"checkpoint not found: {checkpoint}; pass the model.safetensors written by `edgedl train`")
    if recipe.load_checkpoint is not None:  # the recipe reads a published checkpoint its own way
        try:
            state = recipe.load_checkpoint(checkpoint)
        except EdgeDLError:
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise EdgeDLError(f"recipe '{recipe.name}' could not read {checkpoint}: {type(exc).__name__}: {first}") from exc
    else:
        try:
            state = safetensors_torch.load_file(str(checkpoint))
        except Exception as exc:
            raise EdgeDLError(f"{checkpoint} is not a safetensors checkpoint ({exc}); pass the file `edgedl train` wrote") from exc
    model = recipe.build()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(ln.strip() for ln in str(exc).splitlines()[1:3])[:300]
        raise EdgeDLError(
            f"{checkpoint} does not fit recipe '{recipe.name}' ({detail}); retrain with `edgedl train` for this recipe"
        ) from exc
    return model.eval(), checkpoint


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip with a ``code/`` folder (a ``torch.save`` state_dict is a zip too, without)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def parse_init_args(text: str | None, option: str = "init_args") -> dict[str, Any] | list[Any] | None:
    """``'{"width": 64}'`` (keyword arguments) or ``'[64, 10]'`` (positional) -> the parsed JSON."""
    if text is None or not str(text).strip():
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise EdgeDLError(f"constructor arguments '{text}' are not JSON ({exc.msg} at column {exc.colno}); "
                          """give an object of keyword arguments such as '{"width": 64}' or a list such as '[64]'""",
                          option=(option, """'{"width": 64}'""")) from None
    if not isinstance(value, (dict, list)):
        raise EdgeDLError(f"constructor arguments must be a JSON object (keywords) or list (positional), got '{text}'",
                          option=(option, """'{"width": 64}'"""))
    return value


def split_target(target: str) -> tuple[Path, str]:
    """``path/to/file.py:Class`` -> (path, 'Class'); ``model.jit:sub.module`` -> (path, 'sub.module')."""
    file_part, sep, attr = str(target).rpartition(":")
    if not sep or not file_part:
        return Path(target), ""
    return Path(file_part), attr


@dataclass(frozen=True)
class TorchSource:
    """How to build a module again. ``target``: a recipe file or zoo name (recipe), ``/abs/file.py:Class``
    (module), or ``/abs/model.jit`` with an optional ``:submodule.path`` (torchscript)."""

    kind: str
    target: str
    init_args: dict[str, Any] | list[Any] | None = None
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise EdgeDLError(f"unknown torch source kind '{self.kind}'; one of {', '.join(KINDS)}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "target": self.target}
        for key in ("init_args", "checkpoint", "checkpoint_sha256"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TorchSource":
        if not isinstance(data, dict) or data.get("kind") not in KINDS or not isinstance(data.get("target"), str):
            raise EdgeDLError(f"malformed torch_source metadata {data!r}; export the model again with `edgedl export`")
        return cls(data["kind"], data["target"], data.get("init_args"), data.get("checkpoint"),
                   data.get("checkpoint_sha256"))

    def describe(self) -> str:
        args = f" with {json.dumps(self.init_args)}" if self.init_args else ""
        weights = f", weights {self.checkpoint}" if self.checkpoint else ""
        return f"{self.target}{args}{weights}"

    def source_file(self) -> Path:
        """The file the module comes from (the recipe, the model file or the TorchScript file)."""
        if self.kind == "module":
            return split_target(self.target)[0]
        if self.kind == "torchscript":
            return _torchscript_target(self.target)[0]
        return Path(self.target)

    def check_checkpoint(self) -> None:
        """The checkpoint is still the file the model was exported from (path and sha256 recorded at export)."""
        if self.checkpoint is None or self.checkpoint_sha256 is None:
            return
        path = weights_file(Path(self.checkpoint))
        if not path.is_file():
            raise EdgeDLError(f"checkpoint {path} (recorded at export) is gone",
                              hint="give the weights the model was exported from",
                              option=("torch_checkpoint", "FILE"))
        if sha256(path) != self.checkpoint_sha256:
            raise EdgeDLError(f"checkpoint {path} changed since the model was exported (sha256 differs): the "
                              "baseline would run other weights",
                              hint="give the weights the model was exported from",
                              option=("torch_checkpoint", "FILE"))

    def input_names(self) -> list[str] | None:
        """The forward() argument order a recipe declares (None: the ONNX model's input order, as exported)."""
        if self.kind != "recipe":
            return None
        from edgedl.recipe import load_recipe

        return load_recipe(self.target).input_names

    def build(self):
        """The module, in eval mode, with its weights (or seed-0 random initialization without a checkpoint)."""
        torch = require("torch")
        if self.kind == "torchscript":
            if self.checkpoint:
                raise EdgeDLError(f"{self.target} is a TorchScript file, which carries its own weights; "
                                  "give no checkpoint with it")
            path, attr = _torchscript_target(self.target)
            return load_torchscript(path, attr)
        if self.kind == "recipe":
            from edgedl.recipe import load_recipe

            recipe = load_recipe(self.target)
            if self.checkpoint:
                return load_weights(recipe, Path(self.checkpoint))[0]
            torch.manual_seed(INIT_SEED)
            return _checked_module(recipe.build, recipe.name)
        path, class_name = split_target(self.target)
        cls = module_class(path, class_name)
        torch.manual_seed(INIT_SEED)
        model = construct(cls, self.init_args)
        if self.checkpoint:
            load_checkpoint(model, Path(self.checkpoint), class_name)
        return model.eval()


def _torchscript_target(target: str) -> tuple[Path, str]:
    path = Path(target)
    if path.is_file():
        return path, ""
    return split_target(target)


def _checked_module(build, name: str):
    torch = require("torch")
    try:
        model = build()
    except EdgeDLError:
        raise
    except Exception as exc:
        raise EdgeDLError(f"constructing {name} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, torch.nn.Module):
        raise EdgeDLError(f"{name}() did not return a torch.nn.Module")
    return model.eval()


_IMPORTED: dict[Path, Any] = {}  # model files imported by this process: resolving and building import once


def module_class(path: Path, class_name: str):
    """The class ``class_name`` from the Python file ``path`` (imported with its folder on the module path)."""
    from edgedl.recipe import import_file

    if not path.is_file():
        raise EdgeDLError(f"model file not found: {path}; pass path/to/file.py:ClassName")
    if not class_name.isidentifier():
        raise EdgeDLError(f"'{class_name}' is not a class name; pass path/to/file.py:ClassName")
    resolved = path.resolve()
    if resolved not in _IMPORTED:
        _IMPORTED[resolved] = import_file(resolved)
    module = _IMPORTED[resolved]
    cls = getattr(module, class_name, None)
    if cls is None or not isinstance(cls, type):
        found = [n for n, v in vars(module).items() if isinstance(v, type) and hasattr(v, "forward")]
        raise EdgeDLError(f"{path} has no class '{class_name}'; modules found there: {', '.join(found) or 'none'}")
    return cls


def construct(cls, init_args: dict[str, Any] | list[Any] | None):
    """``cls(**init_args)`` or ``cls(*init_args)``, with a one-line error that says how to pass the arguments."""
    if isinstance(init_args, dict):
        build = lambda: cls(**init_args)  # noqa: E731
    elif isinstance(init_args, list):
        build = lambda: cls(*init_args)  # noqa: E731
    else:
        build = cls
    try:
        return _checked_module(build, cls.__name__)
    except EdgeDLError as exc:
        if init_args is None and "missing" in exc.message and "argument" in exc.message:
            raise EdgeDLError(exc.message, hint="give its constructor arguments as JSON",
                              option=("init_args", """'{"name": value}'""")) from exc
        raise


def load_torchscript(path: Path, attr: str = ""):
    """A TorchScript module from ``path`` (``torch.jit.save``), or its submodule at the dotted ``attr``."""
    torch = require("torch")
    if not path.is_file():
        raise EdgeDLError(f"TorchScript file not found: {path}")
    if not is_torchscript(path):
        raise EdgeDLError(f"{path} is not a TorchScript file (torch.jit.save); a state_dict needs its class: "
                          f"pass path/to/file.py:ClassName with the checkpoint {path}")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise EdgeDLError(f"torch could not load TorchScript file {path}: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0][:300]}") from exc
    for part in [p for p in attr.split(".") if p]:
        children = dict(module.named_children())
        if part not in children:
            raise EdgeDLError(f"TorchScript file {path} has no submodule '{attr}'; its submodules: "
                              f"{', '.join(children) or 'none'} (select one with {path}:NAME)")
        module = children[part]
    return module.eval()


def weights_file(checkpoint: Path) -> Path:
    """A ``train --out`` directory means its model.safetensors."""
    return checkpoint / WEIGHTS_FILE if checkpoint.is_dir() else checkpoint


def checkpoint_metrics(checkpoint: Path) -> dict[str, Any] | None:
    """The metrics ``edgedl train`` wrote beside a checkpoint (in its ``--out`` directory), or None."""
    directory = checkpoint if checkpoint.is_dir() else checkpoint.parent
    path = directory / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def load_state_dict(checkpoint: Path) -> dict[str, Any]:
    """Tensors by parameter name from a safetensors file, a ``torch.save``'d state_dict (also one nested under
    'state_dict' / 'model_state_dict' / 'model', as training scripts save them) or a train --out directory."""
    torch = require("torch")
    path = weights_file(Path(checkpoint))
    if not path.is_file():
        raise EdgeDLError(f"checkpoint not found: {path}; pass a .safetensors file, a state_dict saved with "
                          "torch.save, or an `edgedl train` --out directory")
    if path.suffix == ".safetensors":
        safetensors_torch = require("safetensors.torch")
        try:
            return safetensors_torch.load_file(str(path))
        except Exception as exc:
            raise EdgeDLError(f"{path} is not a readable safetensors file ({exc})") from exc
    if is_torchscript(path):
        raise EdgeDLError(f"{path} is a TorchScript file, not a state_dict: export it directly "
                          f"(`edgedl export {path} --input ...`), without a class")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise EdgeDLError(f"{path} is not a state_dict torch can load safely ({first}); save it with "
                          "torch.save(model.state_dict(), path) or as .safetensors (a pickled module would run "
                          "code when loaded)") from exc
    if isinstance(state, dict) and not _all_tensors(state):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(key), dict) and _all_tensors(state[key]):
                return state[key]
    if not isinstance(state, dict) or not _all_tensors(state):
        raise EdgeDLError(f"{path} holds a {type(state).__name__}, not a state_dict of tensors; save "
                          "model.state_dict()")
    return state


def _all_tensors(state: dict) -> bool:
    torch = require("torch")
    return bool(state) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())


def load_checkpoint(model, checkpoint: Path, name: str) -> None:
    """Load weights into ``model``; a mismatch names the missing / unexpected / misshapen parameters."""
    state = load_state_dict(checkpoint)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()]
        detail = " ".join(lines)[:300]
        raise EdgeDLError(f"{weights_file(Path(checkpoint))} does not fit {name} ({detail}); pass the checkpoint "
                          "saved from this class (with the same constructor arguments)") from exc


def looks_like_torchscript(target: str) -> bool:
    """``model.jit`` (an existing TorchScript file) or ``model.jit:submodule``."""
    whole = Path(target)
    if whole.is_file():
        return whole.suffix in TORCHSCRIPT_SUFFIXES and is_torchscript(whole)
    path, attr = split_target(target)
    return bool(attr) and path.suffix in TORCHSCRIPT_SUFFIXES and path.is_file() and is_torchscript(path)


def source_for(model_spec: str | None, checkpoint: str | None, metadata: dict[str, Any],
               init_args: dict[str, Any] | list[Any] | None = None) -> TorchSource:
    """The module to benchmark against an ONNX model: ``model_spec`` (a recipe, ``file.py:Class`` or a
    TorchScript file) and ``checkpoint`` when given, else what export recorded in the model's metadata (its
    checkpoint checked against the recorded sha256). Constructor arguments come from the metadata when the
    class is the one recorded, unless ``init_args`` are given. No torch import: the orchestrator resolves this before starting any worker."""
    recorded = None
    if isinstance(metadata.get("torch_source"), dict):
        recorded = TorchSource.from_json(metadata["torch_source"])
    elif metadata.get("recipe_source") and metadata.get("checkpoint"):  # exported before torch_source existed
        recorded = TorchSource("recipe", metadata["recipe_source"], checkpoint=metadata["checkpoint"])

    def resolved(path: str | None) -> str | None:
        return str(Path(path).resolve()) if path else None

    if init_args is not None and (model_spec is None or not str(model_spec).partition(":")[0].endswith(".py")):
        raise EdgeDLError("constructor arguments are for a module given as file.py:Class",
                          option=("torch_model", "file.py:Class"))
    if model_spec is None and checkpoint is None:
        if recorded is None:
            raise EdgeDLError("the model carries no record of the PyTorch module it was exported from (edgedl "
                              "export writes one)", hint="name the module and its weights",
                              option=("torch_model", "file.py:Class or RECIPE (and --torch-checkpoint FILE)"))
        recorded.check_checkpoint()
        return recorded
    if model_spec is None:
        if looks_like_torchscript(checkpoint):
            return TorchSource("torchscript", resolved(checkpoint))
        if recorded is None:
            raise EdgeDLError(f"weights {checkpoint} given, but the model does not record which module they are for",
                              option=("torch_model", "file.py:Class or RECIPE"))
        if recorded.kind == "torchscript":
            raise EdgeDLError(f"the model was exported from TorchScript file {recorded.target}, which carries its "
                              "own weights; give no checkpoint, or the module it should be compared with",
                              option=("torch_model", "file.py:Class"))
        return TorchSource(recorded.kind, recorded.target, recorded.init_args, resolved(checkpoint))
    if looks_like_torchscript(model_spec):
        if checkpoint is not None:
            raise EdgeDLError(f"{model_spec} is a TorchScript file, which carries its own weights; give no checkpoint")
        whole = Path(model_spec)
        path, attr = (whole, "") if whole.is_file() else split_target(model_spec)
        return TorchSource("torchscript", str(path.resolve()) + (f":{attr}" if attr else ""))
    path, attr = split_target(model_spec)
    if attr and path.suffix == ".py":
        target = f"{path.resolve()}:{attr}"
        kind = "module"
    else:
        target, kind = model_spec, "recipe"
    same = recorded is not None and recorded.kind == kind and recorded.target == target
    if init_args is None and same:
        init_args = recorded.init_args
    if checkpoint is None and same and recorded.checkpoint:
        recorded.check_checkpoint()
        return TorchSource(kind, target, init_args, recorded.checkpoint, recorded.checkpoint_sha256)
    return TorchSource(kind, target, init_args, resolved(checkpoint))

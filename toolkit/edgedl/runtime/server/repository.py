"""Find models to serve: one MODEL.onnx, or a Triton-layout repository ``DIR/NAME/N/model.onnx`` with an
optional ``DIR/NAME/config.pbtxt``. The edgedl manifest that covers the models (the repository's own, or its
bundle's) is verified before anything is loaded, and its signature when a verify key is given."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from edgedl.errors import EdgeDLError
from edgedl.runtime.server.pbtxt import first, parse_pbtxt

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class BatchPolicy:
    """Per-model serving policy: CLI defaults, overridden by the model's config.pbtxt."""

    max_batch_size: int = 0  # rows per batched run; <= 1 disables dynamic batching
    max_queue_delay_us: int = 200
    max_queue: int = 256  # requests allowed to wait; beyond that the server answers 503
    instances: int = 1  # concurrent onnxruntime runs (threads) for this model
    dynamic_batching: bool = True  # config.pbtxt without a dynamic_batching block turns it off


@dataclass
class ModelSource:
    name: str
    versions: dict[int, Path]  # version -> model file
    policy: BatchPolicy
    config_path: Path | None = None
    config: dict = field(default_factory=dict)  # the parsed config.pbtxt
    label_files: dict[str, Path] = field(default_factory=dict)  # output -> its config label_filename

    def warmup_file(self, filename: str) -> Path:
        """A model_warmup input_data_file: in the model folder's warmup/ (as Triton keeps them), never outside."""
        folder = (self.config_path.parent if self.config_path else self.versions[self.latest].parent.parent)
        path = folder / "warmup" / filename
        if not path.resolve().is_relative_to((folder / "warmup").resolve()):
            raise EdgeDLError(f"model '{self.name}': warm-up file {filename!r} is outside {folder / 'warmup'}")
        return path

    @property
    def latest(self) -> int:
        return max(self.versions)

    @property
    def shape_hints(self) -> dict[str, tuple[int, ...]]:
        """Whole input shapes the config gives: Triton's model_warmup first, else inputs whose dims are all
        fixed (with a batch of 1 in front when max_batch_size > 0, as Triton's dims exclude the batch)."""
        batched = int(first(self.config, "max_batch_size", 0) or 0) > 0
        hints: dict[str, tuple[int, ...]] = {}
        for warm in self.config.get("model_warmup", []):
            size = int(first(warm, "batch_size", 1) or 1)
            for item in warm.get("inputs", []):
                name, value = first(item, "key"), first(item, "value") or {}
                dims = [int(d) for d in value.get("dims", [])]
                if name and all(d > 0 for d in dims):
                    hints.setdefault(name, ((size,) if batched else ()) + tuple(dims))
        for spec in self.config.get("input", []):
            name, dims = first(spec, "name"), [int(d) for d in spec.get("dims", [])]
            if name and dims and all(d > 0 for d in dims):
                hints.setdefault(name, ((1,) if batched else ()) + tuple(dims))
        return hints


def read_config(path: Path, defaults: BatchPolicy) -> tuple[dict, BatchPolicy]:
    """Parse the fields of a Triton config.pbtxt that edgedl honours into a BatchPolicy."""
    try:
        cfg = parse_pbtxt(path.read_text())
    except UnicodeDecodeError:
        raise EdgeDLError(f"{path} is not a text file; write config.pbtxt in protobuf text format") from None
    except EdgeDLError as exc:
        raise EdgeDLError(f"{path}: {exc}") from None
    return cfg, policy_of(cfg, defaults, str(path))


def policy_of(cfg: dict, defaults: BatchPolicy, where: str) -> BatchPolicy:
    """The BatchPolicy a parsed model configuration gives (``where`` names it in errors)."""
    platform = first(cfg, "platform") or first(cfg, "backend")
    if platform not in (None, "onnxruntime_onnx", "onnxruntime"):
        raise EdgeDLError(f"{where}: platform '{platform}' is not supported; edgedl serves onnxruntime_onnx models")
    max_batch = first(cfg, "max_batch_size", defaults.max_batch_size)
    dyn = first(cfg, "dynamic_batching")
    delay = first(dyn, "max_queue_delay_microseconds", defaults.max_queue_delay_us) if dyn is not None else 0
    queue_policy = first(dyn, "default_queue_policy") if dyn is not None else None
    max_queue = first(queue_policy, "max_queue_size", defaults.max_queue) if queue_policy else defaults.max_queue
    instances = sum(int(first(g, "count", 1)) for g in cfg.get("instance_group", [])) or defaults.instances
    for key, value in (("max_batch_size", max_batch), ("max_queue_delay_microseconds", delay),
                       ("max_queue_size", max_queue), ("instance_group count", instances)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise EdgeDLError(f"{where}: {key} must be a non-negative integer, got {value!r}")
    return BatchPolicy(max_batch_size=max_batch, max_queue_delay_us=delay, max_queue=max_queue or defaults.max_queue,
                       instances=max(instances, 1), dynamic_batching=dyn is not None)


def config_from_json(doc) -> dict:
    """A model configuration in Triton's JSON form (as a repository load's ``config`` parameter carries it) in
    the form parse_pbtxt gives: every field a list of values, messages dicts of the same form."""
    def value(v):
        return {k: values(x) for k, x in v.items()} if isinstance(v, dict) else v

    def values(v):
        return [value(x) for x in v] if isinstance(v, list) else [value(v)]

    if not isinstance(doc, dict):
        raise EdgeDLError("the load's 'config' must be a JSON object (a model configuration)")
    return {k: values(v) for k, v in doc.items()}


def _verify_bundle(directory: Path, verify_key: Path | None) -> None:
    from edgedl.runtime.manifest import verify_served

    verify_served(directory, verify_key)


def _inside(repository: Path, name: str, path: Path, allow_outside: bool) -> Path:
    """``path`` if it resolves inside the repository (symlinks followed); a repository is a unit that is
    verified and deployed as one, so a model that points elsewhere is refused unless explicitly allowed."""
    if allow_outside:
        return path
    root, resolved = repository.resolve(), path.resolve()
    if not resolved.is_relative_to(root):
        raise EdgeDLError(f"model '{name}': {path} resolves to {resolved}, outside the repository {root}; keep "
                          "model files inside the repository",
                          hint="or allow files outside it to serve it anyway (the server's allow_outside_repository)",
                          option=("allow_outside_repository", None))
    return path


def discover(model: Path | None, repository: Path | None, defaults: BatchPolicy,
             model_name: str | None = None, only: str | None = None,
             failures: dict[str, str] | None = None, verify_key: Path | None = None,
             allow_outside: bool = False) -> list[ModelSource]:
    """The models to serve, checked before anything is loaded (``only``: rediscover just that model;
    ``allow_outside``: accept repository files that resolve outside the repository).

    With ``failures`` (a dict), a repository model that cannot be read is recorded there (name -> reason) and
    the others are still returned; without it the first such model raises. ``verify_key``: the bundle's
    signature must verify with it (edgedl.runtime.manifest.verify_served)."""
    if (model is None) == (repository is None):
        raise EdgeDLError("give either a model file or a model repository (not both)")
    if model is not None:
        model = Path(model)
        if model.is_dir():
            raise EdgeDLError(f"{model} is a directory; give a .onnx file, or serve the directory as a model repository",
                              option=("model_repository", str(model)))
        if not model.is_file():
            raise EdgeDLError(f"model file not found: {model}; pass the path to an .onnx file")
        name = model_name or model.stem
        if not _NAME.match(name):
            raise EdgeDLError(f"model name '{name}' may only hold letters, digits, '_', '-' and '.'",
                              hint="give the model another name", option=("model_name", "NAME"))
        _verify_bundle(model.resolve().parent, verify_key)
        return [ModelSource(name, {1: model}, defaults)]
    repository = Path(repository)
    if not repository.is_dir():
        raise EdgeDLError(f"model repository not found: {repository}; pass a directory laid out as NAME/1/model.onnx")
    _verify_bundle(repository, verify_key)
    sources = []
    for entry in sorted(repository.iterdir()):
        if not entry.is_dir() or entry.name.startswith(".") or (only is not None and entry.name != only):
            continue
        try:
            sources.append(_model_source(repository, entry, defaults, allow_outside))
        except EdgeDLError as exc:
            if failures is None:
                raise
            failures[entry.name] = str(exc)
    if not sources and not failures:
        what = f"model '{only}' not found" if only else "no model found"
        raise EdgeDLError(f"{what} in {repository}; lay models out as {repository}/NAME/1/model.onnx")
    return sources


def _model_source(repository: Path, entry: Path, defaults: BatchPolicy, allow_outside: bool,
                  override: dict | None = None) -> ModelSource:
    config_path = entry / "config.pbtxt"
    if override is not None:  # a load request's configuration, instead of config.pbtxt
        cfg, policy = override, policy_of(override, defaults, f"the configuration given to load '{entry.name}'")
    elif config_path.is_file():
        cfg, policy = read_config(_inside(repository, entry.name, config_path, allow_outside), defaults)
    else:
        cfg, policy = {}, defaults
    filename = first(cfg, "default_model_filename", "model.onnx")
    if not isinstance(filename, str) or not filename:
        raise EdgeDLError(f"{config_path}: default_model_filename must be a non-empty string")
    versions = {int(v.name): _inside(repository, entry.name, v / filename, allow_outside) for v in entry.iterdir()
                if v.is_dir() and v.name.isdigit() and (v / filename).is_file()}
    if not versions:
        raise EdgeDLError(f"model '{entry.name}' in {repository} has no version folder with {filename}; "
                          f"put it at {entry / '1' / filename}")
    version_policy = first(cfg, "version_policy")
    if version_policy:
        versions = _apply_version_policy(versions, version_policy, config_path)
    if cfg and first(cfg, "name", entry.name) != entry.name:
        raise EdgeDLError(f"{config_path}: name '{first(cfg, 'name')}' differs from its folder '{entry.name}'; "
                          "make them equal (Triton requires it)")
    labels = {}
    for output in cfg.get("output", []):
        name, filename = first(output, "name"), first(output, "label_filename")
        if isinstance(name, str) and filename is not None:
            if not isinstance(filename, str) or not filename:
                raise EdgeDLError(f"{config_path}: label_filename of output '{name}' must be a non-empty string")
            labels[name] = _inside(repository, entry.name, entry / filename, allow_outside)
    return ModelSource(entry.name, versions, policy, config_path if cfg else None, cfg, labels)


def _apply_version_policy(versions: dict[int, Path], policy: dict, config_path: Path) -> dict[int, Path]:
    """The versions a config.pbtxt ``version_policy`` serves, as Triton reads it: ``latest { num_versions: N }``,
    ``specific { versions: [...] }`` or ``all {}``. (Without a policy edgedl serves every version folder, where
    Triton would serve only the newest.)"""
    if "all" in policy:
        return versions
    latest, specific = first(policy, "latest"), first(policy, "specific")
    if latest is not None:
        count = first(latest, "num_versions", 1)
        if not isinstance(count, int) or count < 1:
            raise EdgeDLError(f"{config_path}: version_policy latest num_versions must be a positive integer, "
                              f"got {count!r}")
        return {v: versions[v] for v in sorted(versions)[-count:]}
    if specific is not None:
        wanted = specific.get("versions", [])
        missing = [v for v in wanted if v not in versions]
        if not wanted or missing:
            raise EdgeDLError(f"{config_path}: version_policy asks for version(s) "
                              f"{', '.join(map(str, missing or wanted)) or 'none'} but the folder has "
                              f"{', '.join(map(str, sorted(versions)))}; list versions that exist")
        return {v: versions[v] for v in wanted}
    raise EdgeDLError(f"{config_path}: version_policy must hold latest, specific or all")


def override_source(repository: Path, name: str, config: dict, files: dict[str, bytes], defaults: BatchPolicy,
                    workdir: Path, allow_outside: bool) -> ModelSource:
    """The model ``name`` as a repository load with overrides gives it (Triton's load parameters): ``config``
    (parsed with config_from_json) instead of its config.pbtxt, and, when ``files`` ("1/model.onnx" -> bytes)
    are given, a model folder made of just those files under ``workdir`` instead of the repository's."""
    if not files:
        entry = repository / name
        if not entry.is_dir():
            raise EdgeDLError(f"model '{name}' not found in {repository}; lay models out as "
                              f"{repository}/NAME/1/model.onnx")
        return _model_source(repository, entry, defaults, allow_outside, config)
    import shutil

    entry = workdir / name
    shutil.rmtree(entry, ignore_errors=True)
    for relative, content in files.items():
        parts = relative.split("/")
        if relative.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in relative:
            raise EdgeDLError(f"failed to poll from model repository: file override 'file:{relative[:60]}' must be a "
                              "relative path inside the model folder, such as 'file:1/model.onnx'")
        if any(len(p.encode()) > 255 for p in parts):
            raise EdgeDLError(f"failed to poll from model repository: a file override's name has a part longer than "
                              "255 bytes; use shorter names")
        target = entry.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return _model_source(workdir, entry, defaults, False, config)

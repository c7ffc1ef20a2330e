"""Two rules of the code's layering, read from the source (no import needed): the embeddable runtime's messages
name no command-line flag (library code says what is wrong; the CLI adds the flag, edgedl.cli._errors), and the
pipeline stages do not import each other sideways - what two of them share lives in a module named for it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "toolkit" / "edgedl"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")


def _strings(tree: ast.AST):
    """Every string constant that is not a docstring, with its line."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_the_runtime_names_no_command_line_flag():
    found = [f"{path.relative_to(PACKAGE)}:{line}: {FLAG.search(text).group()}"
             for path in sorted((PACKAGE / "runtime").rglob("*.py"))
             for line, text in _strings(ast.parse(path.read_text()))
             if FLAG.search(text)]
    assert not found, "say it in the runtime's terms and name the setting with EdgeDLError(option=...): " + str(found)


def test_the_flag_finder_finds_flags():
    tree = ast.parse('"""docstring --ignored"""\nx = "pass --max-body-bytes"\ny = "a-b --, x--y, 5 --> 6"\n')
    assert [FLAG.search(t).group() for _, t in _strings(tree) if FLAG.search(t)] == ["--max-body-bytes"]


# the pipeline stages (a command each); everything else under stages/ is a module two or more of them share,
# named for what it shares (bundle, device, repository, reference, wheelhouse, compare, validate, files, ...)
STAGES = {"export", "quantize", "bench", "package", "deploy", "fleet", "triton", "kserve", "debug", "doctor", "optimize",
          "train", "inspect"}
# a layer above the stages: optimize searches over what quantize builds and bench times, and packages the choice
COMPOSERS = {"optimize"}
# a shared module imports no stage either (else it hides a sideways import)


def _stage_of(path: Path, package: Path) -> str:
    rel = path.relative_to(package / "stages").parts
    return rel[0].removesuffix(".py")


def _sideways(package: Path = PACKAGE) -> set[tuple[str, str, str]]:
    found = set()
    for path in sorted((package / "stages").rglob("*.py")):
        stage = _stage_of(path, package)
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                parts = name.split(".")
                if parts[:2] == ["edgedl", "stages"] and len(parts) > 2:
                    other = parts[2]
                    if other != stage and other in STAGES and stage not in COMPOSERS:
                        found.add((stage, other, str(path.relative_to(package))))
    return found


def test_no_stage_imports_another_sideways():
    new = sorted(f"{path} imports edgedl.stages.{other}" for stage, other, path in _sideways())
    assert not new, f"move what they share into a module named for it (which imports no stage): {new}"


def test_the_sideways_finder_finds_them(tmp_path):
    """A stage importing another (from a sub-module, lazily inside a function) and a shared module importing a
    stage are found; a stage importing a shared module, or itself, and the composer are not."""
    files = {"stages/layerwise/offhost.py": "def f():\n    from edgedl.stages.bench.remote import remote_bench\n",
             "stages/torch_source.py": "import edgedl.stages.train\n",
             "stages/bench/remote.py": "from edgedl.stages.device.runtime import stage_runtime\n"
                                       "from edgedl.stages.bench import orchestrate\n",
             "stages/optimize/search.py": "from edgedl.stages.quantize import quantize\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert _sideways(tmp_path) == {("layerwise", "bench", "stages/layerwise/offhost.py"),
                                   ("torch_source", "train", "stages/torch_source.py")}

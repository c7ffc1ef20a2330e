"""The test tree itself: pytest imports test modules by basename (no packages here), so two test files with the
same name in different folders break collection of the whole suite; and a folder named like an installed
package (tests/triton) would shadow it for everything the suite imports."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_test_module_names_are_unique():
    seen = defaultdict(list)
    for path in TESTS.rglob("*.py"):
        if "__pycache__" not in path.parts:
            seen[path.name].append(path.relative_to(TESTS))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1 and name != "conftest.py"}
    assert not clashes, f"rename one of each: {clashes}"


def test_no_test_folder_shadows_an_installed_package():
    import sys
    from importlib.machinery import PathFinder

    elsewhere = [p for p in sys.path if p and not Path(p).resolve().is_relative_to(TESTS)]
    folders = [p.name for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))]
    shadowing = []
    for name in folders:
        spec = PathFinder.find_spec(name, elsewhere)
        if spec is not None and spec.origin is not None:  # a real module or package (not a namespace) of that name
            shadowing.append(f"{name} ({spec.origin})")
    # optional packages that libraries probe for by import: a folder of that name passes for them (torch then
    # fails on `triton.language`)
    probed = {"triton", "torchvision", "onnxscript", "tensorrt"}
    assert not probed & set(folders), f"rename the test folder(s) {sorted(probed & set(folders))}"
    assert not shadowing, f"these test folders share a name with an installed package: {shadowing}"

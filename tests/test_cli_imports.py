"""The device side never pays for torch: the runtime and the CLI entry point import with torch blocked."""

import subprocess
import sys
import textwrap

BLOCK = textwrap.dedent(
    """
    import sys
    class Block:
        BLOCKED = {"torch", "onnx", "onnxscript", "onnxslim", "sklearn", "safetensors"}
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked in this test)", name=name)
    sys.meta_path.insert(0, Block())
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60)


def test_runtime_imports_and_runs_without_torch(zoo):
    proc = _run(f"""
        import numpy as np
        import edgedl.runtime as rt
        r = rt.load({str(zoo["cnn"].onnx)!r})
        out = r.run(np.zeros((3, 1, 8, 8), np.float32))["logits"]
        assert out.shape == (3, 10)
        assert "torch" not in sys.modules and "onnx" not in sys.modules
        print("ok", r.metadata["recipe"])
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok cnn"


def test_cli_help_without_torch():
    proc = _run("""
        sys.argv = ["edgedl", "--help"]
        from edgedl.cli import main
        try:
            main()
        except SystemExit as e:
            assert e.code == 0, e.code
        assert "torch" not in sys.modules
    """)
    assert proc.returncode == 0, proc.stderr
    assert "export" in proc.stdout and "inspect" in proc.stdout


def test_missing_extra_is_a_clear_error(tmp_path):
    proc = _run(f"""
        sys.argv = ["edgedl", "export", "cnn", "-o", {str(tmp_path / "x.onnx")!r}]
        from edgedl.cli import main
        main()
    """)
    assert proc.returncode == 1
    assert "pip install 'edgedl[export]'" in proc.stderr and "Traceback" not in proc.stderr

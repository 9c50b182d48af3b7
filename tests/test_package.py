"""Packaging: console script, python -m plumb, version, and torch staying optional."""

import subprocess
import sys
import textwrap
from pathlib import Path

import plumb

# The console script installed beside this interpreter (the venv need not be activated).
PLUMB_SCRIPT = str(Path(sys.executable).with_name("plumb"))

BLOCK_TORCH = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None  # any 'import torch' now raises ImportError
    """
)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_version_from_console_script_and_module():
    for cmd in ([PLUMB_SCRIPT, "--version"], [sys.executable, "-m", "plumb", "--version"]):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"plumb {plumb.__version__}"


def test_import_and_numpy_histogram_without_torch():
    result = run_python(BLOCK_TORCH + textwrap.dedent(
        """
        import numpy as np
        import plumb
        counts = plumb.expert_histogram(np.array([[0, 1], [1, -1]], dtype=np.int32), 3)
        assert counts.tolist() == [1, 2, 0], counts
        assert sys.modules["torch"] is None
        print("ok")
        """
    ))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_import_does_not_load_torch():
    result = run_python("import sys, plumb; print('torch' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_unknown_command_is_a_usage_error():
    result = subprocess.run([PLUMB_SCRIPT, "no-such-command"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr

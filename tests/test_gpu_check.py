"""benchmarks/gpu_check.py is the one prepared script for a GPU; its smoke run (tiny model, CPU) must work here."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def test_gpu_check_smoke_run_on_cpu():
    result = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--dtype", "float32", "--tiny",
                             "--code", "1", "--prose", "0", "--max-new-tokens", "12"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| ngram |" in result.stdout and "| draft |" in result.stdout and "1/1" in result.stdout

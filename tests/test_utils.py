"""peftlab.utils: the CPU math warm-up that ``import peftlab`` runs. CPU only, about 10 s.

torch 2.13 on a multi-core x86 CPU can compute the first vectorised-math call of a worker thread
with errors near 1.5e-4 (see ``warm_up_cpu_math``), which once made an exact model comparison in
lecture 03 fail at random. Each run below is a fresh two-thread process, because the effect lives
only in a process's first call; without the warm-up about one run in four shows it, so eight runs
miss a missing warm-up with probability under 0.1.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("peftlab_utils", sys.argv[1])
utils = sys.modules["peftlab_utils"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(utils)  # without importing all of peftlab (and its warm-up)
utils.warm_up_cpu_math()
torch.manual_seed(0)
x = torch.rand(1, 57, 64) * 60  # the rotary embedding's shape in lecture 03
first, second, exact = x.cos(), x.cos(), x.double().cos()
print(f"{(first.double() - exact).abs().max().item():.3e} {(first - second).abs().max().item():.3e}")
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the effect needs a second CPU thread")
def test_first_vectorised_math_call_is_accurate_after_import():
    env = dict(os.environ, OMP_NUM_THREADS="2")
    for _ in range(8):
        out = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "peftlab" / "utils.py")],
                             capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        error, repeat = (float(v) for v in out.stdout.split())
        assert error < 1e-6 and repeat == 0.0, f"first cos call: max error {error}, differs from the second by {repeat}"

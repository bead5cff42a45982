"""glibc malloc settings: batch processes reuse freed tensors instead of faulting fresh pages in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from seg import cli, memory

REPO = Path(__file__).resolve().parent.parent

# A few U-Net training steps in a fresh process; prints the minor page faults per step.
STEPS = """
import resource, sys, torch
if sys.argv[1] == "reuse":
    from seg.memory import reuse_freed_memory
    assert reuse_freed_memory()
from seg.models import create
torch.set_num_threads(1)
torch.manual_seed(0)
model = create("unet", num_classes=9)
x = torch.randn(2, 3, 112, 144)
def step():
    model(x).sum().backward()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def _faults_per_step(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", STEPS, mode], env=_clean_env(), capture_output=True, text=True, check=True, timeout=120
    )
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(memory._libc() is None, reason="glibc's mallopt is not available")
def test_reusing_freed_memory_cuts_the_page_faults_of_a_training_step():
    default, reused = _faults_per_step("default"), _faults_per_step("reuse")
    assert reused < 0.6 * default, (default, reused)


@pytest.mark.skipif(memory._libc() is None, reason="glibc's mallopt is not available")
def test_a_malloc_setting_in_the_environment_wins():
    code = "from seg.memory import reuse_freed_memory; print(reuse_freed_memory())"
    given = subprocess.run(
        [sys.executable, "-c", code], env=_clean_env(MALLOC_TOP_PAD_="0"), capture_output=True, text=True, check=True
    )
    unset = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, check=True)
    assert given.stdout.split() == ["False"]
    assert unset.stdout.split() == ["True"]


def test_the_seglab_command_sets_it_before_its_work(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "reuse_freed_memory", lambda: calls.append("reuse") or True)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert calls == ["reuse"]


# Frees 160 MB of small heap blocks while the last one pins the heap's top; prints the resident MB
# after freeing, after a trim above a budget the process is under, and after one above a budget it is over.
TRIM = """
from seg.memory import resident_bytes, trim_above
blocks = [bytearray(32 << 10) for _ in range(5000)]
pin = blocks[-1]
del blocks[:-1]
mb = lambda: resident_bytes() / 2**20
freed = mb()
assert not trim_above(1 << 40)
kept = mb()
assert trim_above(0)
print(freed, kept, mb())
"""


def test_trim_above_hands_freed_heap_pages_back_only_past_the_budget():
    out = subprocess.run(
        [sys.executable, "-c", TRIM], env=_clean_env(), capture_output=True, text=True, check=True, timeout=120
    )
    freed, kept, trimmed = map(float, out.stdout.split())
    assert kept == pytest.approx(freed, abs=5)  # under the budget: nothing handed back
    assert trimmed < freed - 100  # over it: most of the 160 MB the heap kept went back to the OS
    assert memory.resident_bytes() > 0

"""The CPU's features that decide precision, and a measured answer where flags are not enough.

``cpu_features()`` reads the flags that matter for inference and training speed (AVX-512,
VNNI for int8, AVX512-BF16 and AMX for bf16). Flags alone do not say whether bf16 autocast
speeds training up: AMX does (tiles run bf16 matmuls several times faster), while
AVX512-BF16 alone may or may not beat fp32, depending on the chip and the kernels. So
``bf16_training_pays()`` answers yes for AMX, no without native bf16, and otherwise times a
few U-Net training steps in fp32 and in bf16 (interleaved) and caches the answer per CPU,
thread count and torch version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from seg.config import cache_dir
from seg.io import atomic_write_text

log = logging.getLogger("seg.hardware")

#: The flags (Linux /proc/cpuinfo names) that change which precision and backend is fastest.
RELEVANT_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
#: bf16 autocast must beat fp32 training steps by this factor to be chosen (below it, noise or a loss).
BF16_MIN_SPEEDUP = 1.1
#: Environment override for the training decision: "1"/"0" skips the measurement.
BF16_TRAINING_ENV = "SEG_BF16_TRAINING"


@dataclass(frozen=True)
class CpuFeatures:
    """What the CPU offers for fast inference and training."""

    model: str
    logical_cpus: int
    flags: tuple[str, ...]  # the RELEVANT_FLAGS present

    def has(self, flag: str) -> bool:
        return flag in self.flags

    @property
    def amx(self) -> bool:
        """AMX tiles with bf16 (Intel Sapphire Rapids and later): bf16 matmuls far above fp32."""
        return self.has("amx_bf16")

    @property
    def native_bf16(self) -> bool:
        """bf16 arithmetic in hardware (AVX512-BF16 or AMX); without it bf16 is emulated and slower."""
        return self.has("avx512_bf16") or self.has("amx_bf16")

    @property
    def int8_dot(self) -> bool:
        """int8 dot products (VNNI or AMX-INT8): what makes int8 inference fast."""
        return self.has("avx512_vnni") or self.has("avx_vnni") or self.has("amx_int8")

    def summary(self) -> str:
        """One line for benchmark headers and logs."""
        shown = ", ".join(self.flags) or "none of " + "/".join(RELEVANT_FLAGS)
        return f"{self.model} ({self.logical_cpus} logical CPUs; {shown})"


def _read_cpuinfo() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="ignore")
    except OSError:
        return platform.processor() or platform.machine(), set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model or platform.machine(), flags


_FEATURES: CpuFeatures | None = None


def cpu_features() -> CpuFeatures:
    """The CPU's model name and relevant flags (read once per process)."""
    global _FEATURES
    if _FEATURES is None:
        model, flags = _read_cpuinfo()
        _FEATURES = CpuFeatures(model, os.cpu_count() or 1, tuple(f for f in RELEVANT_FLAGS if f in flags))
    return _FEATURES


def runtime_versions() -> dict[str, str | None]:
    """Versions of torch and the optional serving packages (None when absent), for benches and records."""
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for name in ("torch", "onnxruntime", "openvino", "nncf"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


@dataclass(frozen=True)
class Bf16Measurement:
    """Median seconds per training step, fp32 vs bf16 autocast, measured interleaved on this CPU."""

    fp32_s: float
    bf16_s: float
    threads: int
    torch: str
    cpu: str

    @property
    def speedup(self) -> float:
        return self.fp32_s / self.bf16_s if self.bf16_s > 0 else 0.0

    @property
    def pays(self) -> bool:
        return self.speedup >= BF16_MIN_SPEEDUP


def measure_bf16_training(steps: int = 6, batch: int = 8, size: tuple[int, int] = (112, 144)) -> Bf16Measurement:
    """Time U-Net training steps (forward, backward, AdamW) in fp32 and bf16 autocast, interleaved.

    Two copies of one model, same data; the first two steps of each are warm-up. Interleaving
    makes a neighbour's load hit both precisions alike. It runs on a forked random state: the
    first run on a CPU measures in the middle of a seeded training run, which must not notice.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        return _measure_bf16_training(steps, batch, size)


def _measure_bf16_training(steps: int, batch: int, size: tuple[int, int]) -> Bf16Measurement:
    import torch
    import torch.nn.functional as F

    from seg.models import create
    from seg.optim import adamw

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, *size, generator=generator).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 9, (batch, *size), generator=generator)
    models, optimisers = {}, {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        models[precision] = create("unet", base_channels=16).to(memory_format=torch.channels_last).train()
        optimisers[precision] = adamw(models[precision].parameters(), 1e-3)

    def step(precision: str) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(models[precision](x).float(), y)
        optimisers[precision].zero_grad(set_to_none=True)
        loss.backward()
        optimisers[precision].step()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for i in range(steps + 2):
        for precision in ("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32"):
            elapsed = step(precision)
            if i >= 2:
                times[precision].append(elapsed)
    return Bf16Measurement(
        statistics.median(times["fp32"]),
        statistics.median(times["bf16"]),
        torch.get_num_threads(),
        torch.__version__,
        cpu_features().model,
    )


def _bf16_cache_path(threads: int, torch_version: str) -> Path:
    features = cpu_features()
    ident = json.dumps([features.model, features.flags, threads, torch_version])
    return cache_dir() / "hardware" / f"bf16-training-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.json"


def bf16_training_pays(measure: bool = True, refresh: bool = False) -> bool:
    """Whether bf16 autocast makes CPU training steps faster here (the engine's ``auto`` precision).

    AMX: yes. No native bf16: no. AVX512-BF16 without AMX: the cached result of
    ``measure_bf16_training`` (a few seconds, once per CPU, thread count and torch version);
    ``measure=False`` answers no instead of measuring. ``$SEG_BF16_TRAINING`` = 1 or 0 decides
    outright.
    """
    forced = os.environ.get(BF16_TRAINING_ENV, "").strip().lower()
    if forced in ("1", "true", "yes"):
        return True
    if forced in ("0", "false", "no"):
        return False
    features = cpu_features()
    if features.amx:
        return True
    if not features.native_bf16:
        return False
    import torch

    path = _bf16_cache_path(torch.get_num_threads(), torch.__version__)
    if not refresh and path.is_file():
        try:
            return bool(json.loads(path.read_text(encoding="utf-8"))["pays"])
        except (OSError, ValueError, KeyError):
            pass  # a torn record is measured again
    if not measure:
        return False
    result = measure_bf16_training()
    log.info("bf16 training step %.2fx fp32 on %s (%d threads)", result.speedup, result.cpu, result.threads)
    atomic_write_text(
        path,
        json.dumps(
            asdict(result)
            | {"speedup": result.speedup, "pays": result.pays, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")},
            indent=1,
        ),
    )
    return result.pays

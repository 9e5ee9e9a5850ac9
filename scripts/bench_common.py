"""Shared pieces of the benchmark scripts: percentiles, machine facts, peak RSS sampling, Markdown and plots."""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    """Mean, median, p90 and p99, as vllm bench serve reports them."""
    if not values:
        return {"mean": float("nan"), "p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
    return {"mean": statistics.fmean(values), "p50": pct(values, 50), "p90": pct(values, 90), "p99": pct(values, 99)}


def median_ci(values: list[float], level: float = 0.95, resamples: int = 4000, seed: int = 0) -> tuple[float, float]:
    """A percentile-bootstrap confidence interval for the median (seeded: the same values give the same interval)."""
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    tail = (1 - level) / 2 * 100
    return pct(medians, tail), pct(medians, 100 - tail)


def machine(device: str = "CPU") -> dict[str, Any]:
    """CPU model, cores, OpenVINO version, device."""
    import openvino as ov

    core = ov.Core()
    return {"cpu": core.get_property("CPU", "FULL_DEVICE_NAME"), "cores": os.cpu_count(),
            "openvino": ov.get_version(), "device": device,
            "device_name": core.get_property(device, "FULL_DEVICE_NAME") if device in core.available_devices else "",
            "python": platform.python_version(), "platform": platform.platform()}


class PeakRSS:
    """Samples a process's resident memory on a thread; ``peak`` in bytes."""

    def __init__(self, pid: int | None = None, interval: float = 0.1) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self.peak = self._proc.memory_info().rss
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.peak = max(self.peak, self._proc.memory_info().rss)
            except Exception:  # the process ended
                return


def write_outputs(result: dict[str, Any], out: Path, markdown: str) -> None:
    """``<out>.json`` and ``<out>.md`` side by side."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    out.with_suffix(".md").write_text(markdown, encoding="utf-8")


def machine_line(m: dict[str, Any]) -> str:
    """One line describing the machine, for Markdown headers."""
    return f"{m['cpu']}, {m['cores']} cores, OpenVINO {m['openvino'].split('-')[0]}, device {m['device']}"


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; floats to 3 significant decimals."""
    def cell(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_lines(path: Path, title: str, xlabel: str, ylabel: str, series: dict[str, tuple[list[float], list[float]]]
               ) -> None:
    """A PNG line plot (matplotlib, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_distributions(path: Path, title: str, xlabel: str, series: dict[str, list[float]]) -> None:
    """A PNG box plot of latency distributions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.boxplot(list(series.values()), tick_labels=list(series.keys()), vert=False)
    ax.set(title=title, xlabel=xlabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def timestamp() -> str:
    """When the run happened (UTC)."""
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())

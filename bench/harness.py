"""What every benchmark scenario shares: scale, processes, queues, the report.

Each scenario records rows (``record``) and, where it has them, latency
samples (``distribution``); ``report`` prints one table at the end of the run,
writes ``var/bench/results.json`` and draws ``var/bench/latency.png``.
Figures are reported, compared with the baseline measured in the same run and
with the target; nothing here asserts a timing (the machine is shared).
"""
from __future__ import annotations

import json
import os
import platform as stdlib_platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.processes import REPO, Role, wait_until

OUT = Path(os.environ.get("BENCH_OUT") or REPO / "var" / "bench")
QUICK = os.environ.get("BENCH_QUICK", "") == "1"


def scale(full: int, quick: int) -> int:
    """``full`` in a real run, ``quick`` in the smoke run (``--quick``)."""
    return quick if QUICK else full


@dataclass
class Row:
    scenario: str
    metric: str
    switchyard: float | None
    baseline: float | None
    unit: str
    target: str = ""
    passed: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.switchyard is None or self.baseline in (None, 0):
            return None
        return self.switchyard / self.baseline


ROWS: list[Row] = []
DISTRIBUTIONS: dict[str, list[float]] = {}


def record(scenario: str, metric: str, switchyard: float | None, baseline: float | None,
           unit: str, *, target: str = "", passed: bool | None = None, note: str = "") -> Row:
    row = Row(scenario, metric, switchyard, baseline, unit, target, passed, note)
    ROWS.append(row)
    print(f"[{scenario}] {metric}: switchyard={_fmt(switchyard)} baseline={_fmt(baseline)} "
          f"{unit} {note}", flush=True)
    return row


def distribution(name: str, values_ms: list[float]) -> None:
    DISTRIBUTIONS[name] = list(values_ms)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"
    return str(value)


def machine() -> dict:
    info = {"cores": os.cpu_count(), "python": stdlib_platform.python_version(),
            "system": f"{stdlib_platform.system()} {stdlib_platform.machine()}"}
    try:
        out = subprocess.run(["rabbitmqctl", "version"], capture_output=True, text=True,
                             timeout=20)
        info["rabbitmq"] = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["rabbitmq"] = "unknown"
    import celery
    info["celery"] = celery.__version__
    return info


def report() -> str:
    """Print the table, write JSON and the chart; return the table."""
    if not ROWS:
        return ""
    info = machine()
    header = ("scenario", "metric", "switchyard", "baseline", "ratio", "unit", "target",
              "result")
    lines = [header]
    for row in ROWS:
        result = {True: "pass", False: "FAIL", None: "-"}[row.passed]
        lines.append((row.scenario, row.metric, _fmt(row.switchyard), _fmt(row.baseline),
                      "-" if row.ratio is None else f"{row.ratio:.2f}x", row.unit,
                      row.target or "-", result))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    rule = "  ".join("-" * w for w in widths)
    text = [f"Switchyard benchmarks ({'quick smoke run' if QUICK else 'full run'}) on "
            f"{info['cores']} cores, RabbitMQ {info['rabbitmq']}, Celery {info['celery']}, "
            f"Python {info['python']}", rule]
    for i, line in enumerate(lines):
        text.append("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)))
        if i == 0:
            text.append(rule)
    notes = [f"  {row.scenario} {row.metric}: {row.note}" for row in ROWS if row.note]
    if notes:
        text += ["", "notes:", *notes]
    table = "\n".join(text)
    print("\n" + table, flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(
        {"quick": QUICK, "machine": info, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                time.gmtime()),
         "rows": [{**asdict(row), "ratio": row.ratio} for row in ROWS],
         "distributions": DISTRIBUTIONS}, indent=1, default=str))
    (OUT / "results.txt").write_text(table + "\n")
    _chart()
    return table


def _chart() -> None:
    if not DISTRIBUTIONS:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[tuple[str, list[float]]]] = {}
    for name, values in DISTRIBUTIONS.items():
        scenario, _, label = name.partition(" ")
        groups.setdefault(scenario, []).append((label, values))
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.5), squeeze=False)
    for ax, (scenario, series) in zip(axes[0], groups.items(), strict=True):
        for label, values in series:
            ordered = sorted(v for v in values if v == v)
            if not ordered:
                continue
            ys = [100 * (i + 1) / len(ordered) for i in range(len(ordered))]
            ax.step(ordered, ys, where="post", label=f"{label} (n={len(ordered)})")
        ax.set_xscale("log")
        ax.set_xlabel("milliseconds (log scale)")
        ax.set_ylabel("% of jobs at or below")
        ax.set_title(scenario)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Switchyard vs baseline: latency distributions (same run)")
    fig.tight_layout()
    fig.savefig(OUT / "latency.png", dpi=110)
    plt.close(fig)


def _group_sum_kb(role: Role, file: str, field: str) -> int:
    """``field`` (kB) of ``/proc/<pid>/<file>`` summed over the role's process group."""
    total = 0
    for path in Path("/proc").glob(f"[0-9]*/{file}"):
        try:
            if os.getpgid(int(path.parent.name)) != role.proc.pid:
                continue
            for line in path.read_text().splitlines():
                if line.startswith(field):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total


def peak_rss_mb(role: Role) -> float:
    """Peak resident memory (VmHWM) of a started role, summed over its process
    group (a worker's main process and its pool children), in MB. Pages the
    pool children share with the main process are counted once per process."""
    return _group_sum_kb(role, "status", "VmHWM:") / 1024


def pss_mb(role: Role) -> float:
    """Proportional set size of a started role's process group now, in MB: each
    shared page counted once over the processes sharing it (``smaps_rollup``)."""
    return _group_sum_kb(role, "smaps_rollup", "Pss:") / 1024


def wait_for(predicate, timeout: float, what: str, procs=(), interval: float = 0.05):
    """``tests.processes.wait_until`` with the processes to watch as a positional."""
    return wait_until(predicate, timeout, what, interval=interval, roles=list(procs))

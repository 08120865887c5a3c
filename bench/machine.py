"""What the machine did during a benchmark: CPU of processes, and time stolen by the host.

On a virtual machine the host may run other guests on "our" cores: that time is
counted as steal in /proc/stat. Latency figures taken while a tenth or more of
the machine was stolen say more about the host than about Tether, so the
benchmarks print it next to their figures.
"""

from __future__ import annotations

import os

TICKS = os.sysconf("SC_CLK_TCK")


def stat_cpu(path: str) -> float:
    """User + system CPU seconds from a /proc/<pid>[/task/<tid>]/stat file."""
    with open(path) as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def process_cpu(pid: int) -> float:
    return stat_cpu(f"/proc/{pid}/stat")


def machine_times() -> tuple[float, float]:
    """(all CPU time, stolen time) of the machine so far, in seconds over every core."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    return sum(fields[:8]) / TICKS, fields[7] / TICKS


def steal_percent(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Share of the machine's time the host took between two `machine_times()`."""
    total, stolen = after[0] - before[0], after[1] - before[1]
    return round(100 * stolen / total, 1) if total > 0 else 0.0

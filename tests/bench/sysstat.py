"""What the machine did and what it is: CPU counters from /proc, versions, commit."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            values = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)      # idle + iowait
    return sum(values) - idle, sum(values)


def busy_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float:
    """Share of all CPUs busy between two ``cpu_times()`` readings (NaN if unknown)."""
    if before is None or after is None or after[1] == before[1]:
        return float("nan")
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads) so far."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK      # utime, stime


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=cwd,
                              check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine(root: Path) -> dict[str, Any]:
    """The machine and the code the numbers came from."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except (OSError, ValueError):
        pass
    postconf = "/usr/sbin/postconf" if Path("/usr/sbin/postconf").exists() else "postconf"
    try:
        import Milter
        pymilter = getattr(Milter, "__version__", "")
    except ImportError:
        pymilter = ""
    dirty = bool(_run(["git", "status", "--porcelain", "--untracked-files=no"], root))
    try:
        import helpdesk_milter
        core = helpdesk_milter.build()      # the decision core benched: compiled or pure
    except ImportError:
        core = "?"
    return {
        "cpu": model, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(), "os": _os_name(), "python": sys.version.split()[0],
        "postfix": _run([postconf, "-d", "-h", "mail_version"]), "pymilter": pymilter,
        "commit": _run(["git", "rev-parse", "--short", "HEAD"], root)
        + ("+dirty" if dirty else ""),
        "load_average_at_start": load_average(), "core": core,
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()

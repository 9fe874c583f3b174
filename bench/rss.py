"""Peak-memory readings shared by the bench scripts (Linux /proc)."""

from pathlib import Path


def proc_status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0). ru_maxrss cannot be reset: the kernel also folds into it the
    peak of exited threads and, across exec, the parent's peak (subprocess uses vfork), so VmHWM is what we read."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False

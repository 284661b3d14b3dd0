"""The machine and the software versions that a benchmark record names."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import celery
import pydicom
import pynetdicom
import redis
import sqlalchemy


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024**2
    return 0.0


def _mount_of(path: Path) -> tuple[str, str]:
    """Return the (device, filesystem type) of the mount that contains ``path``."""
    best = ("", "unknown", "unknown")
    resolved = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount_point, fs_type = line.split()[:3]
        inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best[0]):
            best = (mount_point, device, fs_type)
    return best[1], best[2]


def disk_kind(path: Path) -> str:
    """Describe the disk under ``path``: filesystem, device and whether the kernel calls it rotational.

    A virtual disk (virtio) reports what the hypervisor presents to the
    guest, which need not match the host's drives.
    """
    device, fs_type = _mount_of(path)
    status = os.stat(path)
    block = Path(f"/sys/dev/block/{os.major(status.st_dev)}:{os.minor(status.st_dev)}")
    try:
        link = os.readlink(block)
        rotational = (block / "queue" / "rotational").read_text().strip()
    except OSError:
        return f"{fs_type} on {device}"
    bus = "virtio, " if "/virtio" in link else ""
    kind = "rotational" if rotational == "1" else "non-rotational"
    return f"{fs_type} on {device} ({bus}{kind} as reported by the kernel)"


def describe_machine(work_dir: Path) -> dict[str, str]:
    virtual = "yes" if "hypervisor" in Path("/proc/cpuinfo").read_text() else "no"
    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count() or 1),
        "memory": f"{memory_gib():.1f} GiB",
        "disk": disk_kind(work_dir),
        "virtual machine": virtual,
        "kernel": platform.release(),
    }


def library_versions() -> dict[str, str]:
    """Return the versions of Python and of the libraries that the contenders run on."""
    return {
        "Python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "SQLAlchemy": sqlalchemy.__version__,
        "Celery": celery.__version__,
        "redis-py": redis.__version__,
    }

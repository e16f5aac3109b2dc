"""What travels to a lent GPU machine (the `device` tool): the working tree plus the `carry` paths, 64 MiB
in all. Shared by the pack scripts of this folder (README.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from llnm.config import REPO_ROOT

LIMIT = 64 * 2**20  # the device tool's limit on what travels


def tracked_bytes() -> int:
    """Bytes of the tracked files and the untracked files git does not ignore (what always travels)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            check=True, capture_output=True).stdout.split(b"\0")
    return sum((REPO_ROOT / name.decode()).stat().st_size for name in listed
               if name and (REPO_ROOT / name.decode()).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def exclude_pack() -> None:
    """`.device/` stays out of git (and out of what always travels): .git/info/exclude names it."""
    exclude = REPO_ROOT / ".git" / "info" / "exclude"
    lines = exclude.read_text().splitlines() if exclude.is_file() else []
    if "/.device/" not in lines:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        exclude.write_text("\n".join(lines + ["/.device/"]) + "\n")


def download_wheels(names: tuple[str, ...], folder: Path) -> None:
    """The wheels of these packages, at the versions installed here, from this machine's package index."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "-d", str(folder), *[f"{name}=={version(name)}" for name in names]], check=True)


def fits(sizes: dict[str, int], carry: list[str], report: dict | None = None) -> bool:
    """Print the sizes (with the tree's) and the carry list; False when the sum exceeds the limit."""
    sizes = {"tree": tracked_bytes(), **sizes}
    total = sum(sizes.values())
    print(json.dumps({**(report or {}), **{k: f"{v / 2**20:.1f} MiB" for k, v in sizes.items()},
                      "total": f"{total / 2**20:.1f} MiB", "limit": "64 MiB", "carry": carry}, indent=2))
    return total <= LIMIT

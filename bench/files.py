"""Benchmark: the agent's file-tree backup path against plain `tar | zstd`, in one run.

The tree (made once, in a temporary folder): 96 files of 4 MiB of random bytes (poorly
compressible, like scans), 4,000 small text files in 40 folders, a few hard links and a 256 MiB
sparse file with 8 MiB of data. Median of --runs, each to /dev/null:
  plain   tar --format=posix --sparse --xattrs --acls -cf - . | zstd -T0 -3
  listed  the same, then `sha256sum` of every file: what it takes by hand to have the archive
          and a file list with checksums, as pulih does
  agent   the pulih agent's "dump" (its own walk, GNU tar with the same options, the file
          list with a SHA-256 of every file made from the archive in the same pass, zstd -T0 -3)

Prints seconds and the ratios agent/plain and agent/listed. Run: make bench-files (or python bench/files.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.agentkit import request_line  # the request as this checkout's controller sends it

AGENT = Path(__file__).resolve().parent.parent / "roles" / "pulih_common" / "files" / "pulih_agent.pyz"


def make_tree(root: Path) -> int:
    for n in range(96):
        (root / f"scan-{n:03d}.pdf").write_bytes(os.urandom(4 << 20))
    for folder in range(40):
        sub = root / "surat" / f"{folder:02d}"
        sub.mkdir(parents=True)
        for n in range(100):
            (sub / f"surat-{n:03d}.txt").write_text(f"Surat nomor {folder}/{n}\n" * 40)
    for n in range(5):
        os.link(root / f"scan-{n:03d}.pdf", root / f"salinan-{n}.pdf")
    with (root / "disk.img").open("wb") as sparse:
        for offset in range(0, 256 << 20, 32 << 20):
            sparse.seek(offset)
            sparse.write(os.urandom(1 << 20))
        sparse.truncate(256 << 20)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def timed(argv: list[str], stdin: bytes | None = None, cwd: Path | None = None) -> float:
    started = time.monotonic()
    subprocess.run(
        argv, input=stdin, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
    )
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pulih-bench-files-", dir="/var/tmp"))
    try:
        size = make_tree(root)
        plain = "set -o pipefail; tar --format=posix --sparse --xattrs --acls -cf - . | zstd -q -T0 -3 -c"
        item = {"engine": "files", "path": str(root), "zstd_level": 3}
        request = request_line({"mode": "dump", "items": [item]})
        listed = plain + " > /dev/null && find . -type f -print0 | xargs -0 sha256sum"
        results: dict[str, list[float]] = {"plain": [], "listed": [], "agent": []}
        for _ in range(args.runs):
            results["plain"].append(timed(["bash", "-c", plain], cwd=root))
            results["listed"].append(timed(["bash", "-c", listed], cwd=root))
            results["agent"].append(timed(["python3", str(AGENT)], stdin=request))
        medians = {k: statistics.median(v) for k, v in results.items()}
        print(f"tree: {size / (1 << 20):.0f} MiB apparent, {sum(1 for _ in root.rglob('*'))} entries")
        print(f"{'plain tar | zstd -T0':<34} {medians['plain']:7.2f} s")
        print(f"{'the same, then sha256sum of each':<34} {medians['listed']:7.2f} s")
        print(f"{'pulih agent dump':<34} {medians['agent']:7.2f} s")
        for base in ("plain", "listed"):
            print(f"ratio agent/{base}: {medians['agent'] / medians[base]:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

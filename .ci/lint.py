"""ruff and mypy with ceilings that only go down (pyproject.toml, [tool.dslo.lint]).

Run by .ci/run after the tests: fails when either finds more than its ceiling, and says so when
a count fell below its ceiling (lower the ceiling in the same commit, so it never creeps back).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def count(cmd: list[str], pattern: str) -> tuple[int, str]:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if proc.returncode not in (0, 1):
        sys.exit(f"{' '.join(cmd)} could not run (exit {proc.returncode}):\n{out}")
    return len(re.findall(pattern, out, flags=re.MULTILINE)), out


def main() -> int:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dslo"]["lint"]
    checks = {
        "ruff": ([sys.executable, "-m", "ruff", "check", "--output-format", "concise", *cfg["ruff_paths"]],
                 r"^\S+:\d+:\d+: [A-Z]+\d+ "),
        "mypy": ([sys.executable, "-m", "mypy", *cfg["mypy_paths"]], r"^\S+:\d+: error: "),
    }
    failed = False
    for name, (cmd, pattern) in checks.items():
        n, out = count(cmd, pattern)
        ceiling = int(cfg[f"{name}_ceiling"])
        if n > ceiling:
            print(out)
            print(f"{name}: {n} findings, above the ceiling {ceiling} in pyproject.toml: fix the new ones")
            failed = True
        else:
            lower = f" (lower the ceiling to {n})" if n < ceiling else ""
            print(f"{name}: {n} findings, ceiling {ceiling}{lower}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

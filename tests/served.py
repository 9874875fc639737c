"""A server in a subprocess for the tests that drive real parts (the app in Chromium, Label Studio
and dslo's backend): a free loopback port, this checkout's dslo on the path, and start → wait
until it answers → stop."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkout_env(**extra: str) -> dict[str, str]:
    """This process's environment with this checkout's dslo first on ``PYTHONPATH`` (not another
    install) and ``extra`` set."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([SRC] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


@contextlib.contextmanager
def serving(cmd: list[str], env: dict, log: Path, url: str, what: str, start_timeout_s: float) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` (output to ``log``) until ``url`` answers 200, yield the process, stop it at the
    end. A process that exits first, or does not answer in ``start_timeout_s``, raises with the end
    of its log."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + start_timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
                try:
                    with urllib.request.urlopen(url, timeout=5) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{what} did not answer in {start_timeout_s} s:\n{log.read_text()[-4000:]}")
                time.sleep(0.5)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

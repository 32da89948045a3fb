"""Run the fuzz targets (atheris + libFuzzer) for a fixed budget each; exit 1 on any finding.

Run: ``make fuzz`` (``FUZZ_SECONDS=60`` per target by default), or
``.venv/bin/python -m tests.fuzz.run [--seconds N] [mime] [addresses] [config]``.

Each target starts from the seeds of :mod:`tests.fuzz.seeds` and runs in its own process with
libFuzzer's limits: ``-timeout`` seconds per input (an input that takes longer is a finding:
the parsers are linear, and inputs are at most ``-max_len`` bytes), ``-rss_limit_mb``, and
``-max_total_time``. A crash, a timeout or an out-of-memory leaves the input in
``benchmark-results/fuzz/<target>/`` for a regression test; the summary line of each target
gives its executions and result.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.fuzz.seeds import ROOT, SEEDS, write_seeds

TARGETS = tuple(SEEDS)
#: Seconds one input may take: a linear parser needs milliseconds for max_len bytes.
INPUT_TIMEOUT = 10
MAX_LEN = {"mime": 64 * 1024, "addresses": 8 * 1024, "config": 16 * 1024}
RSS_LIMIT_MB = 2048
ARTIFACTS = ROOT / "benchmark-results" / "fuzz"


@dataclass(frozen=True)
class Outcome:
    """What one fuzzing run did."""

    target: str
    returncode: int
    executions: int
    seconds: float
    seeds: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def summary(self) -> str:
        result = "no crash, no timeout" if self.ok else f"FINDING (exit {self.returncode})"
        return (
            f"{self.target}: {self.executions} executions in {self.seconds:.0f}s from "
            f"{self.seeds} seeds: {result}"
        )


def run_target(target: str, seconds: int, workdir: Path, artifacts: Path | None = None) -> Outcome:
    """Fuzz ``target`` for ``seconds`` seconds with its seeds copied into ``workdir``; a
    finding's input goes to ``artifacts`` (default ``benchmark-results/fuzz/<target>``)."""
    seeds = write_seeds(target, workdir / "seeds")
    corpus = workdir / "corpus"
    corpus.mkdir(exist_ok=True)
    artifacts = artifacts or ARTIFACTS / target
    artifacts.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        str(Path(__file__).with_name(f"fuzz_{target}.py")),
        str(corpus),  # libFuzzer writes new inputs into the first directory
        str(workdir / "seeds"),
        f"-max_total_time={seconds}",
        f"-timeout={INPUT_TIMEOUT}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-max_len={MAX_LEN[target]}",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds + 120
    )
    output = done.stdout + done.stderr
    return Outcome(
        target, done.returncode, _executions(output), time.monotonic() - started, seeds, output
    )


def _executions(output: str) -> int:
    found = re.search(r"stat::number_of_executed_units:\s*(\d+)", output)
    return int(found.group(1)) if found else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help=f"some of {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", 60)))
    args = parser.parse_args(argv)
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {', '.join(TARGETS)}")
    failed = False
    for target in args.targets or TARGETS:
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as tmp:
            outcome = run_target(target, args.seconds, Path(tmp))
        print(outcome.summary(), flush=True)
        if not outcome.ok:
            failed = True
            print(outcome.output[-4000:], flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

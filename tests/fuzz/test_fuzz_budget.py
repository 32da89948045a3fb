"""The fuzz targets run for a short fixed budget in the normal test suite (``make fuzz`` runs
them for longer): any crash, input slower than the per-input timeout, or out-of-memory fails.

The three targets run at the same time (one process each) for :data:`BUDGET` seconds, so the
test takes about that long plus their start-up and the seed runs.
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.fuzz.run import TARGETS, Outcome, run_target
from tests.servers.common import require

BUDGET = 10


def test_each_fuzz_target_survives_a_short_budget_without_a_crash_or_a_timeout(
    tmp_path: Path,
) -> None:
    require(importlib.util.find_spec("atheris") is not None, "atheris is not installed")

    def fuzz(target: str) -> Outcome:
        workdir = tmp_path / target
        workdir.mkdir()
        return run_target(target, BUDGET, workdir, artifacts=workdir / "findings")

    with ThreadPoolExecutor(len(TARGETS)) as pool:
        outcomes = list(pool.map(fuzz, TARGETS))

    for outcome in outcomes:
        print(outcome.summary())
        assert outcome.ok, f"{outcome.summary()}\n{outcome.output[-3000:]}"
        assert outcome.executions > outcome.seeds, outcome.summary()

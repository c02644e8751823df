"""What a run measures: a Metric (values per side and repetition, their median), and the
steps of a row group (Phase) run in a side's context (Ctx)."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .sides import Side


@dataclass
class Metric:
    key: str
    group: str
    row: str
    label: str
    unit: str
    better: str  # "higher" | "lower"
    reps: dict = field(default_factory=dict)     # side -> [values]
    extra: dict = field(default_factory=dict)    # side -> [dict per rep]
    errors: dict = field(default_factory=dict)   # side -> error text

    def median(self, side):
        v = self.reps.get(side)
        return statistics.median(v) if v else None


@dataclass
class Ctx:
    side: Side
    data: Path
    failed: str | None = None


@dataclass
class Phase:
    """One measured step of a row group: R repetitions, each running every side once, in order.
    measure(ctx, rep) returns {metric key: value}, optionally "_extra": details of the run.
    A counted phase (counted = key in Bench.counts) runs once per COUNTED_SIDES side with the
    telemetry attached and records the measured mount's counter deltas instead of metrics."""
    metrics: list[Metric]
    measure: Callable[[Ctx, int], dict]
    before_each: Callable[[Ctx], None] | None = None
    side_prepare: Callable[[Ctx], None] | None = None
    counted: str | None = None


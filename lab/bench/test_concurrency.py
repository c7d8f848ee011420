"""The concurrency bench's CLI on a tiny run: its JSON rows, the roofline and the plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lab.bench.concurrency import crossover

KEYS = {"method", "concurrency", "aggregate_tps", "per_request_tps", "ttfc_p50_s", "ttfc_p99_s", "score", "failed",
        "roofline_fraction"}


def test_cli_json_shape_on_a_tiny_run(tmp_path: Path) -> None:
    plot = tmp_path / "tps.png"
    out = subprocess.run([sys.executable, "-m", "lab.bench", "text", "--concurrency", "1,2", "--problems", "4",
                          "--rounds", "1", "--seed", "5", "--json", "--concurrency-plot", str(plot)],
                         capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout)
    rows = result["rows"]
    assert {(r["method"], r["concurrency"]) for r in rows} == {
        (m, c) for m in ("d2f", "d2f-adaptive", "fast-dllm", "ar") for c in (1, 2)}
    for r in rows:
        assert set(r) >= KEYS and r["failed"] == 0 and r["requests"] == 4
        assert r["aggregate_tps"] > 0 and 0 < r["roofline_fraction"] < 1.5 and 0 <= r["score"] <= 1
        assert r["ttfc_p50_s"] <= r["ttfc_p99_s"] and r["kv_bytes_per_seq"] > 0
    assert result["roofline"]["forward_us_per_token"] > 0 and result["machine"]["threads"] == 1
    ceilings = {(r["method"], r["concurrency"]): r["step_ceiling"] for r in rows}
    assert ceilings["ar", 1] == 1.0 and ceilings["ar", 2] > 0  # AR's one-token decode steps, paired by round
    assert ceilings["d2f", 2] is None  # a D2F window is never one token: no clean decode step to pair
    assert plot.stat().st_size > 1000


def test_crossover_is_the_first_level_where_ar_passes_d2f() -> None:
    rows = [{"method": m, "concurrency": c, "aggregate_tps": t}
            for m, c, t in (("d2f", 1, 10), ("ar", 1, 3), ("d2f", 8, 20), ("ar", 8, 25), ("d2f", 4, 15), ("ar", 4, 12))]
    assert crossover(rows) == 8
    assert crossover([r for r in rows if r["concurrency"] < 8]) is None

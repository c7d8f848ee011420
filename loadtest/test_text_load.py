"""loadtest.text's figures from its records (the run itself is a benchmark, not a test)."""

from __future__ import annotations

from loadtest.text import Level, format_table


def test_level_rows_and_table() -> None:
    one = Level(1, calls=2, tokens=100, wall_s=2.0, per_request_tps=[40.0, 60.0], ttfc_s=[0.1, 0.3],
                e2e_s=[1.0, 1.0], correct=2.0)
    four = Level(4, calls=5, tokens=300, wall_s=2.0, per_request_tps=[30.0] * 4, ttfc_s=[0.2] * 4, e2e_s=[1.5] * 4,
                 correct=3.0)
    four.errors["UNAVAILABLE"] += 1
    base = one.row(None)
    assert (base["aggregate_tps"], base["per_request_tps"], base["score"], base["failed"]) == (50.0, 50.0, 1.0, 0)
    r = four.row(50.0)
    assert r["vs_concurrency_1"] == 3.0 and r["failed"] == 1 and r["score"] == 0.75  # 3 right of 4 answered
    assert r["errors"] == {"UNAVAILABLE": 1} and r["ttfc_p99_s"] == 0.2
    table = format_table({"rows": [{**base, "vs_concurrency_1": 1.0}, r], "problems": 2, "seed": 1, "rounds": 1,
                          "loadavg": (0.5, 0, 0)})
    assert "3.00" in table and table.count("\n") == 3

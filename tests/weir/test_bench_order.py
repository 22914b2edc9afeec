"""The order of a ``weir bench`` round."""

from __future__ import annotations

from weir.bench import BenchConfig, round_order, systems


def test_each_system_runs_first_once_in_as_many_rounds_as_there_are_systems():
    cfg = BenchConfig(tracing_off=True, variants={"off": {"WEIR_RETRY_POLL_MS": "0"}})
    names = systems(cfg)
    orders = [round_order(cfg, r) for r in range(1, len(names) + 1)]
    assert orders[0] == names == ["weir", "chain", "weir-notrace", "off"]
    assert [order[0] for order in orders] == names
    assert all(sorted(order) == sorted(names) for order in orders)
    assert round_order(cfg, len(names) + 1) == names

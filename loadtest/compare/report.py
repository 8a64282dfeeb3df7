"""What ``loadtest.compare`` reports: the graph's ratios to the engine (b/a) and to the seed (b/c),
the round with the median b/a, the targets, and a table per shape."""

from __future__ import annotations

from typing import Any, Optional

from loadtest.metrics import median_index

TARGETS = {
    "throughput_ratio_vs_engine_c16": (">=", 0.95),
    "throughput_ratio_vs_engine_c64": (">=", 0.95),
    "ttft_overhead_ms_p50_c1": ("<=", 10.0),
    "ttft_ratio_vs_engine_c16": ("<=", 1.5),
    "throughput_ratio_vs_seed_c16": (">=", 5.0),
}
"""The graph against the engine (b/a) and the seed (b/c); a level that was not measured is not judged."""


def _get(systems, name, c, *path):
    v = systems.get(name, {}).get("levels", {}).get(str(c))
    for p in path:
        if v is None:
            return None
        v = v.get(p)
    return v


def ratios(systems: dict[str, Any], levels: list[int]) -> dict[str, Any]:
    lo, hi = min(levels), max(levels)

    def div(x, y):
        return x / y if x is not None and y else None

    def sub(x, y):
        return x - y if x is not None and y is not None else None

    tput = lambda s, c: _get(systems, s, c, "output_throughput")  # noqa: E731
    ttft = lambda s, c: _get(systems, s, c, "ttft_ms", "p50")  # noqa: E731
    out = {}
    for c in sorted({*levels, 1, 16, 64}):
        out[f"throughput_ratio_vs_engine_c{c}"] = div(tput("serve", c), tput("engine", c))
        out[f"throughput_ratio_vs_seed_c{c}"] = div(tput("serve", c), tput("seed", c))
        out[f"seed_ratio_vs_engine_c{c}"] = div(tput("seed", c), tput("engine", c))
        out[f"ttft_overhead_ms_p50_c{c}"] = sub(ttft("serve", c), ttft("engine", c))
        out[f"ttft_ratio_vs_engine_c{c}"] = div(ttft("serve", c), ttft("engine", c))
    out["levels_used"] = {"low": lo, "high": hi}
    return out


def median_round(rounds: list[dict[str, Any]], levels: list[int]) -> int:
    """Index of the round with the median b/a throughput at the highest level (``median_index``)."""
    key = f"throughput_ratio_vs_engine_c{max(levels)}"
    return median_index([ratios(rs, levels)[key] for rs in rounds])


def check_targets(r: dict[str, Any]) -> dict[str, Any]:
    """Each target with its value and ``ok`` (None where its level was not measured)."""
    res = {}
    for k, (op, bound) in TARGETS.items():
        v = r.get(k)
        res[k] = {"target": f"{op} {bound}", "value": v,
                  "ok": None if v is None else (v >= bound if op == ">=" else v <= bound)}
    return res


def table(systems: dict[str, Any], levels: list[int]) -> str:
    """One line per system and level; the graph's lines end with where its TTFT p50 went
    (``loadtest.metrics.ttft_breakdown``: HTTP / Ray hops and post-processing / model stage)."""
    head = f"{'system':<8}{'c':>4}{'ok':>5}{'tok/s':>10}{'req/s':>8}{'TTFT p50':>10}{'TTFT p99':>10}" \
           f"{'TPOT p50':>10}{'ITL p50':>9}{'E2EL p50':>10}  TTFT p50 http / graph / model"
    lines = [head, "-" * len(head)]
    for name in ("engine", "serve", "seed"):
        for c in levels:
            s = systems.get(name, {}).get("levels", {}).get(str(c))
            if not s:
                continue
            b = s.get("ttft_breakdown_ms")
            split = "" if not b else f"  {b['http']['p50']:.1f} / {b['graph']['p50']:.1f} / {b['model']['p50']:.1f}"
            lines.append(f"{name:<8}{c:>4}{s['completed']:>5}{s['output_throughput']:>10.1f}"
                         f"{s['request_throughput']:>8.2f}{s['ttft_ms']['p50']:>10.1f}{s['ttft_ms']['p99']:>10.1f}"
                         f"{s['tpot_ms']['p50']:>10.2f}{s['itl_ms']['p50']:>9.2f}{s['e2el_ms']['p50']:>10.0f}{split}")
    return "\n".join(lines)


HEADLINE = ("throughput_ratio_vs_engine_c16", "throughput_ratio_vs_engine_c64", "ttft_overhead_ms_p50_c1",
            "ttft_ratio_vs_engine_c16", "throughput_ratio_vs_seed_c16", "seed_ratio_vs_engine_c16")


def shape_report(rounds: list[dict[str, Any]], meta: dict[str, dict[str, Any]], levels: list[int],
                 seed: Optional[dict[str, Any]]) -> dict[str, Any]:
    """One shape's figures: those of the round with the median b/a at the highest level, and every round's."""
    picked = median_round(rounds, levels)
    systems = {name: {**meta.get(name, {}), **sys_} for name, sys_ in rounds[picked].items()}
    if seed is not None:
        systems["seed"] = seed
    r = ratios(systems, levels)
    return {
        **{k: r[k] for k in HEADLINE},
        "ratios": r,
        "targets": check_targets(r),
        "rounds": [{"round": i + 1, "picked": i == picked, "ratios": ratios(rs, levels),
                    "output_throughput": {name: {c: v["output_throughput"] for c, v in sys_["levels"].items()}
                                          for name, sys_ in rs.items()},
                    "ttft_p50_ms": {name: {c: v["ttft_ms"]["p50"] for c, v in sys_["levels"].items()}
                                    for name, sys_ in rs.items()}} for i, rs in enumerate(rounds)],
        "systems": systems,
    }

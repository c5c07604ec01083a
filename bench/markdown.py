"""REPORT.md, rendered from report.json's figures only."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from typing import Any

Row = dict[str, Any]
PEER_NAMES = ("litserve", "bentoml", "triton")  # bench/peer_launch.py PEERS, in the report's order
Column = tuple[str, Callable[[str, Row], Any]]  # header, (key, item) -> cell


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.1f}" if abs(v) >= 100 else f"{v:.2f}"
    return str(v)


def percent(v: float) -> str:
    """A fraction as a percentage; below 1%, with two decimals (0.05%, not 0.1%)."""
    return f"{v:.2%}" if 0 < v < 0.01 else f"{v:.1%}"


def _maybe_percent(v: float | None) -> str:
    return "–" if v is None else percent(v)


def spread(s: dict[str, Any]) -> str:
    """A mean ± std over seeds (bench/accuracy.py) as percentages."""
    return f"{s['mean']:.2%} ± {s['std']:.2%}"


def table(columns: list[Column], items: Iterable[tuple[str, Row]]) -> list[str]:
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(get(k, v)) for _, get in columns) + " |" for k, v in items]
    return [*lines, ""]


def _field(*path: str) -> Callable[[str, Row], Any]:
    def get(_: str, item: Row) -> Any:
        value: Any = item
        for p in path:
            value = value.get(p) if isinstance(value, dict) else None
        return value

    return get


def _key(prefix: str = "") -> Callable[[str, Row], Any]:
    return lambda k, _: k.removeprefix(prefix)


def _phases(section: dict[str, Any], prefix: str) -> list[tuple[str, Row]]:
    """The c1/c8/c64 or x1/x2/x4 entries of a section, in order."""
    return [(k, v) for k, v in section.items() if k.startswith(prefix) and k[1:].isdigit()]


def headline(r: dict[str, Any]) -> list[str]:
    lines = ["## Headlines", ""]
    for ds, levels in r["levels"].items():
        lv, full = levels["1/8"], levels["full"]
        lines.append(
            f"- {ds}: the 1/8 level runs {lv['speedup_b128']:.1f}x faster than full at batch 128 "
            f"({lv['speedup_b1']:.1f}x at batch 1), test accuracy {lv['accuracy']:.4f} against "
            f"{full['accuracy']:.4f} for full (a drop of {lv['accuracy_drop'] * 100:.1f} points); in random "
            f"module order {_fmt(lv['accuracy_random_order'])}, after plain training "
            f"{_fmt(lv['accuracy_plain_training'])}."
        )
    for name, o in r["overhead"].items():
        c64 = o["c64"]
        lines.append(
            f"- overhead, {name} model ({o['model']}): at concurrency 64 the server answers "
            f"{c64['server']['throughput_rps']:.0f} requests/s, {c64['throughput_ratio']:.0%} of raw "
            f"onnxruntime on the same batches ({c64['raw_onnxruntime']['throughput_rps']:.0f} samples/s)."
        )
    for name, p in r["peers"].items():
        if isinstance(p, dict) and p.get("status") == "ok":
            c64 = p["c64"]
            lines.append(
                f"- peers: at concurrency 64 circuitserve answers {c64['throughput_ratio']:.2f}x the "
                f"requests of {name} ({c64['circuitserve_throughput_rps']:.0f} vs "
                f"{c64['throughput_rps']:.0f}/s), p99 {c64['circuitserve_p99_ms']:.0f} vs "
                f"{c64['p99_ms']:.0f} ms."
            )
    s = r["scale_out"]
    if s["status"] == "ok":
        lines.append(
            f"- scale-out, {s['replicas']} instances each: circuitserve answers {s['throughput_ratio']:.2f}x "
            f"the requests of {s['peer']} ({s['circuitserve_throughput_rps']:.0f} vs "
            f"{s['throughput_rps']:.0f}/s), p99 {s['circuitserve_p99_ms']:.0f} vs {s['p99_ms']:.0f} ms."
        )
    o = r["overload"]
    for factor, phase in _phases(o, "x"):
        a, f = phase["adaptive"], phase["full_only"]
        lines.append(
            f"- overload {factor}: {percent(a['within_budget'])} answered within {o['budget_ms']:.0f} ms "
            f"with expected accuracy {_fmt(a['expected_accuracy'])}, server time within budget in "
            f"{_maybe_percent(a['server_met_budget'])} of answers, {percent(a.get('shed', 0.0))} shed; "
            f"pinned to full: {percent(f['within_budget'])}."
        )
    return [*lines, ""]


def levels(r: dict[str, Any]) -> list[str]:
    lines = ["## 1. Levels: accuracy against compute", ""]
    columns: list[Column] = [
        ("level", _key()),
        ("modules", _field("modules")),
        ("accuracy", _field("accuracy")),
        ("random order", _field("accuracy_random_order")),
        ("plain training", _field("accuracy_plain_training")),
        ("ms @1", _field("latency_ms_b1")),
        ("ms @128", _field("latency_ms_b128")),
        ("speedup @1", _field("speedup_b1")),
        ("speedup @128", _field("speedup_b128")),
    ]
    for ds, levels_table in r["levels"].items():
        m = r["models"][ds]
        lines += [
            f"**{ds}**: {m['modules']} modules, preset {m['preset']}, {m['epochs']} epochs, onnxruntime with "
            f"{m['onnxruntime_threads']} threads. Random order: {m['random_order_source']}. Plain "
            f"training: {m['plain_training_source']}.",
            "",
            *table(columns, levels_table.items()),
        ]
    return lines


BASELINE_NAMES = {
    "svc": "SVC(gamma=0.001)",
    "mlp": "MLPClassifier((256,))",
    "logistic": "LogisticRegression",
}


def accuracy(r: dict[str, Any]) -> list[str]:
    lines = [
        "## 1b. Accuracy over seeds, beside scikit-learn",
        "",
        "Each seed is its own split and initialisation (`load_dataset(name, seed)`); test accuracy as mean "
        "± sample std over the seeds. The baselines are fitted on train+val and scored on the same test "
        "splits, on raw inputs. Random order: the same checkpoints, modules kept in a random order.",
        "",
    ]
    for ds, a in r["accuracy"].items():
        seeds = ", ".join(str(s) for s in a["seeds"])
        rows = [(f"NAC {lv}", s, a["random_order"][lv]) for lv, s in a["levels"].items()]
        rows += [(BASELINE_NAMES[n], s, None) for n, s in a["baselines"].items()]
        lines += [
            f"**{ds}**: seeds {seeds}, {a['test_examples']} test examples (one example = "
            f"{100 / a['test_examples']:.2f} points). Training took {a['train_seconds']} s per seed, the "
            f"baselines {a['baseline_seconds']} s in all.",
            "",
            "| model | test accuracy | per seed | random order |",
            "|---|---|---|---|",
            *(
                f"| {name} | {spread(s)} | {', '.join(f'{v:.2%}' for v in s['per_seed'])} | "
                f"{spread(rnd) if rnd else '–'} |"
                for name, s, rnd in rows
            ),
            "",
        ]
    return lines


def overhead(r: dict[str, Any]) -> list[str]:
    lines = ["## 2. Serving overhead: circuitserve against raw onnxruntime", ""]
    columns: list[Column] = [
        ("concurrency", _key("c")),
        ("server req/s", _field("server", "throughput_rps")),
        ("p50 ms", _field("server", "p50_ms")),
        ("p99 ms", _field("server", "p99_ms")),
        ("mean batch", _field("mean_batch_size")),
        ("raw ORT samples/s", _field("raw_onnxruntime", "throughput_rps")),
        ("raw p50 ms", _field("raw_onnxruntime", "p50_ms")),
        ("raw p99 ms", _field("raw_onnxruntime", "p99_ms")),
        ("ratio", _field("throughput_ratio")),
        ("level busy", _field("compute_busy_fraction")),
        ("in-server ORT samples/s", _field("in_server_onnxruntime_rps")),
        ("raw, all cores", _field("raw_onnxruntime_all_cores", "throughput_rps")),
        ("server cores", _field("server", "server_cores")),
        ("generator cores", _field("server", "client_cores")),
    ]
    for name, o in r["overhead"].items():
        lines += [
            f"**{name} model**: {o['model']}, level {o['level']}, {o['intra_op_threads']} onnxruntime "
            f"thread(s) in the server and in raw onnxruntime (all cores: {o['all_cores_threads']}), max "
            f"batch {o['max_batch_size']}, max queue delay {o['max_queue_delay_ms']} ms. Raw onnxruntime "
            "replays the batch sizes the server formed, right after each server run; each concurrency "
            f"alternates server and raw {o['c64'].get('rounds', 1)} times, pooled (this machine's speed "
            "drifts over minutes); ratio = server / raw throughput. Level busy and "
            "in-server ORT: from the compute time the server reports in its answers.",
            "",
            *table(columns, _phases(o, "c")),
        ]
    return lines


def peers(r: dict[str, Any]) -> list[str]:
    p = r["peers"]
    lines = [
        "## 3. Peers: the same level file behind LitServe, BentoML and Triton",
        "",
        f"Model {p['model']}, level {p['level']}. Every server batches up to {p['max_batch_size']} and runs "
        f"onnxruntime with {p['intra_op_threads']} thread(s); LitServe and circuitserve wait up to "
        f"{p['batch_delay_ms']} ms for a batch to fill, BentoML's adaptive batcher picks its own wait, "
        "Triton (tritonserver through PyTriton: its C++ HTTP frontend and dynamic batcher, "
        "`max_queue_delay_microseconds=0`, the model a Python callable running the same session) sends "
        "what is queued. Each is asked in its own format (Triton: KServe v2 JSON) by the same load "
        f"generator. {p['rounds']} interleaved round(s) (peer, circuitserve, next peer, circuitserve), one "
        "server running at a time; figures are medians over the rounds, ratio = circuitserve / peer per "
        "pair."
        + (
            f" circuitserve runs {p['level_instances']} batchers per level (`level_instances`: inference "
            "threads side by side over the level's one session); LitServe, BentoML and Triton run one "
            "model instance each (LitServe with workers_per_device=2 answers fewer requests than with 1: "
            "section 6)."
            if p.get("level_instances", 1) > 1
            else ""
        ),
        "",
    ]
    for name in PEER_NAMES:
        entry = p.get(name, {"status": "not run"})
        if entry.get("status") != "ok":
            lines += [f"**{name}**: {entry.get('status')}", ""]
            continue
        columns: list[Column] = [
            ("concurrency", _key("c")),
            (f"{name} req/s", _field("throughput_rps")),
            ("p50 ms", _field("p50_ms")),
            ("p99 ms", _field("p99_ms")),
            ("circuitserve req/s", _field("circuitserve_throughput_rps")),
            ("circuitserve p50 ms", _field("circuitserve_p50_ms")),
            ("circuitserve p99 ms", _field("circuitserve_p99_ms")),
            ("ratio", _field("throughput_ratio")),
        ]
        lines += [f"**{name}**", "", *table(columns, _phases(entry, "c"))]
    return [*lines, *scale_out(r)]


def scale_out(r: dict[str, Any]) -> list[str]:
    s = r["scale_out"]
    n, c = s["replicas"], s["concurrency"]
    lines = [
        f"**scale-out**: the better peer above and circuitserve, each as {n} instances on this machine "
        f"(one port each; the generator's {c} connections split evenly between them, as a Kubernetes "
        "Service spreads connections over pods), paired the same way.",
        "",
    ]
    if s["status"] != "ok":
        return [*lines, f"Status: {s['status']}", ""]
    columns: list[Column] = [
        ("pair", _key()),
        (f"{n} x {s['peer']} req/s", _field("peer", "throughput_rps")),
        ("p99 ms", _field("peer", "p99_ms")),
        (f"{n} x circuitserve req/s", _field("circuitserve", "throughput_rps")),
        ("circuitserve p99 ms", _field("circuitserve", "p99_ms")),
        ("ratio", _field("throughput_ratio")),
    ]
    rows = [(str(i + 1), pair) for i, pair in enumerate(s["pairs"])]
    median = {
        "peer": {"throughput_rps": s["throughput_rps"], "p99_ms": s["p99_ms"]},
        "circuitserve": {
            "throughput_rps": s["circuitserve_throughput_rps"],
            "p99_ms": s["circuitserve_p99_ms"],
        },
        "throughput_ratio": s["throughput_ratio"],
    }
    return [*lines, *table(columns, [*rows, ("median", median)])]


def overload(r: dict[str, Any]) -> list[str]:
    o = r["overload"]
    cap = o["capacity"]
    columns: list[Column] = [
        ("load", _key()),
        ("offered req/s", _field("adaptive", "offered_rps")),
        ("adaptive: within budget", _field("adaptive", "within_budget")),
        ("expected acc", _field("adaptive", "expected_accuracy")),
        ("effective acc", _field("adaptive", "effective_accuracy")),
        ("answered", _field("adaptive", "answered")),
        ("shed", lambda _, v: percent(v["adaptive"].get("shed", 0.0))),
        ("level mix", lambda _, v: ", ".join(f"{k} {s:.1%}" for k, s in v["adaptive"]["level_mix"].items())),
        ("p99 ms", _field("adaptive", "p99_ms")),
        ("server met budget", _field("adaptive", "server_met_budget")),
        (
            "prediction error p50 / p99 ms",
            lambda _, v: "{p50} / {p99}".format(
                **v["adaptive"].get("prediction_error_ms", {"p50": None, "p99": None})
            ),
        ),
        ("full only: within budget", _field("full_only", "within_budget")),
        ("expected acc", _field("full_only", "expected_accuracy")),
        ("effective acc", _field("full_only", "effective_accuracy")),
        ("p99 ms", _field("full_only", "p99_ms")),
    ]
    return [
        "## 4. Overload: open loop at multiples of the full level's capacity",
        "",
        f"Model {o['model']}: preset {o['preset']}, {o['modules']} modules, {o['epochs']} epochs, "
        f"compute-bound here. Why this model: {r['meta'].get('overload_choice', '–')}. Full-level capacity: "
        f"{cap['throughput_rps']:.0f} requests/s (closed loop, concurrency {cap['concurrency']}, p99 "
        f"{cap['p99_ms']:.0f} ms). Poisson arrivals at 1x, 2x, 4x that rate, one example per request. "
        f"Adaptive: every request carries a {o['budget_ms']:.0f} ms latency budget; full only: every request "
        f"pinned to the full level; both with a {o['budget_ms']:.0f} ms timeout. Level accuracy: "
        f"{o['level_accuracy']}.",
        "",
        *table(columns, _phases(o, "x")),
        "Within budget: answered no later than the budget after the request's scheduled send time. "
        "Expected accuracy: mean test accuracy of the levels that answered. Effective accuracy: expected "
        "correct answers within the budget, per request sent. Server met budget: fraction of answers "
        "whose measured server time (`server_ms`, which `budget_met` reports) met the budget. Shed: "
        "requests refused at once (503 with Retry-After) because the server predicted it could not "
        "answer them within the budget. "
        "Prediction error: server_ms - predicted_ms.",
        "",
    ]


def _http_floor(f: dict[str, Any]) -> list[str]:
    """The HTTP floor's line, for reports that measured it."""
    floor, g = f.get("http_floor"), f["goals"]
    if not floor:
        return []
    return [
        "",
        f"HTTP floor (the bare app's GET /health at c=1: client, kernel and uvicorn, no parse or "
        f"compute): p50 {floor['p50_ms']:.3f} ms. A server adding only that to raw onnxruntime's times "
        f"would show a dial of {g['dial_ceiling_at_http_floor']} ({g['dial_ceiling_fraction_of_raw']} "
        "of raw's). What the bare app loses below that comes from computing in a server process, which "
        "sleeps between requests; raw onnxruntime's hot loop never sleeps.",
        *_served_ceiling(f),
    ]


def _served_ceiling(f: dict[str, Any]) -> list[str]:
    """The ceiling with compute as it ran in circuitserve, for reports that measured it."""
    served, g = f.get("served_compute_ms"), f["goals"]
    if not served or g.get("dial_ceiling_with_served_compute") is None:
        return []

    def times(who: str) -> str:
        return ", ".join(f"{lv} {ms:.3f} ms" for lv, ms in served.get(who, {}).items() if ms is not None)

    return [
        "",
        f"Compute as it ran inside the servers at c=1 (the median `compute_ms` of their answers; raw "
        f"onnxruntime's are in the table): circuitserve {times('circuitserve')}; the bare app "
        f"{times('bare_asgi')}. "
        f"With those times, a server costing only the HTTP floor would show a dial of "
        f"{g['dial_ceiling_with_served_compute']} ({g['dial_ceiling_served_fraction_of_raw']} of raw's).",
    ]


def _inline_stalls(f: dict[str, Any]) -> list[str]:
    """The line on inline runs the watchdog ended, for reports that counted them."""
    stalls = f.get("inline_stalls")
    if stalls is None:
        return []
    return [
        "",
        f"Inline runs circuitserve's watchdog ended (a stalled run: the level then runs on its thread, a "
        f"thread hop more per lone request, for a second or longer): {stalls}.",
    ]


def latency_floor(r: dict[str, Any]) -> list[str]:
    f = r.get("latency_floor")
    if not f:
        return []
    rows = []
    for lv, by_c in f["cells"].items():
        for c, cell in by_c.items():
            rows.append((f"{lv}, c={c}", cell))
    columns: list[Column] = [
        ("level, concurrency", _key()),
        (
            "circuitserve p50 / p99 ms",
            lambda _, v: f"{v['circuitserve']['p50_ms']:.3f} / {v['circuitserve']['p99_ms']:.3f}",
        ),
        (
            "bare ASGI p50 / p99 ms",
            lambda _, v: f"{v['bare_asgi']['p50_ms']:.3f} / {v['bare_asgi']['p99_ms']:.3f}",
        ),
        (
            "raw onnxruntime p50 / p99 ms",
            lambda _, v: f"{v['raw_onnxruntime']['p50_ms']:.3f} / {v['raw_onnxruntime']['p99_ms']:.3f}",
        ),
    ]
    g, m = f["goals"], f["largest_request"]
    return [
        "## 5. Latency floor: one request at low load, per level",
        "",
        f"{f['rounds']} interleaved rounds (the two servers' order swapped each round). Bare ASGI: "
        "bench/bare_app.py under the same uvicorn (parse, run the same session inline, encode). Raw "
        "onnxruntime: session.run in the bench's process on the request's rows (at concurrency 8, a batch "
        "of 8).",
        "",
        *table(columns, rows),
        f"p50 at c=1 against the bare app: {g['p50_vs_bare_at_c1']} (goal <= 1.3). The dial, "
        f"p50(full) / p50(smallest) at c=1: circuitserve {g['dial_circuitserve']}, raw onnxruntime "
        f"{g['dial_raw_onnxruntime']} ({g['dial_fraction_of_raw']} of it; goal >= 0.7); the bare app "
        f"{g.get('dial_bare_asgi')} ({g.get('dial_bare_fraction_of_raw')} of it: what an HTTP round trip "
        "alone leaves of the dial here).",
        *_http_floor(f),
        *_inline_stalls(f),
        "",
        f"Memory: the largest legal request ({m['rows']} rows, {m['body_mb']} MB of JSON) sent "
        f"{m['repeats']} times: server RSS {m['rss_before_mb']} MB before, {m['rss_after_mb']} MB after "
        "(deploy/README.md derives the pod's memory request and limit from this figure).",
        "",
    ]


def _knobs(knobs: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in knobs.items()) or "–"


def families(r: dict[str, Any]) -> list[str]:
    """Every registered family per dataset and level (bench/families.py)."""
    if "families" not in r:
        return []
    lines = [
        "## 1c. Families side by side",
        "",
        "Each family's levels, named by cost relative to full; accuracy as mean ± std over the seeds "
        "listed (checkpoints, torch), FLOPs from the exported levels, latency from onnxruntime on "
        "seed 0's bundle. Random order: the same checkpoints, units kept in a random order.",
        "",
    ]
    for family, per_dataset in r["families"].items():
        for ds, f in per_dataset.items():
            seeds = ", ".join(str(s) for s in f["seeds"])
            train_s = ", ".join(f"{t:.0f}" for t in f["train_seconds"])
            small = f["smallest_units_level"]
            lines += [
                f"**{family} on {ds}**: {f['units']} {f['unit']}, knobs {_knobs(f['knobs'])}, {f['epochs']} "
                f"epochs, seeds {seeds}, training {train_s} s per seed, onnxruntime with "
                f"{f['onnxruntime_threads']} threads. Fewest {f['unit']} ({small}): ranked "
                f"{spread(f['levels'][small]['accuracy'])}, random "
                f"{spread(f['levels'][small]['accuracy_random_order'])}.",
                "",
                f"| level | {f['unit']} | knobs | accuracy | random order | FLOPs vs full | ms @1 | ms @128 "
                "| speedup @1 | speedup @128 |",
                "|---|---|---|---|---|---|---|---|---|---|",
                *(
                    f"| {name} | {lv['units']} | {_knobs(lv['knobs'])} | {spread(lv['accuracy'])} | "
                    f"{spread(lv['accuracy_random_order'])} | {_fmt(lv['flops_fraction'])} | "
                    f"{_fmt(lv['latency_ms_b1'])} | {_fmt(lv['latency_ms_b128'])} | "
                    f"{_fmt(lv['speedup_b1'])} | {_fmt(lv['speedup_b128'])} |"
                    for name, lv in f["levels"].items()
                ),
                "",
            ]
    return lines


def workers(r: dict[str, Any]) -> list[str]:
    w = r.get("workers")
    if not w:
        return []
    columns: list[Column] = [
        ("layout", _key()),
        ("req/s", lambda _, v: v.get("throughput_rps", v.get("status"))),
        ("p50 ms", _field("p50_ms")),
        ("p99 ms", _field("p99_ms")),
        ("server cores", _field("server_cores")),
        ("generator cores", _field("client_cores")),
    ]
    v = w["versus_litserve"]
    against = (
        f"against LitServe's better layout ({v['best_layout']}): {v['throughput_ratio']:.2f}x, p99 "
        f"{v['p99_ms']:.1f} ms vs {v['peer_p99_ms']:.1f} ms."
        if v["status"] == "ok"
        else f"LitServe: {v['status']}."
    )
    return [
        "## 6. Workers: one machine's cores behind one port",
        "",
        f"Model {w['model']}, full level, concurrency {w['concurrency']}, {w['rounds']} round(s) of every "
        f"layout in turn, one server at a time; medians over the rounds. circuitserve `serve --workers "
        f"{w['workers']}` is one supervisor and {w['workers']} worker processes on one port (SO_REUSEPORT), "
        f"{w['intra_op_threads']} onnxruntime thread(s) per session; `level_instances={w['workers']}` is one "
        f"process with {w['workers']} batchers (inference threads) per level over its one session. LitServe "
        f"with num_api_servers={w['workers']} (one instance), with workers_per_device={w['workers']}, and as "
        f"{w['workers']} instances with the connections split between them.",
        "",
        *table(columns, [(k, x) for k, x in w["layouts"].items()]),
        f"{w['workers']} workers against 1: {w['speedup']:.2f}x the throughput; {against}",
        *(
            [f"{w['workers']} level instances in one process against 1: {w['instances_speedup']:.2f}x."]
            if "instances_speedup" in w
            else []
        ),
        "",
    ]


def _our_generator(r: dict[str, Any], phase: str) -> dict[str, float] | None:
    """circuitserve's figures at one concurrency from the peers section (bench/load.py, the native
    route): medians over every paired run against every peer that ran."""
    runs = [
        pair["circuitserve"]
        for name in PEER_NAMES
        if (entry := r.get("peers", {}).get(name, {})).get("status") == "ok"
        for pair in entry.get(phase, {}).get("pairs", [])
    ]
    if not runs:
        return None
    return {
        k: float(statistics.median(run[k] for run in runs)) for k in ("throughput_rps", "p50_ms", "p99_ms")
    }


def perf_analyzer(r: dict[str, Any]) -> list[str]:
    p = r.get("perf_analyzer")
    if not p:
        return []
    lines = ["## 7. perf_analyzer: Triton's load generator against circuitserve", ""]
    if p["status"] != "ok" and not any(k.startswith("c") and k[1:].isdigit() for k in p):
        return [*lines, f"Status: {p['status']}", ""]
    lines += [
        f"An independent measure of section 3's circuitserve figures: Triton's perf_analyzer (tritonclient "
        f"2.41.1) against `circuitserve serve` on model {p['model']} (level {p['level']}, the bench's "
        f"server settings), over KServe v2 HTTP, one example per request, synchronous requests, "
        f"{p['input_data']}; one run per concurrency, {p['measurement_interval_ms']} ms windows, stability "
        f"bound {p['stability_percentage']}% (the machine is shared). Beside it, our own generator "
        "(bench/load.py, the native route) from section 3: medians over its paired runs.",
        "",
    ]
    if p["status"] != "ok":
        lines += [f"Status: {p['status']}", ""]
    rows = []
    for phase, figures in _phases(p, "c"):
        ours = _our_generator(r, phase)
        rows.append((phase, {**figures, "ours": ours or {}}))
    columns: list[Column] = [
        ("concurrency", _key("c")),
        ("perf_analyzer req/s", lambda _, v: v.get("throughput_rps", v.get("status"))),
        ("p50 ms", _field("p50_ms")),
        ("p99 ms", _field("p99_ms")),
        ("our generator req/s", _field("ours", "throughput_rps")),
        ("p50 ms", _field("ours", "p50_ms")),
        ("p99 ms", _field("ours", "p99_ms")),
        ("server's own mean ms", _field("server_request_ms")),
        ("perf_analyzer cores", _field("client_cores")),
    ]
    needs = "; ".join(p["needs"])
    return [
        *lines,
        *table(columns, rows),
        f"What it needs: {needs}. Command (concurrency 1; the others alike): `{p['command']}`.",
        "",
    ]


def targets(r: dict[str, Any]) -> list[str]:
    mark = {True: "reached", False: "**not reached**", None: "not measured"}
    columns: list[Column] = [
        ("target", _field("target")),
        ("goal", _field("goal")),
        ("measured", _field("measured")),
        ("", lambda _, t: mark[t["reached"]]),
    ]
    return ["## Targets", "", *table(columns, ((str(i), t) for i, t in enumerate(r["targets"])))]


def closing(r: dict[str, Any]) -> list[str]:
    lines = ["## Closing note", ""]
    missed = [t for t in r["targets"] if t["reached"] is not True]
    if not missed:
        lines += ["Every target was reached in this run.", ""]
    for t in missed:
        state = "not measured" if t["reached"] is None else "not reached"
        lines.append(f"- **{t['target']}** ({state}): {t['why']}.")
    m, n = r["meta"], r["noise"]
    if n["throughput_spread"] is not None:
        lines += [
            "",
            f"Run-to-run noise: circuitserve's throughput at concurrency 64 on the same model moved by "
            f"{n['throughput_spread']:.0%} (max - min over median) across its {n['circuitserve_c64_runs']} "
            "runs in section 3; differences smaller than that, and ratios a little above 100%, are noise.",
        ]
    c64 = r["overhead"]["small"]["c64"]["server"]
    generator_ms = 1e3 * c64.get("client_cores", math.nan) / c64["throughput_rps"]
    lines += [
        "",
        f"The machine is shared with other work: load average {m['load_average_before']} before the run "
        f"and {m['load_average_after']} after. The load generator (bench/load.py: asyncio + httptools; "
        f"{generator_ms:.2f} ms of CPU per request in section 2 at concurrency 64) runs on the same cores "
        "as the server under test (loopback only), for every server alike.",
        "",
    ]
    return lines


def _partial_runs(m: dict[str, Any]) -> list[str]:
    """`circuitserve bench --only ...` reruns merged into this report, newest last."""
    return [
        f"Sections {', '.join(run['sections'])} were rerun by `--only` on {run['date']} "
        + (f"(families {', '.join(run['families'])} only) " if "families" in run else "")
        + f"(code {run['code_version']})."
        for run in m.get("runs", [])
    ]


def render(r: dict[str, Any], images: dict[str, str]) -> str:
    m = r["meta"]
    lines = [
        "# circuitserve benchmarks",
        "",
        f"Generated by `{m['command']}` on {m['date']} (code {m['code_version']}); do not edit, rerun the "
        f"command. Machine: {m['machine']}; Python {m['python']}, onnxruntime {m['onnxruntime']}. Server "
        f"settings: {m['server_settings']}. Every figure is in [report.json](report.json). Section wall "
        f"times (s): {m['section_seconds']}. Steal, the share of CPU time the hypervisor gave other "
        f"guests while a section ran (this is a shared virtual machine; timing figures from sections "
        f"with more than a few percent are noisier than their rounds show): {m.get('section_steal', {})}.",
        *_partial_runs(m),
        "",
        *targets(r),
        *headline(r),
    ]
    sections = (
        (levels, "levels"),
        (accuracy, "accuracy"),
        (families, "families"),
        (overhead, "overhead"),
        (peers, "peers"),
        (overload, "overload"),
        (latency_floor, "latency_floor"),
        (workers, "workers"),
        (perf_analyzer, "perf_analyzer"),
    )
    for render_section, key in sections:
        lines += render_section(r)
        if key in images:
            lines += [f"![{key}]({images[key]})", ""]
    lines += closing(r)
    return "\n".join(lines)

"""Turning a suite run into figures: medians with min–max, the issue's targets, Markdown and charts.

`write()` puts `<name>.json` (every repetition's raw figures), `<name>.md` (the tables) and
`<name>-*.png` (matplotlib, Agg backend: no display needed) in the results folder, and refreshes the
generated part of BENCHMARKS.md when the run is a full one.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
GENERATED_START = "<!-- bench:results:start -->"
GENERATED_END = "<!-- bench:results:end -->"
IMAGE_NAMES = {"small": "0.27 MP", "large": "12 MP", "24mp": "24 MP", "50mp": "50 MP"}


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (p99 of 300 values is the 297th smallest)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        values = list(values)
        if not values:
            return cls(float("nan"), float("nan"), float("nan"))
        return cls(statistics.median(values), min(values), max(values))

    def show(self, digits: int = 0, unit: str = "") -> str:
        if self.median != self.median:  # NaN
            return "—"
        return f"{self.median:,.{digits}f}{unit} ({self.low:,.{digits}f}–{self.high:,.{digits}f})"


def _select(runs: list[dict[str, Any]], **where: Any) -> list[dict[str, Any]]:
    return [run for run in runs if all(run.get(key) == value for key, value in where.items())]


def _ratios(runs: list[dict[str, Any]], top: dict[str, Any], bottom: dict[str, Any], key: str) -> Spread:
    """Per-repetition ratios (scenarios ran side by side in each repetition), then their spread."""
    values = []
    for rep in sorted({run["rep"] for run in runs}):
        upper = _select(runs, rep=rep, **top)
        lower = _select(runs, rep=rep, **bottom)
        if upper and lower and lower[0][key]:
            values.append(upper[0][key] / lower[0][key])
    return Spread.of(values)


@dataclass(frozen=True)
class Target:
    name: str
    figure: Spread
    goal: str
    check: Callable[[float], bool] | None  # None: not measurable in this run
    digits: int = 0
    unit: str = ""
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.check is None and self.goal.startswith("("):
            return "—"
        if self.check is None or self.figure.median != self.figure.median:
            return "not measured"
        return "met" if self.check(self.figure.median) else "**missed**"


def targets(results: dict[str, Any]) -> list[Target]:
    found: list[Target] = []
    scenarios = results["scenarios"]
    if "ingest" in scenarios:
        runs = scenarios["ingest"]["runs"]
        api16 = _select(runs, endpoint="api", image="small", concurrency=16)
        found += [
            Target(
                "ingest 0.27 MP, c16: uploads/s",
                Spread.of(r["rate"] for r in api16),
                "≥ 450",
                lambda v: v >= 450,
            ),
            Target(
                "ingest 0.27 MP, c16: p99 latency",
                Spread.of(r["p99_ms"] for r in api16),
                "< 100 ms",
                lambda v: v < 100,
                1,
                " ms",
            ),
            Target(
                "ingest 0.27 MP, c16: API / bare endpoint",
                _ratios(
                    runs,
                    {"endpoint": "api", "image": "small", "concurrency": 16},
                    {"endpoint": "bare", "image": "small", "concurrency": 16},
                    "rate",
                ),
                "≥ 0.6",
                lambda v: v >= 0.6,
                2,
            ),
        ]
    if "queue_overhead" in scenarios:
        runs = scenarios["queue_overhead"]["runs"]
        for source in ("server", "client"):
            label = "task timestamps" if source == "server" else "client"
            found += [
                Target(
                    f"queue overhead c1 ({label}): p50 beyond Pillow",
                    Spread.of(r[f"{source}_overhead_p50_ms"] for r in runs),
                    "< 10 ms",
                    lambda v: v < 10,
                    1,
                    " ms",
                ),
                Target(
                    f"queue overhead c1 ({label}): p99 beyond Pillow",
                    Spread.of(r[f"{source}_overhead_p99_ms"] for r in runs),
                    "< 40 ms",
                    lambda v: v < 40,
                    1,
                    " ms",
                ),
            ]
    if "drain" in scenarios:
        runs = scenarios["drain"]["runs"]
        found += [
            Target(
                "drain: 1 worker / bare Pillow loop",
                _ratios(runs, {"kind": "1 worker"}, {"kind": "bare"}, "rate"),
                "≥ 0.85",
                lambda v: v >= 0.85,
                2,
            ),
            Target(
                "drain: 2 workers / 1 worker",
                _ratios(runs, {"kind": "2 workers"}, {"kind": "1 worker"}, "rate"),
                "≥ 1.7",
                lambda v: v >= 1.7,
                2,
            ),
        ]
        if _select(runs, kind="bare, durable write"):
            found.append(
                Target(
                    "bare Pillow loop writing as the worker must (new file, fsync, rename, folder fsync)"
                    " / bare loop (not a target: what durability alone costs)",
                    _ratios(runs, {"kind": "bare, durable write"}, {"kind": "bare"}, "rate"),
                    "(≥ 0.85)",
                    None,
                    2,
                )
            )
        if _select(runs, kind="1 worker, 1 thread each"):
            found.append(
                Target(
                    "drain: 2 workers / 1 worker at WORKER_CONCURRENCY=1 (not a target: for reading)",
                    _ratios(
                        runs,
                        {"kind": "2 workers, 1 thread each"},
                        {"kind": "1 worker, 1 thread each"},
                        "rate",
                    ),
                    "(≥ 1.7)",
                    None,
                    2,
                )
            )
    if "end_to_end" in scenarios:
        runs = scenarios["end_to_end"]["runs"]
        errors = sum(r["errors"] for r in runs)
        found.append(
            Target(
                "end to end 0.27 MP, c16, 2 workers: images/s",
                Spread.of(r["rate"] for r in runs),
                "≥ 200, 0 errors",
                lambda v, errors=errors: v >= 200 and errors == 0,
                note=f"{errors} errors",
            )
        )
    if "memory" in scenarios:
        memory = scenarios["memory"]
        found.append(
            Target(
                "API RSS growth during an 80 MB upload (worst of both ways)",
                Spread.of(
                    max(r["growth_mib"] for r in _select(memory["api_runs"], rep=rep))
                    for rep in {r["rep"] for r in memory["api_runs"]}
                ),
                "< 20 MB",
                lambda v: v < 20 * 1000**2 / 1024**2,
                1,
                " MiB",
            )
        )
        thumbs = _select(memory["worker_runs"], image="50mp", processing="thumbnail")
        found.append(
            Target(
                "worker peak RSS, 50 MP thumbnail",
                Spread.of(r["peak_mib"] for r in thumbs),
                "< 200 MB",
                (lambda v: v < 200 * 1000**2 / 1024**2) if thumbs else None,
                0,
                " MiB",
                note="" if thumbs else f"thumbnail preset {memory['thumbnail_preset']}",
            )
        )
    if "hostile" in scenarios:
        hostile = scenarios["hostile"]
        alone = hostile["baseline"]["normal"]["task_done_ms"]["p95"]
        attacked = hostile["hostile"]["normal"]["task_done_ms"]["p95"]
        found.append(
            Target(
                "hostile mix: normal upload → done p95 (task timestamps) / the same load alone "
                "(issue 14 asks ≤ 2 with heavy tasks queued)",
                Spread.of([attacked / alone] if alone and attacked else []),
                "≤ 2",
                lambda v: v <= 2,
                1,
            )
        )
        found.append(
            Target(
                "hostile mix: normal uploads answered 5xx",
                Spread.of([hostile["hostile"]["normal"]["server_errors"]]),
                "0",
                lambda v: v == 0,
            )
        )
    return found


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    scenarios = results["scenarios"]
    out = [
        f"Run of {results['date']} ({results['mode']}, {results['reps']} repetitions; "
        f"figures are medians with min–max), {results['elapsed_seconds']:.0f} s in all.",
        "",
        "### Targets",
        "",
        _table(
            ["target", "measured", "goal", "verdict"],
            [
                [
                    t.name,
                    t.figure.show(t.digits, t.unit) + (f"; {t.note}" if t.note else ""),
                    t.goal,
                    t.verdict,
                ]
                for t in targets(results)
            ],
        ),
    ]
    if "ingest" in scenarios:
        runs = scenarios["ingest"]["runs"]
        rows = []
        for image in IMAGE_NAMES:
            for concurrency in sorted({r["concurrency"] for r in runs}):
                for endpoint in ("api", "bare", "sink"):
                    chosen = _select(runs, endpoint=endpoint, image=image, concurrency=concurrency)
                    if not chosen:
                        continue
                    rows.append(
                        [
                            IMAGE_NAMES[image],
                            str(concurrency),
                            {"api": "API", "bare": "bare endpoint", "sink": "generator ceiling"}[endpoint],
                            Spread.of(r["rate"] for r in chosen).show(),
                            Spread.of(r["p50_ms"] for r in chosen).show(1),
                            Spread.of(r["p99_ms"] for r in chosen).show(1),
                            Spread.of(r["server_cpu_ms_per_request"] for r in chosen).show(2)
                            if endpoint != "sink"
                            else "—",
                            Spread.of(r["loader_cpu_ms_per_request"] for r in chosen).show(2),
                            Spread.of(r.get("postgres_cpu_ms_per_request", 0) for r in chosen).show(2),
                            Spread.of(r.get("nats_cpu_ms_per_request", 0) for r in chosen).show(2),
                            Spread.of(r.get("postgres_sessions_opened", 0) for r in chosen).show(),
                            str(sum(r["errors"] for r in chosen)),
                        ]
                    )
        out += [
            "",
            "### 1. Ingest (one API process, no worker)",
            "",
            _table(
                [
                    "image",
                    "c",
                    "endpoint",
                    "uploads/s",
                    "p50 ms",
                    "p99 ms",
                    "server CPU ms/upload",
                    "generator CPU ms/request",
                    "PostgreSQL CPU ms/upload",
                    "nats-server CPU ms/upload",
                    "PostgreSQL sessions opened",
                    "errors",
                ],
                rows,
            ),
        ]
    if "queue_overhead" in scenarios:
        q = scenarios["queue_overhead"]
        runs = q["runs"]

        def row(label: str, key: str) -> list[str]:
            return [label, Spread.of(r[key] for r in runs).show(1)]

        out += [
            "",
            f"### 2. Queue overhead (0.27 MP, concurrency 1, 1 worker; Pillow's own time "
            f"{q['pillow_ms']:.1f} ms median, {q['pillow_ms_min']:.1f} ms best)",
            "",
            _table(
                ["figure", "ms"],
                [
                    row("task timestamps upload_time → finished_at, p50", "server_p50_ms"),
                    row("task timestamps, p99", "server_p99_ms"),
                    row("… beyond Pillow, p50", "server_overhead_p50_ms"),
                    row("… beyond Pillow, p99", "server_overhead_p99_ms"),
                    row("of which upload_time → started_at (queue + claim), p50", "queue_wait_p50_ms"),
                    row("started_at → finished_at (render + file sync), p50", "claim_to_done_p50_ms"),
                    row("client POST → sees done (2 ms polling), p50", "client_p50_ms"),
                    row("client, p99", "client_p99_ms"),
                    row("… beyond Pillow, p50", "client_overhead_p50_ms"),
                    row("… beyond Pillow, p99", "client_overhead_p99_ms"),
                ],
            ),
        ]
    if "drain" in scenarios:
        runs = scenarios["drain"]["runs"]
        out += [
            "",
            f"### 3. Drain ({scenarios['drain']['tasks']:,} queued 0.27 MP tasks) and 4. end to end",
            "",
            _table(
                ["what", "images/s", "CPU ms/image"],
                [
                    _drain_row(kind, _select(runs, kind=kind))
                    for kind in dict.fromkeys(r["kind"] for r in runs)
                ]
                + (
                    [
                        [
                            "end to end: uploads at c16 with 2 workers, first upload → last done",
                            Spread.of(r["rate"] for r in scenarios["end_to_end"]["runs"]).show()
                            + f" ({sum(r['errors'] for r in scenarios['end_to_end']['runs'])} errors)",
                            "",
                        ]
                    ]
                    if "end_to_end" in scenarios
                    else []
                ),
            ),
        ]
    e2e_cpu = [r for r in scenarios.get("end_to_end", {}).get("runs", []) if "cpu_ms_per_image" in r]
    if e2e_cpu:
        names = list(e2e_cpu[0]["cpu_ms_per_image"])
        out += [
            "",
            "End to end, CPU time per image by process (ms) and the share of the machine's cores busy:",
            "",
            _table(
                [*names, "in all", "machine busy"],
                [
                    [Spread.of(r["cpu_ms_per_image"][name] for r in e2e_cpu).show(2) for name in names]
                    + [
                        Spread.of(sum(r["cpu_ms_per_image"].values()) for r in e2e_cpu).show(2),
                        Spread.of(r["machine_busy_share"] * 100 for r in e2e_cpu).show() + " %",
                    ]
                ],
            ),
        ]
    if "memory" in scenarios:
        memory = scenarios["memory"]
        rows = []
        for way in ("Content-Length", "chunked"):
            chosen = _select(memory["api_runs"], upload=way)
            statuses = sorted({str(r["status"]) for r in chosen})
            rows.append(
                [
                    f"API, 80 MB upload refused ({way}; answer {', '.join(statuses)})",
                    Spread.of(r["baseline_mib"] for r in chosen).show(1),
                    Spread.of(r["peak_mib"] for r in chosen).show(1),
                    Spread.of(r["growth_mib"] for r in chosen).show(1),
                ]
            )
        for image in ("24mp", "50mp"):
            for processing in ("default", "thumbnail"):
                chosen = _select(memory["worker_runs"], image=image, processing=processing)
                if chosen:
                    rows.append(
                        [
                            f"worker, {IMAGE_NAMES[image]} JPEG, {processing} processing",
                            Spread.of(r["baseline_mib"] for r in chosen).show(1),
                            Spread.of(r["peak_mib"] for r in chosen).show(1),
                            Spread.of(r["peak_mib"] - r["baseline_mib"] for r in chosen).show(1),
                        ]
                    )
        out += [
            "",
            f"### 5. Memory (RSS, MiB; thumbnail preset: {memory['thumbnail_preset']})",
            "",
            _table(["process", "before", "peak (VmHWM)", "growth"], rows),
        ]
    if "hostile" in scenarios:
        from bench import hostile  # here: bench.hostile imports this module

        out += [
            "",
            "### 6. Hostile traffic (one run, bench/hostile.py)",
            "",
            hostile.section(scenarios["hostile"]),
        ]
    if "side_by_side" in scenarios:
        from bench import sidebyside

        out += [
            "",
            "### 7. Beside the original design, with real clients (bench/sidebyside.py; medians)",
            "",
            sidebyside.table(scenarios["side_by_side"]["summary"]),
        ]
    out += ["", "### Machine and other load", "", _machine(results)]
    return "\n".join(out) + "\n"


def _drain_row(kind: str, runs: list[dict[str, Any]]) -> list[str]:
    rate = Spread.of(r["rate"] for r in runs).show()
    if kind.startswith("bare"):
        label = "bare Pillow loop (1 thread)"
        if kind != "bare":
            label = "bare Pillow loop writing each output durably, as the worker does (1 thread)"
        return [label, rate, Spread.of(r["median_ms"] for r in runs).show(2) + " (median per image)"]
    cpu = Spread.of(r.get("worker_cpu_ms_per_image", float("nan")) for r in runs).show(2)
    return [
        kind + (" (default WORKER_CONCURRENCY)" if "thread" not in kind else ""),
        rate,
        cpu + " (workers)",
    ]


def _machine(results: dict[str, Any]) -> str:
    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    load = [
        f"{name} {s['cpu']['other_cpu_share']:.0%}" for name, s in results["scenarios"].items() if "cpu" in s
    ]
    images = ", ".join(
        f"{IMAGE_NAMES[name]} {info['size']} {info['bytes'] / 1024:,.0f} KiB"
        for name, info in results["images"].items()
    )
    return (
        f"- CPU: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, {m['memory_gib']} GiB; "
        f"kernel {m['kernel']}\n"
        f"- versions: {versions}\n"
        f"- test images (photo-like JPEG, quality 90): {images}\n"
        f"- share of the machine's CPU used by other processes during each scenario: {', '.join(load)}; "
        f"load average at start {m['load_average_at_start'][0]:.2f}, "
        f"at end {m.get('load_average_at_end', [float('nan')])[0]:.2f}\n"
        f"- settings: {results['settings']}"
    )


def charts(results: dict[str, Any], folder: Path, name: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    scenarios = results["scenarios"]
    if "ingest" in scenarios:
        runs = scenarios["ingest"]["runs"]
        images = [image for image in IMAGE_NAMES if _select(runs, image=image)]
        figure, axes = plt.subplots(2, len(images), figsize=(6 * len(images), 7), squeeze=False)
        for column, image in enumerate(images):
            concurrencies = sorted({r["concurrency"] for r in _select(runs, image=image)})
            for offset, endpoint in ((-0.2, "api"), (0.2, "bare")):
                for row, key, label in ((0, "rate", "uploads/s"), (1, "p99_ms", "p99 latency (ms)")):
                    spreads = [
                        Spread.of(
                            r[key] for r in _select(runs, image=image, endpoint=endpoint, concurrency=c)
                        )
                        for c in concurrencies
                    ]
                    axis = axes[row][column]
                    positions = [index + offset for index in range(len(concurrencies))]
                    axis.bar(
                        positions,
                        [s.median for s in spreads],
                        width=0.4,
                        label={"api": "API", "bare": "bare endpoint"}[endpoint],
                        yerr=[
                            [s.median - s.low for s in spreads],
                            [s.high - s.median for s in spreads],
                        ],
                        capsize=3,
                    )
                    axis.set_xticks(range(len(concurrencies)), [f"c{c}" for c in concurrencies])
                    axis.set_ylabel(label)
                    axis.set_title(f"ingest, {IMAGE_NAMES[image]} JPEG")
            if image == "small":
                axes[0][column].axhline(450, color="red", linestyle="--", linewidth=1, label="target 450/s")
                axes[1][column].axhline(
                    100, color="red", linestyle="--", linewidth=1, label="target p99 100 ms"
                )
            axes[0][column].legend()
            axes[1][column].legend()
        figure.suptitle(f"Ingest ({results['date']}, median of {results['reps']}, bars: min–max)")
        figure.tight_layout()
        written.append(_save(figure, folder / f"{name}-ingest.png"))
        plt.close(figure)
    if "drain" in scenarios:
        runs = scenarios["drain"]["runs"]
        kinds = list(dict.fromkeys(r["kind"] for r in runs))
        labels = [
            "bare Pillow loop" if kind == "bare" else kind.replace(", 1 thread each", "\n(1 thread each)")
            for kind in kinds
        ]
        spreads = [Spread.of(r["rate"] for r in _select(runs, kind=kind)) for kind in kinds]
        if "end_to_end" in scenarios:
            labels.append("end to end\n(2 workers, c16)")
            spreads.append(Spread.of(r["rate"] for r in scenarios["end_to_end"]["runs"]))
        figure, axis = plt.subplots(figsize=(10, 4.5))
        axis.bar(
            labels,
            [s.median for s in spreads],
            yerr=[[s.median - s.low for s in spreads], [s.high - s.median for s in spreads]],
            capsize=4,
            color=[
                "grey" if label.startswith("bare") else "tab:green" if label.startswith("end") else "tab:blue"
                for label in labels
            ],
        )
        if "end_to_end" in scenarios:
            axis.axhline(200, color="red", linestyle="--", linewidth=1, label="end-to-end target 200/s")
            axis.legend()
        axis.set_ylabel("images/s (0.27 MP JPEG)")
        axis.set_title(f"Drain and end to end ({results['date']}, median, bars: min–max)")
        figure.tight_layout()
        written.append(_save(figure, folder / f"{name}-processing.png"))
        plt.close(figure)
    if "memory" in scenarios:
        memory = scenarios["memory"]
        labels, peaks, bases = [], [], []
        for way in ("Content-Length", "chunked"):
            chosen = _select(memory["api_runs"], upload=way)
            labels.append(f"API, 80 MB\n({way})")
            peaks.append(Spread.of(r["peak_mib"] for r in chosen).median)
            bases.append(Spread.of(r["baseline_mib"] for r in chosen).median)
        for image in ("24mp", "50mp"):
            for processing in ("default", "thumbnail"):
                chosen = _select(memory["worker_runs"], image=image, processing=processing)
                if chosen:
                    labels.append(f"worker\n{IMAGE_NAMES[image]} {processing}")
                    peaks.append(Spread.of(r["peak_mib"] for r in chosen).median)
                    bases.append(Spread.of(r["baseline_mib"] for r in chosen).median)
        figure, axis = plt.subplots(figsize=(8, 4.5))
        axis.bar(labels, bases, label="before", color="lightgrey")
        axis.bar(
            labels, [p - b for p, b in zip(peaks, bases, strict=True)], bottom=bases, label="growth to peak"
        )
        axis.axhline(200 * 1000**2 / 1024**2, color="red", linestyle="--", linewidth=1, label="200 MB")
        axis.set_ylabel("RSS (MiB)")
        axis.set_title(f"Peak memory ({results['date']}, median)")
        axis.legend()
        figure.tight_layout()
        written.append(_save(figure, folder / f"{name}-memory.png"))
        plt.close(figure)
    return written


def _save(figure: Any, path: Path) -> Path:
    figure.savefig(path, dpi=90)
    return path


def write(results: dict[str, Any], folder: Path, name: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / f"{name}.json"
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    md_path = folder / f"{name}.md"
    md_path.write_text(markdown(results))
    written = [json_path, md_path, *charts(results, folder, name)]
    if results["mode"] == "full" and folder.resolve() == BENCHMARKS_MD.parent / "bench" / "results":
        _refresh_benchmarks_md(results, name, written)
    return written


def _refresh_benchmarks_md(results: dict[str, Any], name: str, written: list[Path]) -> None:
    """Replace the generated part of BENCHMARKS.md with this run's tables and charts."""
    if not BENCHMARKS_MD.exists():
        return
    text = BENCHMARKS_MD.read_text()
    if GENERATED_START not in text or GENERATED_END not in text:
        return
    pictures = "\n".join(
        f"![{path.stem}](bench/results/{path.name})" for path in written if path.suffix == ".png"
    )
    generated = (
        f"{GENERATED_START}\n<!-- written by `make bench` from bench/results/{name}.json -->\n\n"
        f"{markdown(results)}\n{pictures}\n{GENERATED_END}"
    )
    before, rest = text.split(GENERATED_START, 1)
    _, after = rest.split(GENERATED_END, 1)
    BENCHMARKS_MD.write_text(before + generated + after)

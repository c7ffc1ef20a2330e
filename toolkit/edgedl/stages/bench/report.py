"""A benchmark report: environment + one result per configuration; JSON (schema v1), markdown and a rich table."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedl.errors import EdgeDLError

SCHEMA = "edgedl.bench/1"
# every result carries these keys (tests check the schema against this list)
RESULT_KEYS = (
    "model", "model_name", "model_size_bytes", "engine", "engine_version", "provider_requested", "providers_session",
    "providers_used", "placement", "fallback", "threads", "batch", "sizes", "scenario", "io_binding",
    "session_create_ms", "first_inference_ms", "latency_ms", "latency_quantiles_ms", "samples_per_query", "queries",
    "throughput", "headline", "scenario_details", "startup_rss_mib", "peak_rss_mib",
)
LATENCY_KEYS = ("count", "mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms",
                "wall_s")


def config_key(result: dict[str, Any]) -> str:
    """What identifies a configuration across runs: model, engine/provider, scenario, threads, batch, sizes."""
    engine = result["engine"] if result["engine"] != "onnxruntime" else f"ort:{result.get('provider_requested')}"
    sizes = ",".join(f"{k}={v}" for k, v in sorted(result.get("sizes", {}).items()) if k != "batch")
    binding = "+iobinding" if result.get("io_binding") else ""
    key = f"{result['model_name']} {engine}{binding} {result['scenario']} t{result['threads']} b{result['batch']}"
    return f"{key} {sizes}" if sizes else key


def engine_label(result: dict[str, Any]) -> str:
    """'ort cpu', 'torch eager', or 'ort xnnpack→cpu (FALLBACK)' when the requested provider did not run it."""
    if result["engine"] == "torch":
        return "torch eager"
    requested = result.get("provider_requested") or "cpu"
    used = result.get("providers_used") or []
    label = f"ort {requested}"
    if result.get("io_binding"):
        label += " +iob"
    if result.get("fallback") or (used and used != [requested]):
        label += f"→{'+'.join(used)} (FALLBACK)"
    return label


@dataclass
class BenchReport:
    config: dict[str, Any]
    environment: dict[str, Any]
    results: list[dict[str, Any]]
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    schema: str = SCHEMA

    # --- ratios --------------------------------------------------------------------------------------------
    def speedups(self) -> dict[int, float]:
        """Index of each non-torch result -> torch eager p50 / its p50, for the same model, threads and batch."""
        torch_p50 = {(_network(r), r["threads"], r["batch"]): r["latency_ms"]["p50_ms"]
                     for r in self.results if r["engine"] == "torch"}
        out = {}
        for i, r in enumerate(self.results):
            base = torch_p50.get((_network(r), r["threads"], r["batch"]))
            if r["engine"] != "torch" and base and r["latency_ms"]["p50_ms"] > 0:
                out[i] = base / r["latency_ms"]["p50_ms"]
        return out

    def fallbacks(self) -> list[str]:
        return [f"{r['model_name']} ({engine_label(r)}, {r['threads']} thr, batch {r['batch']}): {'; '.join(r['fallback'])}"
                for r in self.results if r.get("fallback")]

    # --- serialisation -------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"schema": self.schema, "created": self.created, "config": self.config,
                "environment": self.environment, "results": self.results}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1, default=str) + "\n")
        return path

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "report") -> "BenchReport":
        if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("results"), list):
            raise EdgeDLError(f"{source} is not an edgedl bench report (expected schema {SCHEMA}); "
                              "write one with `edgedl bench ... --save results.json`")
        for r in data["results"]:
            missing = [k for k in ("model_name", "engine", "scenario", "threads", "batch", "latency_ms", "throughput")
                       if k not in r]
            if missing:
                raise EdgeDLError(f"{source}: a result lacks {', '.join(missing)}; regenerate it with this edgedl")
        return cls(data.get("config", {}), data.get("environment", {}), data["results"], data.get("created", "?"),
                   data["schema"])

    @classmethod
    def load(cls, path: str | Path) -> "BenchReport":
        path = Path(path)
        if not path.is_file():
            raise EdgeDLError(f"report not found: {path}; write one with `edgedl bench ... --save {path.name}`")
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise EdgeDLError(f"{path} is not JSON ({exc}); pass a file written by `edgedl bench --save`") from exc
        return cls.from_json(data, str(path))

    # --- human output --------------------------------------------------------------------------------------
    def environment_line(self) -> str:
        env = self.environment or {}
        cpu = env.get("cpu", {})
        ort = env.get("onnxruntime", {})
        flags = " ".join(cpu.get("flags", [])[-4:])
        load = env.get("load_average")
        busy = f", load {load[0]:.1f}" if load else ""
        device = f"device {env['device']} (profile {env.get('profile')}): " if env.get("device") else ""
        return (f"{device}{cpu.get('model', '?')} ({cpu.get('usable_cores', '?')} usable cores; {flags}), {env.get('os', '?')}, "
                f"Python {env.get('python', '?')}, onnxruntime {ort.get('version', '?')} ({ort.get('flavour', '?')}){busy}")

    COLUMNS = ("model", "engine", "thr", "batch", "p50 ms", "p90 ms", "p99 ms", "samples/s", "peak MiB", "load ms",
               "1st ms", "vs torch")

    def rows(self) -> list[list[str]]:
        speed = self.speedups()
        rows = []
        for i, r in enumerate(self.results):
            lat = r["latency_ms"]
            ratio = f"{speed[i]:.1f}×" if i in speed else ("1.0×" if r["engine"] == "torch" and speed else "")
            rows.append([r["model_name"], engine_label(r), str(r["threads"]), str(r["batch"]), _ms(lat["p50_ms"]),
                         _ms(lat["p90_ms"]), _ms(lat["p99_ms"]), f"{r['throughput']['samples_per_s']:,.0f}",
                         f"{r['peak_rss_mib']:.0f}", _ms(r["session_create_ms"]), _ms(r["first_inference_ms"]), ratio])
        return rows

    def scenario_lines(self) -> list[str]:
        out = []
        for r in self.results:
            d = r.get("scenario_details") or {}
            if r["scenario"] == "server":
                verdict = "" if d.get("latency_bound_met") is None else (
                    f"; latency bound {d['latency_bound_ms']:g} ms {'HELD' if d['latency_bound_met'] else 'MISSED'}")
                out.append(f"{r['model_name']} {engine_label(r)} t{r['threads']} b{r['batch']}: server at "
                           f"{d.get('target_qps'):g} qps (offered {d.get('offered_qps') or 0:.1f}, achieved "
                           f"{d.get('achieved_qps') or 0:.1f}): p99 {_ms(r['latency_ms']['p99_ms'])} ms{verdict}")
        return out

    def markdown(self) -> str:
        lines = [f"Environment: {self.environment_line()}", "",
                 f"Scenario: {self.config.get('scenario', '?')}; latency per query in ms; peak MiB = peak RSS of the "
                 "process that ran the configuration; load = session creation (torch: building the model and loading its "
                 "weights); 1st = first inference; vs torch = PyTorch eager p50 / this p50.", "",
                 "| " + " | ".join(self.COLUMNS) + " |", "|" + "---|" * len(self.COLUMNS)]
        for row in self.rows():
            lines.append("| " + " | ".join(row) + " |")
        lines += [""] + [f"- {s}" for s in self.scenario_lines() + [f"FALLBACK {f}" for f in self.fallbacks()]]
        return "\n".join(lines).rstrip() + "\n"

    # columns a narrow terminal drops first (the table then says so); --json, --markdown and --save keep all
    OPTIONAL_COLUMNS = ("1st ms", "load ms", "p90 ms", "peak MiB")

    def rich_table(self, width: int | None = None):
        """The table; with ``width`` (a terminal's), the optional columns that do not fit are left out rather
        than numbers squeezed into ``…``."""
        from rich.console import Console
        from rich.table import Table

        dropped: list[str] = []
        while True:
            columns = [c for c in self.COLUMNS if c not in dropped]
            table = Table(title=f"edgedl bench ({self.config.get('scenario', 'single-stream')})", show_edge=False,
                          pad_edge=False, caption=(f"not shown for the terminal's width: {', '.join(dropped)} "
                                                   "(--markdown or --json show them)") if dropped else None)
            for col in columns:
                # numbers never wrap or get cut; a long model name wraps instead
                table.add_column(col, justify="left" if col in ("model", "engine") else "right",
                                 no_wrap=col != "model")
            keep = [self.COLUMNS.index(c) for c in columns]
            for row, r in zip(self.rows(), self.results):
                table.add_row(*(row[i] for i in keep), style="bold red" if r.get("fallback") else None)
            more = [c for c in self.OPTIONAL_COLUMNS if c not in dropped]
            if width is None or not more or Console(width=10_000).measure(table).maximum <= width:
                return table
            dropped.append(more[0])


def _network(result: dict[str, Any]) -> str:
    """The network a result ran: its recipe (so int8/fp16 variants share the fp32 model's torch baseline)."""
    return (result.get("model_metadata") or {}).get("recipe") or result["model"]


def _ms(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"

"""``edgedl bench``: measure models on execution providers, one isolated process per configuration.

Library entry points: ``run_bench(BenchConfig(...)) -> BenchReport`` and ``compare_reports(old, new, threshold)``.
"""

__all__ = ["BenchConfig", "WorkerConfig", "run_bench", "compare_reports", "BenchReport"]


def __getattr__(name):  # keep the worker free of the orchestrator's imports
    if name in ("BenchConfig", "WorkerConfig"):
        import edgedl.stages.bench.config as config

        return getattr(config, name)
    if name == "run_bench":
        from edgedl.stages.bench.orchestrate import run_bench

        return run_bench
    if name == "BenchReport":
        from edgedl.stages.bench.report import BenchReport

        return BenchReport
    if name == "compare_reports":
        from edgedl.stages.bench.compare import compare_reports

        return compare_reports
    raise AttributeError(name)

"""The BENCHMARKS.md writer lives in tasks/bench_report.py (`unmask evaluate` writes a section too,
and tasks/ may not import benchmarks/); the benchmarks import it from here."""
from tasks.bench_report import BENCHMARKS, REPO, stamp, write_section  # noqa: F401

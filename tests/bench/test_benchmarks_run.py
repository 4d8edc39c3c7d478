"""Each benchmark runs with one command on a tiny size and prints its figures and targets
(`make bench-check`, which CI runs after `make test`).

Not a measurement: timings never decide a test; this only keeps the benchmarks working."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.processes import untraced_env

pytestmark = pytest.mark.e2e


def bench(repo_root: Path, name: str, *args: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", *args],
        cwd=repo_root,
        env=untraced_env(**env),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("loadgen", ["wrk", "python"])
def test_gateway_overhead_prints_ratios_and_targets(repo_root: Path, loadgen: str) -> None:
    if loadgen == "wrk" and not any(
        (Path(folder) / "wrk").exists() for folder in os.environ.get("PATH", "").split(":")
    ):
        pytest.skip("wrk is not installed (Debian package wrk); the python generator is tested")
    out = bench(
        repo_root,
        "gateway_overhead",
        "--rounds=1",
        "--seconds=1",
        "--connections=4",
        BENCH_LOADGEN=loadgen,
    )
    for row in ("bare /health/live", "gateway /health/live", "gateway GET /api/v1/tasks/{id}"):
        assert row in out
    assert "/health/live throughput >= 0.8x bare" in out
    assert "1.00x" in out  # the baseline against itself


# It starts standalone twice, a gateway, the bare app and a worker (supervisor and worker
# process), each a fresh interpreter, and under coverage in CI each start takes longer.
@pytest.mark.timeout(300)
def test_startup_and_memory_prints_every_role(repo_root: Path) -> None:
    out = bench(repo_root, "startup_memory", "--rounds=1")
    for row in ("gateway to /health/ready", "standalone restart", "worker process (idle"):
        assert row in out
    assert "gateway idle <= 150 MB" in out


def test_task_submission_prints_both_baselines(repo_root: Path) -> None:
    out = bench(repo_root, "task_submission", "--rounds=1", "--seconds=1", "--connections=4")
    for row in (
        "plain apply_async loop",
        "Flower async-apply",
        "bare FastAPI POST /run (reference)",
        "same + contract on raw drivers (floor)",
        "gateway POST /api/v1/tasks/run",
    ):
        assert row in out
    assert "gateway >= 2x Flower" in out


def test_end_to_end_throughput_drains_both_queues(repo_root: Path) -> None:
    out = bench(repo_root, "e2e_throughput", "--runs=30", "--rounds=1", "--two-processes")
    for row in (
        "plain Celery no-op (baseline)",
        "same + ledger contract on raw drivers (floor)",
        "Switchyard system.echo, ledger to succeeded, defaults",
        "Switchyard system.echo, ledger to succeeded, WORKER_PROCESSES=2",
        "floor (raw drivers)",
    ):
        assert row in out
    assert "CPU milliseconds per run" in out
    assert "Switchyard, defaults, >= 1.0x plain Celery" in out
    assert "two worker processes >= 1.6x one" in out


def test_health_under_failure_times_a_silent_dependency(repo_root: Path) -> None:
    out = bench(repo_root, "health_failure", "--requests=5", "--failing-requests=2")
    assert re.search(r"/health, every dependency up\s+200\s", out)
    assert re.search(r"/health, Redis silent\s+503\s", out)  # not ready, and said in time
    assert "silent dependency <= 1100 ms" in out


def test_account_timing_compares_a_known_and_an_unknown_address(repo_root: Path) -> None:
    out = bench(repo_root, "account_timing", "--calls=2")
    for request in ("POST /auth/password-reset", "POST /auth/login, wrong password"):
        assert re.search(rf"{re.escape(request)}\s+[\d.]+\s+[\d.]+\s+[\d.]+x", out), out


def test_search_latency_measures_both_stores_against_numpy(repo_root: Path) -> None:
    out = bench(repo_root, "search_latency", "--chunks=300", "--queries=5", "--rounds=2")
    for row in ("NumPy exact, in memory (baseline)", "Chroma embedded", "Chroma server"):
        assert row in out
    assert "Chroma server (standalone) p50 <= 50 ms" in out


def test_embeddings_compare_the_runtime_with_the_numpy_pass(repo_root: Path) -> None:
    out = bench(repo_root, "embeddings", "--texts=32", "--rounds=1")
    for row in ("onnxruntime (product)", "NumPy forward pass (before)", "vectors within 1e-4"):
        assert row in out
    assert re.search(r"vectors within 1e-4\s+\S+\s+met", out)  # the same vectors, measured


def test_silent_redis_compares_a_silent_redis_with_an_answering_one(repo_root: Path) -> None:
    out = bench(repo_root, "silent_redis", "--requests=3")
    for row in (
        "GET /api/v1/tasks/?limit=1, Redis answering (baseline)",
        "GET /api/v1/tasks/?limit=1, Redis silent",
        "POST /api/v1/tasks/run, Redis silent",
    ):
        assert row in out
    assert "submissions, Redis silent: p50 <= baseline + 100 ms" in out


def test_io_bound_compares_every_system(repo_root: Path) -> None:
    out = bench(repo_root, "io_bound", "--runs=20", "--in-flight=10", "--prefork-runs=2")
    for row in ("Switchyard", "Celery threads 10", "arq", "taskiq", "Celery prefork 2"):
        assert row in out
    assert "PostgreSQL connections <= pool + overflow" in out
    assert "1.00x" in out  # Switchyard against itself


def test_fairness_compares_fair_share_with_fifo(repo_root: Path) -> None:
    out = bench(repo_root, "fairness", "--runs=30", "--cap=5", "--concurrency=10")
    for row in ("FIFO (fair share off)", "fair share (cap 5)"):
        assert row in out
    assert "B's p99 wait with fair share <= 1 s" in out
    assert "A's throughput with fair share >= 0.9x FIFO" in out


def test_image_measures_the_image_and_its_roles(repo_root: Path, image: str) -> None:
    out = bench(repo_root, "image", f"--image={image}", f"--baseline={image}", "--runs=20")
    for heading in ("Image size", f"Layers of {image}", "site-packages entries over 5 MB"):
        assert heading in out
    assert "1.00x" in out  # the image against itself
    for role in ("api-gateway", "worker", "beat"):
        assert re.search(rf"^{role}\s+\d+\s+\d+\s+\d+", out, re.M), out
    assert "image <= 700 MB" in out


def test_console_runs_page_compares_with_and_without_the_filter_indexes(repo_root: Path) -> None:
    out = bench(repo_root, "console_runs", "--runs=3000", "--requests=2", "--rounds=1")
    for row in ("newest 50", "state=dead_lettered", "task=reports.rare", "page 40 (cursor)"):
        assert row in out
    assert "every page p95 <= 300 ms at 3,000 runs" in out


def test_ledger_scale_measures_every_hot_path_at_both_sizes_and_retention(
    repo_root: Path,
) -> None:
    out = bench(
        repo_root,
        "ledger_scale",
        "--runs=30000",
        "--small=3000",
        "--tenants=30",
        "--samples=5",
        "--requests=10",
    )
    for row in ("submit: idempotency key", "list runs: next page (cursor)", "API: get run"):
        assert row in out
    assert "every hot figure at 30,000 within 2x of 3,000" in out
    assert "API p99 while retention deletes the runs within 1.5x of before" in out
    # About one run in ten was seeded expired; the pass removed them.
    removed = re.search(r"^runs\s+([\d,]+)", out, re.MULTILINE)
    assert removed is not None, out
    assert 2_500 <= int(removed.group(1).replace(",", "")) <= 3_500


def test_llm_budget_prints_each_trials_overshoot_and_the_reservations_cost(
    repo_root: Path,
) -> None:
    out = bench(repo_root, "llm_budget", "--trials=2", "--spenders=5", "--calls=5")
    assert re.search(r"^1\s+\d+\s+\d+\s+\d+\s+\d+\s+\d+\s+\d+", out, re.MULTILINE), out
    assert "overshoot < one call's tokens, every trial" in out
    assert "reservation and settlement: +" in out


def test_tenant_deletion_prints_what_went_and_the_other_tenants_p99(repo_root: Path) -> None:
    out = bench(repo_root, "tenant_deletion", "--runs=3000", "--documents=30", "--requests=30")
    assert re.search(r"^runs removed\s+3,000\s*$", out, re.MULTILINE), out
    assert re.search(r"^objects removed\s+30\s*$", out, re.MULTILINE), out
    assert re.search(r"^during the deletion\s+\d+\s+[\d.]+\s+[\d.]+", out, re.MULTILINE), out
    assert re.search(r"nothing of the tenant left \(runs, objects\)\s+0, 0\s+met", out), out


def test_metering_prints_both_sides_of_both_paths(repo_root: Path) -> None:
    out = bench(repo_root, "metering", "--rounds=2", "--seconds=1", "--runs=200", "--e2e-rounds=1")
    for what in (
        "single submissions, runs/s",
        "single submissions, gateway CPU ms/run",
        "no-op end to end, runs/s",
    ):
        assert re.search(rf"^{what}\s+\d+\s+[\d,.]+ ±\d+%\s+[\d,.]+ ±\d+%", out, re.MULTILINE), out
    assert "metering on within 5 % of off" in out


def test_tracing_cost_prints_off_against_before_and_on_against_off(repo_root: Path) -> None:
    # HEAD as the baseline: always in the clone (a shallow one has no older commit).
    out = bench(
        repo_root,
        "tracing_cost",
        "--baseline=HEAD",
        "--rounds=1",
        "--seconds=1",
        "--runs=200",
        "--e2e-rounds=1",
        "--on",
    )
    for what in ("single submissions, runs/s", "no-op end to end, runs/s"):
        assert len(re.findall(rf"^{what}\s+\d+\s+[\d,.]+ ±\d+%", out, re.MULTILINE)) == 2, out
    assert "tracing off within 5 % of before" in out
    assert "TRACING on (every span exported) against off" in out


def test_tracing_hooks_counts_the_calls_tracing_off_makes_per_run(repo_root: Path) -> None:
    out = bench(repo_root, "tracing_hooks", "--runs=20")
    # Both roles call into switchyard.tracing for every run (its flag tests), and say what it
    # costs against their CPU per run.
    for role in ("gateway", "worker"):
        assert re.search(rf"^{role}\s+enabled\s+[1-9][\d.]*\s+\d+", out, re.MULTILINE), out
        assert re.search(rf"^{role}\s+all hooks\s+\d+ ns/run\s+CPU [\d.]+ ms/run", out, re.M), out
    assert "tracing off: under 1 % of a run's CPU, gateway and worker" in out


def test_workflows_compares_a_map_and_chains_with_celery(repo_root: Path) -> None:
    out = bench(repo_root, "workflows", "--items=20", "--workflows=5")
    for row in (
        "Celery chord of 20 + total (baseline)",
        "Switchyard map of 20 + total",
        "Switchyard 5 workflows of 5 steps",
        "Switchyard 25 single runs in bulk (no workflow)",
    ):
        assert row in out
    assert "a step run costs <= 1.5x a single run" in out

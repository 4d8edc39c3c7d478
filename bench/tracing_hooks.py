"""What tracing costs when it is off, counted rather than timed: the calls into
`switchyard.tracing` a run makes when TRACING=false (the product's default), times what one
such call costs here, against the CPU a run costs the gateway and the worker.

bench.tracing_cost times off against the code before tracing, and two shared cores resolve
about ±6 % there; this bound does not depend on that noise. A gateway and a worker run with a
counter (a `sitecustomize` on PYTHONPATH: a profile hook counting calls into tracing.py, in
every process, written out as it goes), N single submissions are made and drained, and each
hook is then timed in this process (off, as the roles have it). A second pass without the
counter gives the CPU per run of each role.
Target (issue 36): tracing off costs a run under 1 % of its CPU (a few flag tests).
Usage: uv run python -m bench.tracing_hooks [--runs 400]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import timeit
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from bench.e2e_throughput import ledger_progress
from bench.gateway_overhead import account
from bench.harness import (
    DEFAULT_REDIS,
    SWITCHYARD,
    free_port,
    print_table,
    print_targets,
    process,
    role_env,
    scratch_database,
    scratch_vhost,
    wait_http,
)
from bench.metering import own_cpu
from bench.task_submission import RUN, uncap
from switchyard import tracing

COUNTER = """
import collections, json, os, sys, threading, time
_where = os.environ.get("SWITCHYARD_HOOK_COUNTS")
if _where:
    _counts = collections.Counter()
    _file = os.sep + os.path.join("switchyard", "tracing.py")

    def _count(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.endswith(_file):
            _counts[frame.f_code.co_name] += 1

    def _dump():
        path = os.path.join(_where, f"{os.getpid()}.json")
        while True:
            time.sleep(0.2)
            with open(path + ".tmp", "w") as out:
                json.dump({"argv": sys.argv, "counts": dict(_counts)}, out)
            os.replace(path + ".tmp", path)

    sys.setprofile(_count)
    threading.setprofile(_count)
    threading.Thread(target=_dump, daemon=True).start()
"""
# Context managers are generators: a use is two "call" events (entered, then resumed to exit).
GENERATORS = {"attempt_span", "group_span", "llm_span"}


def hook_costs() -> dict[str, float]:
    """Nanoseconds per call of each hook, tracing off (as the roles have it)."""
    assert not tracing.enabled()

    def timed(call: Callable[[], object]) -> float:
        number = 200_000
        return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e9

    def attempt() -> None:
        with tracing.attempt_span("system.echo", None, {}):
            pass

    def group() -> None:
        with tracing.group_span("claim", []):
            pass

    def llm() -> None:
        with tracing.llm_span("chat", "glm-4-flash", "chat"):
            pass

    return {
        "enabled": timed(tracing.enabled),
        "current_traceparent": timed(tracing.current_traceparent),
        "span_context": timed(tracing.span_context),
        "attempt_span": timed(attempt),
        "group_span": timed(group),
        "llm_span": timed(llm),
        "instrument_engine": 0.0,  # at start-up only
        "configure": 0.0,
        "instrument_app": 0.0,
    }


def submit(base: str, token: str, runs: int) -> list[uuid.UUID]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}

    def one(_: int) -> uuid.UUID:
        accepted = httpx.post(f"{base}/api/v1/tasks/run", content=RUN, headers=headers, timeout=30)
        accepted.raise_for_status()
        return uuid.UUID(accepted.json()["task_id"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(runs)))


def counted_pass(
    args: argparse.Namespace, counted: bool
) -> tuple[dict[str, dict[str, int]], dict[str, float]]:
    """One pass of `args.runs` single submissions drained by one worker, after a warm-up
    drained the same way: the hook calls of each role (when `counted`) and the CPU seconds
    each role spent on the runs."""
    with contextlib.ExitStack() as stack:
        database = stack.enter_context(scratch_database())
        broker = stack.enter_context(scratch_vhost())
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hooks-")))
        (scratch / "site").mkdir()
        (scratch / "counts").mkdir()
        (scratch / "site" / "sitecustomize.py").write_text(COUNTER)
        extra = {"TRACING": "false", "LOG_LEVEL": "WARNING"}
        if counted:
            paths = [str(scratch / "site"), os.environ.get("PYTHONPATH", "")]
            extra |= {
                "PYTHONPATH": os.pathsep.join(filter(None, paths)),
                "SWITCHYARD_HOOK_COUNTS": str(scratch / "counts"),
            }
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        common = {"DATABASE_URL": database, "REDIS_URL": DEFAULT_REDIS, "CELERY_BROKER_URL": broker}
        gateway = stack.enter_context(
            process(
                [SWITCHYARD, "run", "api-gateway"],
                role_env(**common, **extra, API_HOST="127.0.0.1", API_PORT=str(port)),
            )
        )
        worker = stack.enter_context(
            process([SWITCHYARD, "run", "worker"], role_env(**common, **extra))
        )
        wait_http(f"{base}/health/ready", gateway)
        token, tenant = account(base)
        uncap(database, tenant)
        roles = {"gateway": psutil.Process(gateway.pid), "worker": psutil.Process(worker.pid)}

        def drained(ids: list[uuid.UUID]) -> None:
            deadline = time.monotonic() + 600
            while asyncio.run(ledger_progress(database, ids))[0] < len(ids):
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the worker did not drain the runs")
                time.sleep(0.1)
            time.sleep(0.5)  # the counters' files are written every 0.2 s

        drained(submit(base, token, 32))  # warm-up
        counts_before = read_counts(scratch / "counts")
        cpu_before = {role: own_cpu(watched) for role, watched in roles.items()}
        drained(submit(base, token, args.runs))
        cpu = {role: own_cpu(watched) - cpu_before[role] for role, watched in roles.items()}
        counts = read_counts(scratch / "counts")
    calls: dict[str, dict[str, int]] = {"gateway": {}, "worker": {}}
    for pid, after in counts.items():
        role = "gateway" if pid == gateway.pid else "worker"
        for name, count in minus(after, counts_before.get(pid, {})).items():
            calls[role][name] = calls[role].get(name, 0) + count
    return calls, cpu


def read_counts(directory: Path) -> dict[int, dict[str, int]]:
    found: dict[int, dict[str, int]] = {}
    for path in directory.glob("*.json"):
        found[int(path.stem)] = json.loads(path.read_text())["counts"]
    return found


def minus(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {name: count - before.get(name, 0) for name, count in after.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400)
    args = parser.parse_args(argv)
    costs = hook_costs()
    calls, _ = counted_pass(args, counted=True)
    _, cpu = counted_pass(args, counted=False)
    rows = []
    shares = {}
    for role in ("gateway", "worker"):
        per_run_ns = 0.0
        for name, count in sorted(calls[role].items()):
            if not count:
                continue
            uses = count / (2 if name in GENERATORS else 1) / args.runs
            per_run_ns += uses * costs.get(name, 0.0)
            rows.append((role, name, f"{uses:.2f}", f"{costs.get(name, 0.0):.0f}"))
        cpu_ns = cpu[role] / args.runs * 1e9
        shares[role] = per_run_ns / cpu_ns
        rows.append(
            (role, "all hooks", f"{per_run_ns:.0f} ns/run", f"CPU {cpu_ns / 1e6:.2f} ms/run")
        )
    print_table(
        f"Tracing off: calls into switchyard.tracing per run ({args.runs} single submissions)",
        ("role", "hook", "uses per run", "ns per use"),
        rows,
    )
    worst = max(shares.values())
    print_targets(
        [
            (
                "tracing off: under 1 % of a run's CPU, gateway and worker",
                ", ".join(f"{role} {share:.4%}" for role, share in shares.items()),
                worst < 0.01,
            )
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

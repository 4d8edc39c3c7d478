"""What usage metering costs the hot paths: single submissions and no-op runs end to end, with
USAGE_METERING on (the product's default) and off, in one build and one sitting.

Single submissions (`POST /api/v1/tasks/run`, `--connections` at a time, wrk): two gateway
processes on one scratch database and vhost, one with metering on and one off, each with a
tenant of its own; `--rounds` rounds, each measuring both for `--seconds`, in alternating order,
the queue and the ledger drained between rounds (bench.task_submission's `drain`). What
metering adds there: the count of each accepted run (one upsert a second per process) and the
plan's limits read with the caller.

End to end (bench.e2e_throughput's round: `--runs` no-op runs queued in bulk, then one worker
drains them, the rate from the ledger's times): `--e2e-rounds` pairs, alternating order. What
metering adds there: the attempts and their milliseconds counted in the outcome's statement.

On this machine identical runs spread about ±20 %: the verdict compares medians over many
alternating rounds, and prints the median of the paired ratios too. What a request costs is
steadier than how many fit in a second on two shared cores: single submissions also report the
CPU the gateway process (with any children) spent per accepted run, and PostgreSQL's.
Target (issue 35): on and off within 5 % of each other on both.
Usage: uv run python -m bench.metering [--rounds 12] [--seconds 6] [--connections 16]
       [--runs 3000] [--e2e-rounds 6]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import psutil

from bench.e2e_throughput import switchyard_round
from bench.gateway_overhead import account
from bench.harness import (
    DEFAULT_REDIS,
    SWITCHYARD,
    Figures,
    cpu_seconds,
    free_port,
    load,
    print_table,
    print_targets,
    process,
    role_env,
    scratch_database,
    scratch_vhost,
    wait_http,
)
from bench.task_submission import RUN, drain, uncap
from switchyard.settings import Settings

TARGET = 0.05
SIDES = ("on", "off")


def metering(args: argparse.Namespace, side: str) -> str:
    return "true" if side == "on" or args.same else "false"


def own_cpu(process: psutil.Process) -> float:
    """CPU seconds a process and its children (alive now) have used."""
    family = [process, *process.children(recursive=True)]
    return sum(sum(member.cpu_times()[:2]) for member in family)


Rates = dict[str, list[float]]


def submissions(
    args: argparse.Namespace, envs: dict[str, dict[str, str]]
) -> tuple[Rates, Rates, Rates]:
    """Runs accepted per second by each side (its gateway started with `envs[side]` added),
    round by round; the gateway's and PostgreSQL's CPU milliseconds per accepted run."""
    sides = tuple(envs)
    rates: Rates = {side: [] for side in sides}
    gateway_ms: Rates = {side: [] for side in sides}
    database_ms: Rates = {side: [] for side in sides}
    with scratch_database() as database_url, scratch_vhost() as broker:
        ports = {side: free_port() for side in sides}
        roles = {
            side: role_env(
                DATABASE_URL=database_url,
                REDIS_URL=DEFAULT_REDIS,
                CELERY_BROKER_URL=broker,
                API_HOST="127.0.0.1",
                API_PORT=str(ports[side]),
                **envs[side],
            )
            for side in sides
        }
        with contextlib.ExitStack() as stack:
            gateways = {
                side: stack.enter_context(process([SWITCHYARD, "run", "api-gateway"], roles[side]))
                for side in sides
            }
            for side, gateway in gateways.items():
                wait_http(f"http://127.0.0.1:{ports[side]}/health/ready", gateway)
            targets = {}
            for side in sides:
                base = f"http://127.0.0.1:{ports[side]}"
                token, tenant = account(base)
                uncap(database_url, tenant)
                headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
                targets[side] = (f"{base}/api/v1/tasks/run", headers, tenant)
            for side in sides:  # warm-up
                url, headers, _ = targets[side]
                load(url, 2.0, args.connections, headers, RUN)
            watched = {side: psutil.Process(gateway.pid) for side, gateway in gateways.items()}
            for index in range(args.rounds):
                order = sides if index % 2 == 0 else tuple(reversed(sides))
                for side in order:
                    url, headers, tenant = targets[side]
                    gateway_before = own_cpu(watched[side])
                    database_before = cpu_seconds().get("postgres", 0.0)
                    measured = load(url, args.seconds, args.connections, headers, RUN)
                    database_cpu = cpu_seconds().get("postgres", 0.0) - database_before
                    gateway_cpu = own_cpu(watched[side]) - gateway_before
                    accepted = max(measured.requests_per_second * args.seconds, 1.0)
                    rates[side].append(measured.requests_per_second)
                    gateway_ms[side].append(gateway_cpu * 1000 / accepted)
                    database_ms[side].append(database_cpu * 1000 / accepted)
                    drain(database_url, tenant, broker)
                    time.sleep(0.5)
    return rates, gateway_ms, database_ms


def end_to_end(args: argparse.Namespace, envs: dict[str, dict[str, str]]) -> Rates:
    """No-op runs to `succeeded` per second, by side (gateway and worker started with
    `envs[side]` added), pair by pair."""
    sides = tuple(envs)
    rates: Rates = {side: [] for side in sides}
    with scratch_database() as database, scratch_vhost() as broker:
        for index in range(args.e2e_rounds):
            order = sides if index % 2 == 0 else tuple(reversed(sides))
            for side in order:
                drained = switchyard_round(
                    database, broker, args.runs, args.concurrency, extra=envs[side]
                )
                rates[side].append(drained.rate)
    return rates


def paired(rates: Rates, sides: tuple[str, str]) -> float:
    """The median of the first side over the second, pair by pair (measured back to back)."""
    first, second = sides
    return statistics.median(a / b for a, b in zip(rates[first], rates[second], strict=True))


def report(
    title: str, sides: tuple[str, str], measured: list[tuple[str, Rates, bool]], target: str
) -> None:
    """The table of both sides' figures, and the verdict on each judged one: `sides[0]`
    within 5 % of `sides[1]` (medians)."""
    first, second = sides
    rows, targets = [], []
    for what, rates, judged in measured:
        if not rates[first]:
            continue
        a, b = Figures(tuple(rates[first])), Figures(tuple(rates[second]))
        by_medians = a.median / b.median
        by_pairs = paired(rates, sides)
        rows.append([what, len(rates[first]), a, b, f"{by_medians:.3f}", f"{by_pairs:.3f}"])
        if judged:
            targets.append(
                (
                    f"{what}: {target} (medians; pairs)",
                    f"{by_medians - 1:+.1%}; {by_pairs - 1:+.1%}",
                    abs(by_medians - 1) <= TARGET,
                )
            )
    ratio = f"{first}/{second}"
    print_table(
        f"{title}, alternating rounds (median ±half-range)",
        ["what", "rounds", first, second, f"{ratio} (medians)", f"{ratio} (pairs)"],
        rows,
    )
    print_targets(targets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--e2e-rounds", type=int, default=6)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=Settings.model_fields["worker_concurrency"].default,
        help="WORKER_CONCURRENCY (the product's default)",
    )
    parser.add_argument(
        "--same",
        action="store_true",
        help="both sides with metering on: what the harness itself makes of two equal sides",
    )
    args = parser.parse_args(argv)

    envs = {side: {"USAGE_METERING": metering(args, side)} for side in SIDES}
    empty: Rates = {side: [] for side in SIDES}
    submitted, gateway_ms, database_ms = (
        submissions(args, envs) if args.rounds else (empty, empty, empty)
    )
    drained = end_to_end(args, envs) if args.e2e_rounds else empty
    report(
        "USAGE_METERING on and off",
        SIDES,
        [
            ("single submissions, runs/s", submitted, True),
            ("single submissions, gateway CPU ms/run", gateway_ms, True),
            ("single submissions, PostgreSQL CPU ms/run", database_ms, False),
            ("no-op end to end, runs/s", drained, True),
        ],
        "metering on within 5 % of off",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

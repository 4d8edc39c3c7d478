"""Account enumeration by timing: the real gateway process asked, interleaved, for a password
reset, another verification link and a sign-in with a wrong password, for an address that has
an account and one that has none. Prints each median and their ratio (1.00x: nothing told).

Usage: uv run python -m bench.account_timing [--calls 24]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import httpx

from bench.harness import (
    DEFAULT_REDIS,
    SWITCHYARD,
    free_port,
    print_table,
    process,
    role_env,
    scratch_database,
    scratch_vhost,
    wait_http,
)

PASSWORD = "bench password, long enough"  # noqa: S105 - a throwaway account
ASKS = {
    "POST /auth/password-reset": ("/api/v1/auth/password-reset", False),
    "POST /auth/verify-email/resend": ("/api/v1/auth/verify-email/resend", False),
    "POST /auth/login, wrong password": ("/api/v1/auth/login", True),
}


def timed(client: httpx.Client, path: str, body: dict[str, str]) -> float:
    started = time.perf_counter()
    answer = client.post(path, json=body)
    took = (time.perf_counter() - started) * 1000
    if answer.status_code not in (202, 401):
        raise RuntimeError(f"{path}: {answer.status_code} {answer.text}")
    return took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=24, help="calls per address and request")
    args = parser.parse_args(argv)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with scratch_database() as database, scratch_vhost() as broker:
        env = role_env(
            DATABASE_URL=database,
            REDIS_URL=DEFAULT_REDIS,
            CELERY_BROKER_URL=broker,
            SMTP_HOST="127.0.0.1",  # email can be sent; no worker sends it here
            RATE_LIMIT_LOGIN_FAILURES="100000/minute",
            RATE_LIMIT_ACCOUNT_EMAIL="100000/hour",
            API_HOST="127.0.0.1",
            API_PORT=str(port),
        )
        with process([SWITCHYARD, "run", "api-gateway"], env) as gateway:
            wait_http(f"{base}/health/ready", gateway)
            known = f"bench-{uuid.uuid4().hex[:8]}@example.com"
            with httpx.Client(base_url=base, timeout=30) as client:
                registered = client.post(
                    "/api/v1/auth/register",
                    json={"email": known, "password": PASSWORD, "tenant_name": "Bench"},
                )
                registered.raise_for_status()
                times: dict[tuple[str, str], list[float]] = {}
                for name, (path, password) in ASKS.items():
                    for _ in range(3):  # warm-up
                        timed(client, path, body(unknown(), password))
                    for _ in range(args.calls):
                        for who, address in (("has an account", known), ("has none", unknown())):
                            took = timed(client, path, body(address, password))
                            times.setdefault((name, who), []).append(took)
    rows = []
    for name in ASKS:
        with_account = statistics.median(times[(name, "has an account")])
        without = statistics.median(times[(name, "has none")])
        rows.append(
            [name, f"{with_account:.1f}", f"{without:.1f}", f"{with_account / without:.2f}x"]
        )
    print_table(
        f"Account enumeration by timing: {args.calls} interleaved calls per address (median ms)",
        ["request", "address with an account", "address with none", "ratio"],
        rows,
    )
    return 0


def unknown() -> str:
    return f"nobody-{uuid.uuid4().hex[:10]}@example.com"


def body(address: str, password: bool) -> dict[str, str]:
    return {"email": address, "password": "not the password!"} if password else {"email": address}


if __name__ == "__main__":
    raise SystemExit(main())

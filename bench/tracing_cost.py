"""What tracing costs when it is off: this checkout with TRACING=false (the product's default)
against the code before tracing existed, in one sitting; and, with `--on`, what it costs when
on (every span exported to a local OTLP sink that answers at once).

The earlier code runs from a git worktree of `--baseline` (by default 55929e2, the commit
before tracing) put first on PYTHONPATH, against the same scratch database (migrated by this
checkout: a column the earlier code does not know is left null). Same harness as
bench.metering: single submissions (rate and the gateway's CPU per accepted run) and no-op runs
end to end, in alternating rounds.
Target (issue 36): off within 5 % of before, on both paths.
Usage: uv run python -m bench.tracing_cost [--baseline REV] [--on] [--rounds 12]
       [--seconds 6] [--runs 3000] [--e2e-rounds 4]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.harness import ROOT, free_port
from bench.metering import Rates, end_to_end, report, submissions
from switchyard.settings import Settings

BEFORE_TRACING = "55929e2"


@contextlib.contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """The repository at `revision`, in a temporary worktree removed after."""
    git = shutil.which("git") or "git"
    with tempfile.TemporaryDirectory(prefix="switchyard-baseline-") as scratch:
        path = Path(scratch) / "tree"
        subprocess.run(
            [git, "worktree", "add", "--detach", str(path), revision],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            yield path
        finally:
            subprocess.run(
                [git, "worktree", "remove", "--force", str(path)],
                cwd=ROOT,
                check=False,
                capture_output=True,
            )


@contextlib.contextmanager
def otlp_sink() -> Iterator[str]:
    """An OTLP/HTTP endpoint that takes every export and answers 200 at once."""

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BEFORE_TRACING)
    parser.add_argument("--on", action="store_true", help="also TRACING on against off")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--e2e-rounds", type=int, default=4)
    parser.add_argument(
        "--concurrency", type=int, default=Settings.model_fields["worker_concurrency"].default
    )
    args = parser.parse_args(argv)

    with worktree(args.baseline) as tree:
        before = {"PYTHONPATH": f"{tree / 'apps' / 'backend' / 'src'}:{tree}"}
        envs = {"off": {"TRACING": "false"}, "before": before}
        empty: Rates = {side: [] for side in envs}
        submitted, gateway_ms, _ = submissions(args, envs) if args.rounds else (empty, empty, empty)
        drained = end_to_end(args, envs) if args.e2e_rounds else empty
    report(
        f"TRACING off against the code before tracing ({args.baseline})",
        ("off", "before"),
        [
            ("single submissions, runs/s", submitted, True),
            ("single submissions, gateway CPU ms/run", gateway_ms, True),
            ("no-op end to end, runs/s", drained, True),
        ],
        "tracing off within 5 % of before",
    )
    if args.on:
        with otlp_sink() as endpoint:
            on = {"TRACING": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
            envs = {"on": on, "off": {"TRACING": "false"}}
            empty = {side: [] for side in envs}
            submitted, gateway_ms, _ = (
                submissions(args, envs) if args.rounds else (empty, empty, empty)
            )
            drained = end_to_end(args, envs) if args.e2e_rounds else empty
        report(
            "TRACING on (every span exported) against off",
            ("on", "off"),
            [
                ("single submissions, runs/s", submitted, False),
                ("single submissions, gateway CPU ms/run", gateway_ms, False),
                ("no-op end to end, runs/s", drained, False),
            ],
            "(information)",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

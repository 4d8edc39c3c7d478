"""Search latency on 10,000 stored chunks, the embedding call excluded.

What is timed is what `POST /search` does after the query is embedded: the vector query of
the tenant's collection (top 5 by cosine, 384 dimensions, as all-MiniLM-L6-v2 gives) and the
mapping of the matches. Both vector stores are measured: the embedded `PersistentClient` and
a `chroma run` server (standalone's setup). Baseline, in the same run: an exact NumPy top-5 over
the same vectors held in memory. Each store is filled once; the queries run in rounds, and the
table gives the median over rounds of each round's p50 and p95.
Target: p50 <= 50 ms on 10,000 chunks.
Usage: uv run python -m bench.search_latency [--chunks 10000] [--queries 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np

from bench.harness import Figures, print_table, print_targets, ratio
from switchyard.embedded.process import free_port
from switchyard.services.vectors import VectorChunk, VectorStore

DIMENSIONS = 384
DOCUMENTS = 200
Rounds = list[tuple[float, float]]  # (p50, p95) in ms, one pair per round


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.95) - 1]


async def fill(store: VectorStore, tenant: uuid.UUID, vectors: np.ndarray) -> None:
    documents = [uuid.uuid4() for _ in range(DOCUMENTS)]
    rows = [
        VectorChunk(
            id=f"c{i}",
            document_id=documents[i % DOCUMENTS],
            text=f"chunk {i} " + "lorem ipsum dolor sit amet " * 30,
            embedding=vector.tolist(),
            metadata={"chunk_index": i // DOCUMENTS, "start": 0, "end": 800, "title": "bench"},
        )
        for i, vector in enumerate(vectors)
    ]
    for start in range(0, len(rows), 1000):
        await store.upsert(tenant, rows[start : start + 1000])


async def timed(query: Callable[[], Awaitable[object]], queries: int, rounds: int) -> Rounds:
    await query()  # warm: the collection is opened and cached
    measured: Rounds = []
    for _ in range(rounds):
        samples = []
        for _ in range(queries):
            started = time.perf_counter()
            await query()
            samples.append((time.perf_counter() - started) * 1000)
        measured.append(percentiles(samples))
    return measured


async def measure(
    store: VectorStore, vectors: np.ndarray, probes: np.ndarray, rounds: int
) -> Rounds:
    tenant = uuid.uuid4()
    await fill(store, tenant, vectors)
    position = iter(range(10**9))

    async def query() -> object:
        probe = probes[next(position) % len(probes)].tolist()
        return await store.query(tenant, probe, top_k=5)

    return await timed(query, len(probes), rounds)


def start_server(path: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    executable = shutil.which("chroma", path=str(Path(sys.executable).parent)) or "chroma"
    process = subprocess.Popen(
        [executable, "run", "--host", "127.0.0.1", "--port", str(port), "--path", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).is_success:
                return process, port
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("chroma run did not start")


async def run(chunks: int, queries: int, rounds: int) -> dict[str, Rounds]:
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((chunks, DIMENSIONS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    probes = rng.standard_normal((queries, DIMENSIONS)).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)

    position = iter(range(10**9))

    async def brute_force() -> object:
        probe = probes[next(position) % len(probes)]
        scores = vectors @ probe
        return np.argpartition(-scores, 5)[:5]

    results = {"NumPy exact, in memory (baseline)": await timed(brute_force, queries, rounds)}
    with tempfile.TemporaryDirectory() as scratch:
        embedded = VectorStore(path=Path(scratch) / "embedded")
        results["Chroma embedded"] = await measure(embedded, vectors, probes, rounds)
        await embedded.close()
        process, port = start_server(Path(scratch) / "server")
        try:
            server = VectorStore(host="127.0.0.1", port=port)
            results["Chroma server (standalone)"] = await measure(server, vectors, probes, rounds)
            await server.close()
        finally:
            process.terminate()
            process.wait(10)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.chunks, args.queries, args.rounds))

    def p50(name: str) -> Figures:
        return Figures(tuple(p50 for p50, _ in results[name]))

    def p95(name: str) -> Figures:
        return Figures(tuple(p95 for _, p95 in results[name]))

    baseline = p50("NumPy exact, in memory (baseline)").median
    print_table(
        f"Search: {args.chunks:,} chunks, {DIMENSIONS} dimensions, top 5, {args.queries} queries "
        f"x {args.rounds} rounds (median ±half-range of the rounds' percentiles, ms)",
        ["store", "p50 ms", "p95 ms", "p50 vs NumPy"],
        [[name, p50(name), p95(name), ratio(p50(name).median, baseline)] for name in results],
    )
    print_targets(
        [
            [
                f"{name} p50 <= 50 ms",
                f"{p50(name).median:.1f} ms",
                p50(name).median <= 50,
            ]
            for name in results
            if name.startswith("Chroma")
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

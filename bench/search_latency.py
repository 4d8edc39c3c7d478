"""Search latency on 10,000 stored chunks, the embedding call excluded.

What is timed is what `POST /search` does after the query is embedded: the vector query of
the tenant's collection (top 5 by cosine, 384 dimensions, as all-MiniLM-L6-v2 gives) and the
mapping of the matches. Both vector stores are measured: the embedded `PersistentClient` and
a `chroma run` server (standalone's setup). Baseline, in the same run: an exact NumPy top-5 over
the same vectors held in memory. Target: p50 under 50 ms.
Usage: uv run python bench/search_latency.py [CHUNKS] [QUERIES]
"""

from __future__ import annotations

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

from switchyard.embedded.process import free_port
from switchyard.services.vectors import VectorChunk, VectorStore

DIMENSIONS = 384
DOCUMENTS = 200


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


async def timed(query: Callable[[], Awaitable[object]], queries: int) -> list[float]:
    await query()  # warm: the collection is opened and cached
    samples = []
    for _ in range(queries):
        started = time.perf_counter()
        await query()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def measure(store: VectorStore, vectors: np.ndarray, probes: np.ndarray) -> list[float]:
    tenant = uuid.uuid4()
    await fill(store, tenant, vectors)
    position = iter(range(10**9))

    async def query() -> object:
        probe = probes[next(position) % len(probes)].tolist()
        return await store.query(tenant, probe, top_k=5)

    return await timed(query, len(probes))


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


async def main(chunks: int, queries: int) -> None:
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

    baseline = await timed(brute_force, queries)
    with tempfile.TemporaryDirectory() as scratch:
        embedded = VectorStore(path=Path(scratch) / "embedded")
        in_process = await measure(embedded, vectors, probes)
        await embedded.close()
        process, port = start_server(Path(scratch) / "server")
        try:
            server = VectorStore(host="127.0.0.1", port=port)
            over_http = await measure(server, vectors, probes)
            await server.close()
        finally:
            process.terminate()
            process.wait(10)

    base50, base95 = percentiles(baseline)
    print(f"chunks {chunks}, {DIMENSIONS} dimensions, top 5, {queries} queries each")
    print(f"{'':34}{'p50 ms':>10}{'p95 ms':>10}{'p50 / baseline':>16}")
    print(f"{'baseline: NumPy exact, in memory':34}{base50:10.3f}{base95:10.3f}{1:16.1f}")
    for name, samples in (
        ("Chroma embedded", in_process),
        ("Chroma server (standalone)", over_http),
    ):
        p50, p95 = percentiles(samples)
        print(f"{name:34}{p50:10.3f}{p95:10.3f}{p50 / base50:16.1f}")
    print("target: p50 under 50 ms")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    asyncio.run(
        main(
            int(arguments[0]) if arguments else 10_000,
            int(arguments[1]) if len(arguments) > 1 else 200,
        )
    )

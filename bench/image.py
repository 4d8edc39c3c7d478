"""The image: its size, its layers, what each large dependency costs, and each role's memory.

Compares the image (default switchyard:test) with a baseline image (`--baseline`, e.g. one
built from an earlier commit) in one run: total size, each layer's size (a source change ships
the project's layer only), and the site-packages distributions over 5 MB of each (measured by
`du` in a container). Then, unless `--no-roles`, it starts api-gateway, worker and beat
containers of the image (`--network host`, a scratch database and RabbitMQ vhost) and samples
their memory and CPU (`docker stats`) idle and while `--runs` runs of `system.sleep` (1 s) are
submitted through the API and drained: the figures behind the Kubernetes resource requests.

Targets: image <= 700 MB; the project's layer <= 5 MB.
Usage: uv run python -m bench.image [--image switchyard:test] [--baseline switchyard:before]
       [--runs 600] [--no-roles]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from bench.gateway_overhead import account
from bench.harness import (
    DEFAULT_REDIS,
    free_port,
    print_table,
    print_targets,
    ratio,
    scratch_database,
    scratch_vhost,
)

DOCKER = shutil.which("docker") or "docker"
MB = 1e6
SITE = "/app/.venv/lib/python3.11/site-packages"
LARGE_MB = 5.0


def docker(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=True
    )
    return result.stdout


def image_size(tag: str) -> float:
    return float(docker("image", "inspect", "-f", "{{.Size}}", tag).strip()) / MB


def layers(tag: str) -> list[tuple[str, float]]:
    """(instruction, MB) of each layer over 1 kB, newest first."""
    out = docker("history", "--no-trunc", "--format", "{{json .}}", tag)
    rows = []
    for line in out.splitlines():
        entry = json.loads(line)
        size = _bytes(entry["Size"]) / MB
        if size > 0.001:
            rows.append((entry["CreatedBy"].replace("/bin/sh -c #(nop) ", "")[:70], size))
    return rows


def _bytes(text: str) -> float:
    units = {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def packages(tag: str) -> dict[str, float]:
    """MB of each top-level entry of site-packages (package directories with their .libs)."""
    out = docker(
        "run", "--rm", "--network", "host", "--entrypoint", "sh", tag, "-c",
        f"du -sk {SITE}/*",
        timeout=120,
    )  # fmt: skip
    sizes: dict[str, float] = {}
    for line in out.splitlines():
        kilobytes, path = line.split("\t", 1)
        name = path.rsplit("/", 1)[1]
        if name.endswith((".dist-info", ".pth")):
            continue
        name = name.removesuffix(".libs")
        sizes[name] = sizes.get(name, 0.0) + int(kilobytes) * 1024 / MB
    return sizes


@contextmanager
def container(tag: str, role: str, env: dict[str, str]) -> Iterator[str]:
    name = f"switchyard-bench-{role}-{uuid.uuid4().hex[:6]}"
    options = ["--read-only", "--tmpfs", "/app/var:uid=10001,gid=10001,size=1g"]
    for key, value in {**env, "SERVICE_TYPE": role}.items():
        options += ["-e", f"{key}={value}"]
    docker("run", "-d", "--name", name, "--network", "host", *options, tag)
    try:
        yield name
    finally:
        subprocess.run([DOCKER, "rm", "-f", name], capture_output=True, check=False)


def stats(names: list[str]) -> dict[str, tuple[float, float]]:
    """(MiB, CPU %) of each container now."""
    out = docker("stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}} {{.CPUPerc}}", *names)
    sampled = {}
    for line in out.splitlines():
        name, usage, _, _, cpu = line.split()
        mib = _bytes(usage.replace("MiB", "MB").replace("GiB", "GB")) / MB
        sampled[name] = (mib, float(cpu.rstrip("%")))
    return sampled


def wait_healthy(names: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for name in names:
        while docker("inspect", "-f", "{{.State.Health.Status}}", name).strip() != "healthy":
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} not healthy within {timeout:g} s")
            time.sleep(0.5)


def roles(tag: str, runs: int) -> list[list[object]]:
    port = free_port()
    with scratch_database() as database, scratch_vhost() as broker:
        env = {
            "DATABASE_URL": database,
            "REDIS_URL": DEFAULT_REDIS,
            "CELERY_BROKER_URL": broker,
            "CACHE_NAMESPACE": f"bench-{uuid.uuid4().hex[:6]}",
            "CHROMA_HOST": "127.0.0.1",
            "CHROMA_PORT": "9",
            "WORKER_METRICS_PORT": "0",
            "BEAT_METRICS_PORT": "0",
            "RATE_LIMIT_TASK_RUNS": "1000000/minute",
            "RATE_LIMIT_API": "1000000/minute",
        }
        with (
            container(tag, "api-gateway", {**env, "API_PORT": str(port)}) as gateway,
            container(tag, "worker", env) as worker,
            container(tag, "beat", env) as beat,
        ):
            names = {gateway: "api-gateway", worker: "worker", beat: "beat"}
            wait_healthy(list(names))
            time.sleep(5)  # settle after start-up before the idle sample
            idle = stats(list(names))
            peak: dict[str, tuple[float, float]] = dict.fromkeys(names, (0.0, 0.0))
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    for name, (mib, cpu) in stats(list(names)).items():
                        peak[name] = (max(peak[name][0], mib), max(peak[name][1], cpu))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            base = f"http://127.0.0.1:{port}"
            token, _ = account(base)
            client = httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
            began = time.monotonic()

            def submit(_: int) -> int:
                return client.post(
                    "/api/v1/tasks/run", json={"task": "system.sleep", "payload": {"seconds": 1}}
                ).status_code

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(submit, range(runs)))
            submitted = time.monotonic() - began
            while True:
                share = client.get("/api/v1/tasks/").json()["share"]
                if share["in_flight"] == 0 and share["waiting_for_capacity"] == 0:
                    break
                time.sleep(0.5)
            drained = time.monotonic() - began
            done.set()
            sampler.join()
    assert codes.count(202) == runs, {code: codes.count(code) for code in set(codes)}
    print(
        f"\n{runs} runs submitted in {submitted:.1f} s ({runs / submitted:.0f}/s), "
        f"drained in {drained:.1f} s"
    )
    return [
        [role, f"{idle[name][0]:.0f}", f"{peak[name][0]:.0f}", f"{peak[name][1]:.0f}"]
        for name, role in names.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="switchyard:test")
    parser.add_argument("--baseline", default=None)
    parser.add_argument("--runs", type=int, default=600)
    parser.add_argument("--no-roles", action="store_true")
    args = parser.parse_args()

    images = [args.image] + ([args.baseline] if args.baseline else [])
    sizes = {tag: image_size(tag) for tag in images}
    print_table(
        "Image size",
        ["image", "MB", "vs baseline"],
        [[tag, f"{sizes[tag]:.0f}", ratio(sizes[tag], sizes[images[-1]])] for tag in images],
    )
    for tag in images:
        print_table(f"Layers of {tag}", ["layer", "MB"], [[i, f"{s:.1f}"] for i, s in layers(tag)])
    contents = {tag: packages(tag) for tag in images}
    names = sorted(
        {name for sizes_ in contents.values() for name, mb in sizes_.items() if mb >= LARGE_MB},
        key=lambda name: -max(c.get(name, 0.0) for c in contents.values()),
    )
    print_table(
        "site-packages entries over 5 MB (MB)",
        ["package", *images],
        [[name, *[f"{contents[tag].get(name, 0.0):.1f}" for tag in images]] for name in names],
    )
    # Newest first: the project (COPY --from=project), then the environment, then the base.
    project, environment = (size for _, size in layers(args.image)[:2])
    print(f"\nproject layer {project:.1f} MB, environment layer {environment:.0f} MB")
    targets: list[list[object]] = [
        ["image <= 700 MB", f"{sizes[args.image]:.0f} MB", sizes[args.image] <= 700],
        ["project layer <= 5 MB", f"{project:.1f} MB", project <= 5],
    ]
    if not args.no_roles:
        print_table(
            f"Role containers of {args.image} (docker stats)",
            ["role", "idle MiB", f"peak MiB, {args.runs} runs", "peak CPU %"],
            roles(args.image, args.runs),
        )
    print_targets(targets)


if __name__ == "__main__":
    main()

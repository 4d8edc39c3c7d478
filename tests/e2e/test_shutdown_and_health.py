"""Graceful shutdown of real gateway and worker processes, container health checks, beat
metrics."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

from switchyard.api.app import create_app
from switchyard.platform.heartbeat import write_heartbeat
from tests.fixtures.accounts import sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.processes import RunningRole, healthcheck, switchyard_env
from tests.fixtures.scrape import metric_value
from tests.fixtures.servers import free_port
from tests.fixtures.tasks import DELIVERY_LIMIT, start_worker_on, submit, wait_for_run

pytestmark = pytest.mark.e2e

LOGIN = b'{"email": "nobody@example.com", "password": "wrong password!!"}'


def open_request(port: int) -> socket.socket:
    """A login request whose headers are sent and whose body is not complete yet."""
    client = socket.create_connection(("127.0.0.1", port), timeout=30)
    client.sendall(
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(LOGIN)).encode() + b"\r\n\r\n" + LOGIN[:10]
    )
    return client


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def start_gateway(
    start_role: Callable[..., RunningRole], database_url: URL, port: int, grace: int
) -> RunningRole:
    gateway = start_role(
        "api-gateway",
        port,
        DATABASE_URL=database_url.render_as_string(hide_password=False),
        API_SHUTDOWN_GRACE_SECONDS=str(grace),
    )
    gateway.wait_healthy()
    return gateway


def test_gateway_finishes_in_flight_requests_on_sigterm(
    start_role: Callable[..., RunningRole], database_url: URL
) -> None:
    port = free_port()
    gateway = start_gateway(start_role, database_url, port, grace=20)
    in_flight = open_request(port)
    time.sleep(0.3)  # the request has started: the app is reading its body
    gateway.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while not refuses_connections(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert refuses_connections(port), "new connections are still accepted while draining"
    assert gateway.process.poll() is None, "the gateway quit with a request in flight"

    in_flight.sendall(LOGIN[10:])
    answer = in_flight.recv(65536).decode()
    in_flight.close()
    assert answer.startswith("HTTP/1.1 401"), answer
    assert "application/problem+json" in answer
    assert gateway.process.wait(15) == 0


def test_gateway_gives_up_on_a_stuck_request_after_its_grace_period(
    start_role: Callable[..., RunningRole], database_url: URL
) -> None:
    port = free_port()
    gateway = start_gateway(start_role, database_url, port, grace=1)
    stuck = open_request(port)  # its body never completes
    time.sleep(0.3)
    started = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    code = gateway.process.wait(15)
    took = time.monotonic() - started
    stuck.close()
    assert code == 0
    assert 1.0 <= took < 8.0, took


def start_worker(
    start_role: Callable[..., RunningRole],
    task_env: dict[str, str],
    broker: str,
    workdir: Path,
    grace: float,
) -> RunningRole:
    return start_worker_on(
        start_role,
        task_env,
        broker,
        workdir,
        WORKER_CONCURRENCY="1",
        WORKER_METRICS_PORT="0",
        WORKER_SHUTDOWN_GRACE_SECONDS=str(grace),
    )


async def test_worker_finishes_in_flight_tasks_within_its_grace_period_then_hands_back(
    make_settings: SettingsFactory,
    own_broker: str,
    start_role: Callable[..., RunningRole],
    task_env: dict[str, str],
    tmp_path: Path,
) -> None:
    settings = make_settings(celery_broker_url=own_broker, task_delivery_limit=DELIVERY_LIMIT)
    async with running(create_app(settings)) as client:
        client.headers.update((await sign_up(client)).headers)

        # A generous grace period: the task in flight finishes, then the worker exits.
        patient = start_worker(start_role, task_env, own_broker, tmp_path / "patient", 30)
        # Long enough to be seen started on a loaded machine (a run of 2 s once finished
        # between two looks at it), short against the grace period.
        short = await submit(client, "system.sleep", {"seconds": 5})
        await wait_for_run(client, short, ("started",))
        stopped = time.monotonic()
        patient.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(patient.process.wait, 30) == 0
        assert time.monotonic() - stopped < 15
        finished = await wait_for_run(client, short, within=5)
        assert finished["state"] == "succeeded"
        assert finished["attempts"] == 1

        # A short one: the long task is cut off and handed back; the next worker runs it.
        hasty = start_worker(start_role, task_env, own_broker, tmp_path / "hasty", 1)
        long = await submit(client, "system.sleep", {"seconds": 6})
        await wait_for_run(client, long, ("started",))
        stopped = time.monotonic()
        hasty.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(hasty.process.wait, 30)
        assert time.monotonic() - stopped < 10
        # Handed back: queued again, for the next worker.
        assert (await client.get(f"/api/v1/tasks/{long}")).json()["state"] == "queued"

        start_worker(start_role, task_env, own_broker, tmp_path / "next", 30)
        run = await wait_for_run(client, long, within=60)
    assert run["state"] == "succeeded"
    assert run["attempts"] == 2


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def hold() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    server.close()


@pytest.mark.parametrize("broker", ["closed", "silent"])
def test_worker_healthcheck_passes_within_seconds_when_the_broker_is_dead(
    broker: str, silent_port: int, tmp_path: Path
) -> None:
    write_heartbeat(
        tmp_path / "worker.heartbeat",
        {"pid": 1, "processes": [{"hostname": "worker-2@nowhere", "pid": 2, "at": time.time()}]},
    )
    port = silent_port if broker == "silent" else free_port()
    started = time.monotonic()
    check = healthcheck(
        "worker",
        switchyard_env(
            VAR_DIR=str(tmp_path), CELERY_BROKER_URL=f"amqp://guest:guest@127.0.0.1:{port}//"
        ),
        tmp_path,
    )
    took = time.monotonic() - started
    # A broker outage is not the worker's fault: liveness must not restart every worker.
    assert check.returncode == 0, check.stderr
    assert took < 15, took
    assert "broker unreachable" in check.stdout
    assert "not this worker's fault" in check.stdout
    assert "Traceback" not in check.stdout + check.stderr
    assert check.stdout.count("\n") == 1  # one line


STALLED = {"hostname": "worker-2@nowhere", "pid": 2, "stalled_seconds": 12.5}
TURNING = {"hostname": "worker-2@nowhere", "pid": 2, "stalled_seconds": 0.0}


@pytest.mark.parametrize(
    ("process", "processes", "expected"),
    [
        (STALLED, "1", "worker process 2: event loop stalled for 12.5 s (limit 10 s)"),
        (TURNING, "2", "1 of 2 worker processes are heartbeating"),
    ],
)
def test_worker_healthcheck_fails_on_a_stalled_loop_or_a_missing_process(
    process: dict[str, object], processes: str, expected: str, tmp_path: Path
) -> None:
    write_heartbeat(tmp_path / "worker.heartbeat", {"pid": 1, "processes": [process]})
    env = switchyard_env(
        VAR_DIR=str(tmp_path), WORKER_STALL_UNHEALTHY_SECONDS="10", WORKER_PROCESSES=processes
    )
    check = healthcheck("worker", env, tmp_path)
    assert check.returncode == 1
    assert expected in check.stderr, check.stderr


def scrape(port: int) -> str | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None


def test_beats_expose_leader_state_and_last_tick(
    start_role: Callable[..., RunningRole], task_env: dict[str, str], tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    started = time.time()
    beats = []
    for index, port in enumerate(ports):
        workdir = tmp_path / f"beat-{index}"
        workdir.mkdir()
        beat = start_role(
            "beat", cwd=workdir, **task_env, VAR_DIR=str(workdir), BEAT_METRICS_PORT=str(port)
        )
        beat.wait_heartbeat(workdir / "beat.heartbeat")
        beats.append(beat)

    deadline = time.monotonic() + 30
    texts: list[str | None] = []
    while time.monotonic() < deadline:
        texts = [scrape(port) for port in ports]
        if all(texts) and all(
            metric_value(text or "", "switchyard_beat_last_tick_timestamp_seconds") > started
            for text in texts
        ):
            leaders = [metric_value(text or "", "switchyard_beat_leader") for text in texts]
            if sorted(leaders) == [0.0, 1.0]:
                break
        time.sleep(0.2)
    else:
        raise AssertionError(f"no leader and standby among the beats: {texts}")
    for text in texts:
        assert "switchyard_beat_runs_published_total" in (text or "")
    for port in ports:  # the probe a kubelet sends: leader and standby are both healthy
        probed = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        assert (probed.status_code, probed.text) == (200, "ok\n")
    for beat in beats:
        while "backing services at start" not in beat.stderr():  # once its probes answered
            assert time.monotonic() < deadline + 30, "a beat logged no start-up line"
            time.sleep(0.1)
        assert beat.stop(signal.SIGTERM) == 0
        records = [json.loads(line) for line in beat.stderr().splitlines() if line.strip()]
        assert records
        assert {record["service_type"] for record in records} == {"beat"}
        [started] = [r for r in records if r["message"].startswith("backing services at start")]
        assert {"postgres", "redis", "rabbitmq"} <= set(started["reached"])
        assert beat.stdout() == ""


def test_a_stopping_gateway_ends_live_event_streams_with_a_reconnect_event(
    start_role: Callable[..., RunningRole], database_url: URL, redis_url: str, own_broker: str
) -> None:
    """SIGTERM with three clients following a run: each gets a `reconnect` event and a stream
    that ends as a response does (no cut mid-message, no ASGI error in the log)."""
    port = free_port()
    gateway = start_role(
        "api-gateway",
        port,
        DATABASE_URL=database_url.render_as_string(hide_password=False),
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=own_broker,
        API_SHUTDOWN_GRACE_SECONDS="15",
        LOG_LEVEL="INFO",
    )
    gateway.wait_healthy()
    base = gateway.base_url
    email = f"streams-{time.monotonic_ns()}@example.com"
    password = "a long enough password"
    registered = httpx.post(
        f"{base}/api/v1/auth/register",
        json={"email": email, "password": password, "tenant_name": "Streams"},
    )
    assert registered.status_code == 201, registered.text
    token = httpx.post(
        f"{base}/api/v1/auth/login", json={"email": email, "password": password}
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    run = httpx.post(
        f"{base}/api/v1/tasks/run",
        json={"task": "system.echo", "payload": {"message": "x"}},
        headers=headers,
    )
    assert run.status_code == 202, run.text  # no worker: it stays queued, the streams open
    events_url = f"{base}/api/v1/tasks/{run.json()['task_id']}/events"

    received: list[list[str]] = [[] for _ in range(3)]
    failures: list[BaseException] = []
    following = threading.Barrier(4)

    def follow(lines: list[str]) -> None:
        try:
            with httpx.stream("GET", events_url, headers=headers, timeout=60) as stream:
                for line in stream.iter_lines():
                    lines.append(line)
                    if line.startswith("data:") and len(lines) < 4:
                        following.wait(30)  # the first event (the current state) is in
        except BaseException as error:  # a stream cut mid-message raises here
            failures.append(error)

    threads = [threading.Thread(target=follow, args=(lines,)) for lines in received]
    for thread in threads:
        thread.start()
    following.wait(30)
    gateway.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(30)
    assert gateway.process.wait(30) == 0
    assert failures == []
    for lines in received:
        assert "event: reconnect" in lines, lines
        assert any(line.startswith("retry:") for line in lines), lines
    assert "ASGI callable returned without completing response" not in gateway.stderr()

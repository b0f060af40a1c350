"""Shared fixtures: a real server (`python -m server serve`) on loopback, started once per session.

The server runs the real vLLM engine on the embedded default model; clients are
the official `openai` SDK and raw httpx.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.postgres import new_database, postgres_cluster

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
API_KEY = "test-key-0123456789"
OTHER_API_KEY = "test-key-other-9876543210"  # a second caller, for ownership tests
UPSTREAM_API_KEY = "test-key-upstream-5555"  # the upstream provider's own key (tests/test_gateway_routing.py)
UPSTREAM_PROVIDER = "upstream"
UNREACHABLE_PROVIDER = "nowhere"  # a provider nothing listens for
IMPATIENT_PROVIDER = "impatient"  # the upstream with a 1 ms timeout
START_TIMEOUT_S = 420

FAILURE_LOG_LINES = 80

# One short job, for tests whose question is not what a job learns: fewer wordings, no replay, the general set not
# gating promotion (only its figures reported).
CHEAP_ADAPTION = {
    "rank": 8,
    "alpha": 16,
    "learning_rate": 0.004,
    "questions_per_fact": 4,
    "probes_per_fact": 1,
    "probe_max_tokens": 12,
    "replay_examples": 0,
    "general_loss_tolerance": 10.0,
}


@dataclass
class RunningServer:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# Below the kernel's ephemeral range (32768-60999 by default): a port picked here stays free until the
# server binds it, however long its engine takes to start, because outgoing connections and vLLM's own
# internal ports (bind to port 0) are given ephemeral ports only.
LISTEN_PORTS = range(20000, 32000)


def free_port() -> int:
    for port in random.sample(LISTEN_PORTS, 50):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {LISTEN_PORTS}")


def shipped_config() -> dict:
    """The repository's models.yaml, parsed: where a test server's own configuration starts."""
    return yaml.safe_load((ROOT / "models.yaml").read_text())


def write_config(folder: Path, config: dict) -> Path:
    """`config` written as `folder`/models.yaml, the path for LLM_SERVER_CONFIG."""
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def server_env(**extra: str) -> dict[str, str]:
    """The environment of a server the tests start: offline, and eager (a compiled start costs a minute or more
    per server; the compiled default is measured by `make bench`)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", LLM_SERVER_ENFORCE_EAGER="1")
    env.pop("LLM_SERVER_API_KEYS", None)
    env.update(extra)
    return env


def engine_running_requests(server: RunningServer) -> int:
    return httpx.get(f"{server.base_url}/health", timeout=10).json()["running_requests"]


def wait_until(predicate, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def start_server(
    log_path: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None
) -> RunningServer:
    """Start `python -m server serve` and wait until /health answers 200."""
    port = port or free_port()
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--port", str(port), *args],
        cwd=ROOT,
        env=env or server_env(LLM_SERVER_API_KEYS=API_KEY),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = RunningServer(process, port, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()[-4000:]}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(1)
    server.stop()
    raise RuntimeError(f"server did not become healthy in {START_TIMEOUT_S}s:\n{server.log()[-4000:]}")


@dataclass(frozen=True)
class StateDirs:
    adapters: Path  # the servers' adapters folder (not the repo's)
    sources: Path  # where tests put adapters to load; an allowed source root
    data: Path  # the servers' databases (memory)


@pytest.fixture(scope="session")
def state_dirs(tmp_path_factory: pytest.TempPathFactory) -> StateDirs:
    return StateDirs(
        tmp_path_factory.mktemp("adapters"), tmp_path_factory.mktemp("adapter-sources"), tmp_path_factory.mktemp("data")
    )


@pytest.fixture(scope="session")
def upstream_port() -> int:
    """Where the upstream provider (a second server of ours, started only by the routing tests) listens."""
    return free_port()


@pytest.fixture(scope="session")
def gateway_config(tmp_path_factory: pytest.TempPathFactory, upstream_port: int) -> Path:
    """models.yaml plus providers: `upstream` (a second server of ours), `nowhere` (refuses connections)
    and `impatient` (the upstream with a timeout it cannot meet)."""
    raw = shipped_config()
    raw["providers"] = [
        {
            "name": UPSTREAM_PROVIDER,
            "base_url": f"http://127.0.0.1:{upstream_port}/v1",
            "api_key": UPSTREAM_API_KEY,
            "models": [MODEL],
            "timeout_s": 60,
        },
        {"name": UNREACHABLE_PROVIDER, "base_url": f"http://127.0.0.1:{free_port()}/v1", "models": [MODEL]},
        {  # the upstream again, with no patience: its answers always come too late
            "name": IMPATIENT_PROVIDER,
            "base_url": f"http://127.0.0.1:{upstream_port}/v1",
            "api_key": UPSTREAM_API_KEY,
            "models": [MODEL],
            "timeout_s": 0.001,
        },
    ]
    return write_config(tmp_path_factory.mktemp("config"), raw)


@pytest.fixture(scope="session")
def test_server_env(state_dirs: StateDirs, gateway_config: Path, postgres: str) -> dict[str, str]:
    """The session server's environment. Its gateway stores (keys, usage, templates) live in PostgreSQL, in a
    database of the session's throwaway cluster, as several servers behind a load balancer would keep them
    (tests/test_gateway_postgres.py starts a second one on it); the SQLite default is what the routing tests'
    upstream server and the store unit tests use."""
    return server_env(
        LLM_SERVER_DATABASE_URL=new_database(postgres),
        LLM_SERVER_CONFIG=str(gateway_config),
        LLM_SERVER_API_KEYS=f"{API_KEY},{OTHER_API_KEY}",
        LLM_SERVER_ADAPTERS_DIR=str(state_dirs.adapters),
        LLM_SERVER_ADAPTER_SOURCE_ROOTS=str(state_dirs.sources),
        LLM_SERVER_DATA_DIR=str(state_dirs.data),
    )


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, test_server_env: dict[str, str]) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("server") / "server.log", env=test_server_env)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def adapter_sources(state_dirs: StateDirs) -> Path:
    """Real LoRA adapters `alpha` and `bravo`, trained with peft by scripts/make_adapters.py."""
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_adapters.py"), "--out", str(state_dirs.sources)],
        cwd=ROOT,
        env=server_env(),
        check=True,
        capture_output=True,
        timeout=900,
    )
    return state_dirs.sources


@pytest.fixture(scope="session")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def async_client(server: RunningServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def keyed_http(server: RunningServer, key: str, timeout_s: float = 120) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout_s)


@pytest.fixture(scope="session")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with keyed_http(server, API_KEY) as session:
        yield session


@pytest.fixture(scope="session")
def other_http(server: RunningServer) -> Iterator[httpx.Client]:
    """The same server, called with another API key."""
    with keyed_http(server, OTHER_API_KEY) as session:
        yield session


def new_key(session: httpx.Client, **fields: object) -> dict:
    """A stored API key created through the admin endpoint; its `key` is the secret."""
    response = session.post("/v1/keys", json={"name": "test", **fields})
    assert response.status_code == 201, response.text
    return response.json()


def keys_cli(env: dict[str, str], *args: str) -> str:
    """`python -m server keys ARGS` in this environment (the database the servers given `env` use); its stdout."""
    result = subprocess.run(
        [sys.executable, "-m", "server", "keys", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


def assert_error(response: httpx.Response, status: int, code: str | None, param: str | None) -> dict:
    """An OpenAI-shaped error with this status, code and param."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["code"] == code
    assert error["param"] == param
    assert response.headers["x-request-id"]
    return error


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster for the session (tests/postgres.py); its admin URL."""
    with postgres_cluster(free_port()) as url:
        yield url


StoreLocation = Callable[[str], "Path | str"]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> StoreLocation:
    """Where a gateway store under test lives, per backend: `location("keys.sqlite3")` is that file in
    tmp_path, or (PostgreSQL) a fresh database of the session's cluster, shared by the test's stores."""
    if request.param == "sqlite":
        return lambda sqlite_file: tmp_path / sqlite_file
    url = new_database(request.getfixturevalue("postgres"))
    return lambda sqlite_file: url


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    """A failed test's report ends with the last lines of every server it used: what the server saw, and when."""
    report = yield
    if report.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, RunningServer):
                report.sections.append(
                    (f"server log: {name}", "\n".join(value.log().splitlines()[-FAILURE_LOG_LINES:]))
                )
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use a server fixture are marked `engine` (`make unit` leaves them out)."""
    engine_fixtures = {
        "server",
        "client",
        "async_client",
        "http",
        "other_http",
        "dying_server",
        "adapter_sources",
        "upstream",
    }
    for item in items:
        if engine_fixtures & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.engine)
    # The LoRA `auto` test first: it needs the session server as it starts (no adapters: no LoRA slots); the
    # adapter tests after it find LoRA on.
    items.sort(key=lambda item: item.path.name != "test_lora_auto.py")

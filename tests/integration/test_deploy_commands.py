"""The commands of deploy/ run here, without Docker: each against a fresh database,
the way the container, Compose, Kubernetes or systemd would start it.

``python`` is this interpreter (its directory first on PATH); the only change
to a command is the metrics port, moved to a free one.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from werkfluss import Engine

from ..deploy_files import (
    Command,
    all_commands,
    compose_commands,
    compose_usage,
    dockerfile_cmd,
    dockerfile_env,
    image_command,
    kubernetes_commands,
    with_metrics_port,
)
from ..helpers import ROOT, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environment(dsn: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), WERKFLUSS_DATABASE_URL=dsn,
               WERKFLUSS_DEMO_STEP_SECONDS="0.01",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra)
    env.pop("WERKFLUSS_LISTEN_URL", None)
    return env


def run(argv: tuple[str, ...] | list[str], env: dict[str, str], timeout: float = 60) -> str:
    done = subprocess.run(list(argv), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
    return done.stdout


class Started:
    """A worker command running in the background, its output in a file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")

    async def wait_for(self, text: str) -> None:
        async def seen() -> bool:
            if self.proc.poll() is not None and text not in self.output():
                raise AssertionError(f"the command exited ({self.proc.returncode}):\n{self.output()}")
            return text in self.output()

        await wait_until(seen, timeout=30, interval=0.02, message=repr(text))

    async def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, 60)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def serve_a_demo_run(worker: Started, dsn: str, metrics_port: int | None) -> None:
    await worker.wait_for('"worker.started"')
    async with Engine(dsn) as engine:
        handle = await engine.start("werkfluss.demo.onboard", "deploy-check")
        assert await handle.result(timeout=30) == "done"
    if metrics_port is not None:
        text = await asyncio.to_thread(scrape, metrics_port)
        assert 'werkfluss_runs_finished_total{status="completed",workflow="werkfluss.demo.onboard"}' in text
    assert await worker.stop() == 0, worker.output()
    assert '"worker.stopped"' in worker.output()


async def test_the_compose_services_and_suggested_commands_run(fresh_dsn: str, tmp_path: Path) -> None:
    services = {c.origin.split()[-1]: c for c in compose_commands()}
    env = environment(fresh_dsn)
    assert "applied: 0001_initial" in run(services["migrate"].argv, env)
    port = free_port()
    worker = Started(list(with_metrics_port(services["worker"].argv, port)), env, tmp_path / "worker.log")
    try:
        await worker.wait_for('"metrics.serving"')
        for argv in compose_usage():  # what the comments at the top tell you to try
            out = run(argv, env)
            if "start" in argv:
                assert out.splitlines()[-1] == '"done"'
        await serve_a_demo_run(worker, fresh_dsn, port)
    finally:
        worker.close()


async def test_the_kubernetes_init_container_and_worker_run(fresh_dsn: str, tmp_path: Path) -> None:
    init, container = kubernetes_commands()
    env = environment(fresh_dsn)
    assert "applied: 0001_initial" in run(init.argv, env)
    port = free_port()
    worker = Started(list(with_metrics_port(container.argv, port)), env, tmp_path / "worker.log")
    try:
        await serve_a_demo_run(worker, fresh_dsn, port)
    finally:
        worker.close()


async def test_the_image_command_execs_the_worker_as_pid_1_would(dsn: str, tmp_path: Path) -> None:
    port = free_port()
    shell, flag, script = dockerfile_cmd()
    script = script.replace("--metrics-port 9464", f"--metrics-port {port}")
    assert str(port) in script
    env = environment(dsn, **dockerfile_env())
    worker = Started([shell, flag, script], env, tmp_path / "worker.log")
    try:
        await worker.wait_for('"worker.started"')
        # `exec`: the shell has become the worker, so SIGTERM reaches the worker itself.
        cmdline = (await asyncio.to_thread(Path(f"/proc/{worker.proc.pid}/cmdline").read_bytes)).split(b"\0")
        assert b"werkfluss.worker" in cmdline
        assert json.loads(next(line for line in worker.output().splitlines()
                               if '"metrics.serving"' in line))["host"] == "0.0.0.0"
        await serve_a_demo_run(worker, dsn, port)
    finally:
        worker.close()


SYSTEMD_WORKERS = [c for c in all_commands() if c.is_worker and c.origin.startswith("systemd")]


@pytest.mark.parametrize("command", SYSTEMD_WORKERS, ids=lambda c: c.origin)
async def test_the_systemd_worker_command_runs(command: Command, dsn: str, tmp_path: Path) -> None:
    worker = Started(list(command.argv), environment(dsn), tmp_path / "worker.log")
    try:
        await serve_a_demo_run(worker, dsn, None)
    finally:
        worker.close()


def test_every_worker_command_of_deploy_is_run_by_a_test() -> None:
    origins = {c.origin for c in all_commands() if c.is_worker}
    assert origins == {image_command().origin, "compose service worker",
                       "kubernetes Deployment container worker", "systemd ExecStart"}

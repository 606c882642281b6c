"""A TCP proxy between the workers and PostgreSQL that can fail like a network.

Runs as its own process (``python -m tests.chaos.proxy --upstream HOST:PORT``)
so that forwarding never competes with the test for a Python interpreter. It
prints ``listening PORT`` once, then obeys one command per line on stdin and
answers each with ``ok COMMAND CONNECTIONS``:

``stall``
    stop forwarding in both directions, keep every socket open: both peers see
    silence (no FIN, no RST), as if the network dropped every packet. New
    connections are accepted and then hang as well.
``resume``
    forward again (what was held back is delivered late, as TCP would after a
    blip).
``reset``
    close every proxied connection abruptly (``SO_LINGER 0``: an RST to both
    peers). Forwarding state is unchanged; combine with ``resume``.
``quit``
    close everything and exit.

:class:`ProxyProcess` is the test's handle on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]
_LINGER_RST = struct.pack("ii", 1, 0)


class _Link:
    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            with contextlib.suppress(OSError, AttributeError):
                writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            writer.transport.abort()
        if self.task is not None:
            self.task.cancel()


class Proxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.links: set[_Link] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        link = _Link(cwriter)
        link.task = asyncio.current_task()  # type: ignore[assignment]
        self.links.add(link)
        try:
            await self.flowing.wait()
            ureader, uwriter = await asyncio.open_connection(*self.upstream)
            link.upstream = uwriter
            pumps = [asyncio.create_task(self._pump(creader, uwriter)),
                     asyncio.create_task(self._pump(ureader, cwriter))]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self.links.discard(link)
            for writer in (cwriter, link.upstream):
                if writer is not None and not writer.transport.is_closing():
                    writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while True:
                await self.flowing.wait()
                data = await reader.read(65536)
                if not data:
                    return
                await self.flowing.wait()  # stalled between read and write: held back
                writer.write(data)
                await writer.drain()

    def command(self, name: str) -> int:
        if name == "stall":
            self.flowing.clear()
        elif name == "resume":
            self.flowing.set()
        elif name == "reset":
            links = list(self.links)
            self.links.clear()
            for link in links:
                link.abort()
            return len(links)
        else:
            raise ValueError(name)
        return len(self.links)

    async def close(self) -> None:
        self.command("reset")
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def _main(upstream: str) -> None:
    host, port = upstream.rsplit(":", 1)
    proxy = Proxy(host, int(port))
    listening = await proxy.start()
    print(f"listening {listening}", flush=True)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def read_commands() -> None:
        for line in sys.stdin:
            name = line.strip()
            if not name:
                continue
            if name == "quit":
                break
            future = asyncio.run_coroutine_threadsafe(_apply(proxy, name), loop)
            try:
                count = future.result()
                print(f"ok {name} {count}", flush=True)
            except Exception as err:
                print(f"error {name} {err}", flush=True)
        loop.call_soon_threadsafe(done.set)

    threading.Thread(target=read_commands, daemon=True).start()
    await done.wait()
    await proxy.close()


async def _apply(proxy: Proxy, name: str) -> int:
    return proxy.command(name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True, help="HOST:PORT of PostgreSQL")
    args = parser.parse_args()
    asyncio.run(_main(args.upstream))


class ProxyProcess:
    """The test's handle: ``stall()``, ``resume()``, ``reset()``, ``close()``."""

    def __init__(self, upstream_port: int, log_path: Path) -> None:
        self._log = log_path.open("wb")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.proxy", "--upstream", f"127.0.0.1:{upstream_port}"],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
            bufsize=1,
        )
        self._stdin: IO[str] = self.proc.stdin  # type: ignore[assignment]
        self._stdout: IO[str] = self.proc.stdout  # type: ignore[assignment]
        first = self._stdout.readline().split()
        if len(first) != 2 or first[0] != "listening":
            self.close()
            raise RuntimeError(f"proxy did not start: {first!r} (see {log_path})")
        self.port = int(first[1])
        self._lock = threading.Lock()

    def _command(self, name: str) -> int:
        with self._lock:
            self._stdin.write(name + "\n")
            self._stdin.flush()
            answer = self._stdout.readline().split()
        if not answer or answer[0] != "ok":
            raise RuntimeError(f"proxy {name}: {answer!r}")
        return int(answer[2])

    def stall(self) -> int:
        return self._command("stall")

    def resume(self) -> int:
        return self._command("resume")

    def reset(self) -> int:
        return self._command("reset")

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self._stdin.write("quit\n")
                self._stdin.flush()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._log.close()


if __name__ == "__main__":
    main()

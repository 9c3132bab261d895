"""Redis for the local system: the given URL; else a private `redis-server` on
a free loopback port (no persistence); else fakeredis's TCP server in-process,
with a one-line notice."""

from __future__ import annotations

import asyncio
import ctypes
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path



def _resolve_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Resolved in the parent: after fork() in a threaded process, the child must not dlopen.
_PRCTL = _resolve_prctl()


def parent_death_signal() -> None:
    """preexec_fn for children of the local system: on Linux, the kernel sends
    them SIGTERM if the parent dies without stopping them (no orphans)."""
    if _PRCTL is not None:
        _PRCTL(1, 15)  # PR_SET_PDEATHSIG, SIGTERM


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def wait_for_port(host: str, port: int, timeout: float, *, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before opening {host}:{port}") from None
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{host}:{port} did not open within {timeout:.0f}s") from None
            await asyncio.sleep(0.02)


class LocalRedis:
    """``await start()`` -> ``url``; ``await stop()`` stops what it started."""

    def __init__(self, url: str | None = None, *, log_dir: str | Path | None = None, use_binary: bool = True):
        self.url = url
        self.kind = "external" if url else None
        self._log_dir = Path(log_dir) if log_dir else None
        self._use_binary = use_binary
        self._proc: subprocess.Popen | None = None
        self._workdir: str | None = None
        self._fake = None
        self._fake_thread: threading.Thread | None = None

    async def start(self) -> str:
        if self.url:
            return self.url
        binary = shutil.which("redis-server") if self._use_binary else None
        port = free_port()
        if binary:
            self._workdir = tempfile.mkdtemp(prefix="rtstream-redis-")
            log = open(self._log_dir / "redis.log", "ab") if self._log_dir else subprocess.DEVNULL
            self._proc = subprocess.Popen(
                [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                 "--dir", self._workdir, "--protected-mode", "yes"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=parent_death_signal,
            )
            if log is not subprocess.DEVNULL:
                log.close()
            try:
                await wait_for_port("127.0.0.1", port, 10, proc=self._proc)
            except BaseException:
                await self.stop()
                raise
            self.kind = "redis-server"
        else:
            print("notice: no redis-server on PATH; using an in-process fakeredis server, which lacks some "
                  "Redis 7 stream commands: install Redis 7 or pass --redis-url for the full system",
                  file=sys.stderr, flush=True)
            self._fake = _fakeredis_server(port)
            self._fake_thread = threading.Thread(target=self._fake.serve_forever, name="fakeredis", daemon=True)
            self._fake_thread.start()
            await wait_for_port("127.0.0.1", port, 5)
            self.kind = "fakeredis"
        self.url = f"redis://127.0.0.1:{port}/0"
        return self.url

    async def stop(self) -> None:
        if self._proc is not None:
            proc, self._proc = self._proc, None
            if proc.poll() is None:
                proc.terminate()
                try:
                    await asyncio.to_thread(proc.wait, 5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    await asyncio.to_thread(proc.wait, 5)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        if self._fake is not None:
            fake, self._fake = self._fake, None
            await asyncio.to_thread(fake.shutdown)
            fake.server_close()


def _fakeredis_server(port: int):
    """fakeredis's TCP server, with one fix: its handler closes the connection
    after any error reply, and Redis clients rely on errors that leave the
    connection open (NOSCRIPT before EVAL, BUSYGROUP on XGROUP CREATE...)."""
    import select

    import redis
    from fakeredis import TcpFakeServer
    from fakeredis._clients import _tcp_server

    class Handler(_tcp_server.TCPFakeRequestHandler):
        def handle(self) -> None:
            while not self.server._shutdown_event.is_set():
                try:
                    if self.current_client.can_read():
                        try:
                            response = self.current_client.read_response()
                        except redis.exceptions.ResponseError as exc:
                            response = exc  # an error reply; the connection stays usable
                        self.writer.dump(response)
                        continue
                    data = self.rfile.readline()
                    if data == b"":
                        readable, _, _ = select.select([self.connection], [], [], 0.01)
                        if not readable:
                            continue
                        data = self.rfile.readline()
                        if data == b"":
                            break  # the peer closed
                    self.current_client.get_socket().sendall(data)
                except ConnectionError:
                    break
                except Exception as exc:  # noqa: BLE001 - what fakeredis does: report, then close
                    self.writer.dump(exc)
                    break

    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    server.RequestHandlerClass = Handler
    server.daemon_threads = True
    return server

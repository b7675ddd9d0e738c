"""``mlops-serve``: run the scoring service on granian, through its native RSGI interface.

The parent process checks the settings (failing loudly on a bad one), hands them to the
workers through ``MLOPS_*`` env vars, and runs granian's process manager. Each worker builds
the app with :func:`app_from_env` and loads the model in ``__rsgi_init__``. A watcher
thread in the parent prints ``Listening on http://HOST:PORT`` once *this* instance answers
``/health/ready`` (it checks an instance token, so an old process still holding the port
during a ``--reuse-port`` handover does not count).

SIGTERM: granian stops accepting at once, lets in-flight requests finish, then calls
``__rsgi_del__``, which drains the queue, stops the model thread and closes the data
collector. The process exits 0.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence

from mlops_scoring.app import ScoringApp, create_app
from mlops_scoring.settings import Settings, SettingsError

__all__ = ["INSTANCE_ENV", "app_from_env", "main"]

#: Env var carrying the token the readiness watcher looks for in ``x-mlops-instance``.
INSTANCE_ENV = "MLOPS_INSTANCE_TOKEN"


def app_from_env() -> ScoringApp:
    """Build the app from ``MLOPS_*`` env vars (the granian worker's factory)."""
    _configure_logging(os.environ.get("MLOPS_LOG_LEVEL", "info"))
    return create_app(Settings.from_args([]))


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
        stream=sys.stderr,
    )


def _check_port_free(host: str, port: int) -> None:
    """Fail unless the port is free: granian binds with SO_REUSEPORT, which would share it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise SettingsError(
                    f"port {port} on {host} is in use (pass --reuse-port to take it over)"
                ) from e
            raise SettingsError(f"cannot bind {host}:{port}: {e.strerror}") from e


def _announce_when_ready(host: str, port: int, token: str, stop: threading.Event) -> None:
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    netloc = f"[{probe_host}]" if ":" in probe_host else probe_host
    url = f"http://{netloc}:{port}/health/ready"
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200 and resp.headers.get("x-mlops-instance") == token:
                    print(f"Listening on http://{host}:{port}", flush=True)
                    return
        except OSError:
            pass
        stop.wait(0.05)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the service until SIGTERM/SIGINT; return the exit code."""
    try:
        settings = Settings.from_args(argv)
        if settings.port == 0:
            raise SettingsError("--port: 0 is not supported; pick a port")
        if not settings.reuse_port:
            _check_port_free(settings.host, settings.port)
    except SettingsError as e:
        print(f"mlops-serve: error: {e}", file=sys.stderr, flush=True)
        return 2
    _configure_logging(settings.log_level)

    from granian.constants import Interfaces
    from granian.server import Server

    token = os.urandom(8).hex()
    os.environ.update(settings.to_env())
    os.environ[INSTANCE_ENV] = token
    stop = threading.Event()
    watcher = threading.Thread(
        target=_announce_when_ready, args=(settings.host, settings.port, token, stop), daemon=True
    )
    server = Server(
        "mlops_scoring.cli:app_from_env",
        address=settings.host,
        port=settings.port,
        interface=Interfaces.RSGI,
        workers=settings.workers,
        factory=True,
        backlog=2048,
        log_enabled=True,
        log_level=settings.log_level,  # type: ignore[arg-type]
        log_access=False,
        websockets=False,
        workers_kill_timeout=int(settings.max_wait_ms / 1000 + settings.scoring_timeout_ms / 1000 + 15),
    )
    watcher.start()
    started = time.monotonic()
    try:
        server.serve()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        return code
    finally:
        stop.set()
    logging.getLogger("mlops_scoring").info("Stopped after %.1f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The Docker client the image builder and the Docker target share.

With a ``docker_conn_id`` the client comes from the Docker provider's
:class:`~airflow.providers.docker.hooks.docker.DockerHook` (which also logs in to the
registry named on the connection); without one, from the environment
(``DOCKER_HOST``/``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH``, else the local socket), as the
``docker`` CLI does.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["DEFAULT_DOCKER_URL", "docker_client", "registry_of"]

DEFAULT_DOCKER_URL = "unix://var/run/docker.sock"


def docker_client(docker_conn_id: str | None = None) -> Any:
    """Return a low-level ``docker.APIClient`` (the one the Docker provider's operators use).

    :param docker_conn_id: Airflow connection of type ``docker``; ``None`` reads the environment.
    """
    if docker_conn_id:
        from airflow.providers.docker.hooks.docker import DockerHook

        base_url = os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_URL
        return DockerHook(docker_conn_id=docker_conn_id, base_url=base_url).api_client
    import docker

    return docker.from_env().api


def registry_of(docker_conn_id: str | None) -> str | None:
    """Return the registry host configured on a Docker connection (``host[:port]``), if any."""
    if not docker_conn_id:
        return None
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(docker_conn_id)
    if not conn.host:
        return None
    return f"{conn.host}:{conn.port}" if conn.port else conn.host

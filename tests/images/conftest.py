"""Image tests build on the locally debootstrapped base image (nothing can be pulled here)."""

from __future__ import annotations

import os

os.environ.setdefault("MLOPS_BASE_IMAGE", "airflow-mlops/base:bookworm")
os.environ.setdefault("MLOPS_GATEWAY_IMAGE", "airflow-mlops/haproxy:bookworm")

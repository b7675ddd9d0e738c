#!/usr/bin/env python
"""Run the ``mlops_deploy`` DAG on the embedded default and show a live prediction.

What ``make demo`` runs: an Airflow home under ``.demo/airflow`` (unless ``AIRFLOW_HOME`` is
set), the repository's ``dags/`` folder, the embedded SQLite registry; it trains, registers
and deploys the digits model as a local scoring service, then scores two digits through it.
Run it again to update the service in place (same URL, same keys).

    python scripts/demo.py                  # deploy (or update) on the local target
    python scripts/demo.py --target docker  # build an image and run it in Docker
    python scripts/demo.py --stop           # delete the service
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def configure_env() -> None:
    """Point Airflow (and the provider's embedded state) at the demo home, before any import."""
    home = Path(os.environ.setdefault("AIRFLOW_HOME", str(REPO / ".demo" / "airflow")))
    home.mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def airflow(*args: str) -> int:
    """Run the ``airflow`` CLI of this interpreter's environment."""
    cli = Path(sys.executable).with_name("airflow")
    return subprocess.call([str(cli), *args])


def migrate_once() -> None:
    marker = Path(os.environ["AIRFLOW_HOME"]) / ".mlops-demo-migrated"
    if marker.exists():
        return
    print("Preparing the Airflow metadata database (first run only) ...", flush=True)
    if airflow("db", "migrate") != 0:
        sys.exit("airflow db migrate failed")
    marker.touch()


def stop(service: str, target: str) -> None:
    from airflow_mlops.hooks.deployment import DeploymentHook

    if DeploymentHook(target).delete_service(service, missing_ok=True):
        print(f"Deleted service {service} ({target}).")
    else:
        print(f"No service {service} on {target}.")


def show(service: str, target: str, print_keys: bool) -> None:
    """Print the service's URL and a prediction fetched from it right now."""
    import httpx

    from airflow_mlops.examples.digits import load_digits_split
    from airflow_mlops.hooks.deployment import DeploymentHook

    hook = DeploymentHook(target)
    info = hook.get_service(service)
    headers = {}
    keys = hook.get_keys(service) if info.auth_enabled else None
    if keys:
        headers["Authorization"] = f"Bearer {keys.primary_key}"
    _, x_test, _, y_test = load_digits_split()
    response = httpx.post(info.scoring_uri, json={"data": x_test[:2].tolist()}, headers=headers, timeout=30)
    response.raise_for_status()
    body = response.json()
    versions = ", ".join(f"{m['name']}:{m['version']}" for m in info.models)
    print()
    print(f"Service     {service} ({target}, {info.state}) serving {versions}")
    print(f"Scoring URI {info.scoring_uri}")
    print(f"Swagger     {info.url}/swagger.json")
    print(f"Prediction  {body['label']} (expected {y_test[:2].tolist()}) from a live POST /score")
    if keys and print_keys:
        print(f"Primary key {keys.primary_key}")
    auth = ' -H "Authorization: Bearer $KEY"' if keys else ""
    print()
    print(f"Try it:  curl -s {info.scoring_uri}{auth} -H 'Content-Type: application/json' \\")
    print(f"           -d '{json.dumps({'data': [x_test[0].astype(int).tolist()]})}'")
    if keys:
        print("         (KEY: python scripts/demo.py --print-keys, or DeploymentHook('local').get_keys(...))")
    print(f"Stop it: python scripts/demo.py --stop{' --target docker' if target == 'docker' else ''}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", choices=["local", "docker"], default="local")
    parser.add_argument("--service", default="digits-svc", help="service name (default digits-svc)")
    parser.add_argument("--model", default="digits", help="registered model name (default digits)")
    parser.add_argument("--port", type=int, default=None, help="port for a new service (default: a free one)")
    parser.add_argument("--no-auth", action="store_true", help="serve without keys")
    parser.add_argument("--stop", action="store_true", help="delete the service and exit")
    parser.add_argument("--print-keys", action="store_true", help="also print the service's primary key")
    args = parser.parse_args(argv)
    configure_env()
    if args.stop:
        stop(args.service, args.target)
        return 0
    migrate_once()
    conf = {
        "target": args.target,
        "service_name": args.service,
        "model_name": args.model,
        "port": args.port,
        "auth": not args.no_auth,
    }
    started = time.monotonic()
    print(f"Running DAG mlops_deploy with {json.dumps(conf)} ...", flush=True)
    code = airflow("dags", "test", "mlops_deploy", "--conf", json.dumps(conf))
    if code != 0:
        print(f"airflow dags test exited with {code}", file=sys.stderr)
        return code
    try:
        show(args.service, args.target, args.print_keys)
    except Exception as e:  # the run's own log above says why; keep the message short here
        print(f"The DAG ran, but the service did not answer: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"\nDone in {time.monotonic() - started:.0f} s (Airflow home: {os.environ['AIRFLOW_HOME']}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())

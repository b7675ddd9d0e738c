"""Read what scoring services collected, for a time window, into a feature matrix.

The scoring service writes (see ``scoring/COLLECTOR.md``, a shared contract)::

    <prefix>/<service>/<model>/<version>/<yyyy>/<mm>/<dd>/<hh>/<part>.jsonl

to a local folder or an Azure Blob Storage container. A window ``[start, end)`` reads only
the hour folders it touches (whole days as one day prefix), then keeps the records whose
``ts`` falls inside it. Blob Storage is read through the Azure provider's ``WasbHook``, so
credentials live in an Airflow connection (Azurite's or an account's connection string in
the ``connection_string`` extra works).

Sinks are named as the scoring service names them: a folder path or ``file://`` URL,
``azureblob://<container>/<prefix>``, and ``wasb://<container>/<prefix>`` for the same.
``None`` is the local target's default, ``$MLOPS_HOME/collected``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from airflow_mlops.constants import mlops_home
from airflow_mlops.exceptions import ConfigError, MonitoringError
from airflow_mlops.monitoring.baseline import default_feature_names

if TYPE_CHECKING:
    from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

__all__ = [
    "CollectedData",
    "CollectedDataReader",
    "collect_window",
    "dataset_metadata",
    "extract_rows",
    "parse_window",
    "read_dataset",
    "records_to_dataset",
    "window_prefixes",
    "write_dataset",
]

log = logging.getLogger(__name__)

try:  # orjson parses JSONL several times faster; the scoring service already depends on it
    import orjson as _orjson

    _loads: Any = _orjson.loads
except ImportError:  # pragma: no cover
    _loads = json.loads

META_COLUMNS = ("request_id", "ts", "model", "version", "outputs")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def _segment(value: str) -> str:
    """Sanitise a path segment the way the collector does (so names match its folders)."""
    text = _SAFE.sub("_", str(value))
    return "_" + text[1:] if text.startswith(".") else text


# --- windows --------------------------------------------------------------------------------


def _to_utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, str) and value.strip():
        text = value.strip().replace(" ", "T", 1)
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as e:
            raise ConfigError(f"not an ISO-8601 time: {value!r}") from e
        return _to_utc(parsed)
    raise ConfigError(f"not a time: {value!r}")


def parse_window(
    start: Any = None, end: Any = None, lookback: timedelta | float | None = None
) -> tuple[datetime, datetime]:
    """Return a UTC ``[start, end)`` window from datetimes or ISO strings.

    :param start: window start; empty means ``end - lookback``.
    :param end: window end (exclusive); empty means now.
    :param lookback: length of the window when ``start`` is empty (seconds or a timedelta;
        default one hour).
    """
    end_dt = _to_utc(end) if end not in (None, "", "None") else datetime.now(UTC)
    if start in (None, "", "None"):
        span = lookback if isinstance(lookback, timedelta) else timedelta(seconds=float(lookback or 3600))
        start_dt = end_dt - span
    else:
        start_dt = _to_utc(start)
    if start_dt >= end_dt:
        raise ConfigError(
            f"empty window: start {start_dt.isoformat()} is not before end {end_dt.isoformat()}"
        )
    return start_dt, end_dt


def window_prefixes(start: datetime, end: datetime) -> list[str]:
    """Return the partition prefixes a window touches: ``yyyy/mm/dd/`` or ``yyyy/mm/dd/hh/``.

    A day wholly inside the window is one prefix; the hours at either end are listed one by one.
    """
    out: list[str] = []
    hour = start.replace(minute=0, second=0, microsecond=0)
    while hour < end:
        day_end = hour.replace(hour=0) + timedelta(days=1)
        if hour.hour == 0 and hour >= start and day_end <= end:
            out.append(hour.strftime("%Y/%m/%d/"))
            hour = day_end
            continue
        out.append(hour.strftime("%Y/%m/%d/%H/"))
        hour += timedelta(hours=1)
    return out


# --- the reader -----------------------------------------------------------------------------


def _parse_sink(sink: str | os.PathLike[str] | None) -> tuple[str, str, str]:
    """Return ``(kind, location, prefix)``: ``("local", folder, "")`` or ``("wasb", container, prefix)``."""
    if sink is None or str(sink).strip() == "":
        return "local", str(Path(mlops_home()) / "collected"), ""
    text = os.fspath(sink).strip()
    parts = urllib.parse.urlsplit(text)
    if parts.scheme in ("wasb", "wasbs", "azureblob", "abfs", "abfss"):
        container = parts.netloc.split("@", 1)[0]
        if not container:
            raise ConfigError(f"blob sink {text!r} names no container (wasb://<container>/<prefix>)")
        prefix = parts.path.strip("/")
        return "wasb", container, f"{prefix}/" if prefix else ""
    if parts.scheme == "file":
        return "local", urllib.parse.unquote(parts.path), ""
    if parts.scheme and len(parts.scheme) > 1:
        raise ConfigError(f"unsupported sink {text!r}: use a folder, file://, wasb:// or azureblob://")
    return "local", text, ""


class CollectedDataReader:
    """List and read collected records of a service from a local folder or Blob Storage.

    :param sink: where the service collects to (see the module docstring).
    :param wasb_conn_id: Airflow ``wasb`` connection for a blob sink.
    :param wasb_hook: a ``WasbHook`` to use instead of building one (tests, notebooks).
    """

    def __init__(
        self,
        sink: str | os.PathLike[str] | None = None,
        *,
        wasb_conn_id: str | None = None,
        wasb_hook: WasbHook | None = None,
    ) -> None:
        self.kind, self.location, self.prefix = _parse_sink(sink)
        self.wasb_conn_id = wasb_conn_id or "wasb_default"
        self._hook = wasb_hook

    def describe(self) -> str:
        """Return the sink as a URL for logs."""
        if self.kind == "wasb":
            return f"wasb://{self.location}/{self.prefix}"
        return self.location

    @property
    def hook(self) -> WasbHook:
        """Return the ``WasbHook`` of a blob sink (built on first use)."""
        if self._hook is None:
            from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

            self._hook = WasbHook(wasb_conn_id=self.wasb_conn_id)
        return self._hook

    def _children(self, parent: str) -> list[str]:
        """Return the names of the folders directly under ``parent`` (relative to the sink)."""
        if self.kind == "local":
            folder = Path(self.location, parent)
            if not folder.is_dir():
                return []
            return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        base = f"{self.prefix}{parent}".rstrip("/") + "/"
        names = self._wasb(
            "listing", lambda: self.hook.get_blobs_list(self.location, prefix=base, delimiter="/")
        )
        return sorted({n[len(base) :].strip("/") for n in names if n.endswith("/")})

    def _files(self, folder: str) -> list[str]:
        """Return the ``.jsonl`` parts under ``folder`` (recursively), relative to the sink."""
        if self.kind == "local":
            root = Path(self.location, folder)
            if not root.is_dir():
                return []
            base = Path(self.location)
            return sorted(
                p.relative_to(base).as_posix()
                for p in root.rglob("*.jsonl")
                if p.is_file() and not p.name.startswith(".")
            )
        names = self._wasb(
            "listing",
            lambda: self.hook.get_blobs_list_recursive(
                self.location, prefix=f"{self.prefix}{folder}", endswith=".jsonl"
            ),
        )
        return sorted(n[len(self.prefix) :] for n in names)

    def _wasb(self, what: str, fn: Any) -> Any:
        from azure.core.exceptions import AzureError

        try:
            return fn()
        except AzureError as e:
            raise MonitoringError(f"{what} {self.describe()} failed: {type(e).__name__}: {e}") from e

    def list_parts(
        self,
        service: str,
        start: datetime,
        end: datetime,
        *,
        model: str | None = None,
        version: str | int | None = None,
    ) -> list[str]:
        """Return the parts (paths relative to the sink) in the hour folders of a window.

        :param service: the scoring service's name.
        :param start: window start (inclusive, UTC).
        :param end: window end (exclusive, UTC).
        :param model: only this model's records.
        :param version: only this model version's records.
        """
        svc = _segment(service)
        models = [_segment(model)] if model else self._children(svc)
        prefixes = window_prefixes(start, end)
        parts: list[str] = []
        for m in models:
            versions = [_segment(str(version))] if version not in (None, "") else self._children(f"{svc}/{m}")
            for v in versions:
                for p in prefixes:
                    parts.extend(self._files(f"{svc}/{m}/{v}/{p}"))
        return parts

    def read_part(self, part: str) -> bytes:
        """Return the bytes of one part."""
        if self.kind == "local":
            try:
                return Path(self.location, part).read_bytes()
            except OSError as e:
                raise MonitoringError(f"reading {part} from {self.location} failed: {e}") from e
        return self._wasb(
            f"reading {part} from",
            lambda: self.hook.download(self.location, f"{self.prefix}{part}").readall(),
        )

    def iter_records(
        self,
        service: str,
        start: datetime,
        end: datetime,
        *,
        model: str | None = None,
        version: str | int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield the records of a window whose ``ts`` lies in ``[start, end)``, part by part.

        Lines that are not JSON objects are skipped and counted in the log.
        """
        bad = 0
        for part in self.list_parts(service, start, end, model=model, version=version):
            for line in self.read_part(part).splitlines():
                if not line.strip():
                    continue
                try:
                    record = _loads(line)
                    ts = _to_utc(record["ts"])
                except (ValueError, KeyError, TypeError, ConfigError):
                    bad += 1
                    continue
                if start <= ts < end:
                    yield record
        if bad:
            log.warning("skipped %d unreadable lines of %s in %s", bad, service, self.describe())


# --- records to features -------------------------------------------------------------------


def _named_columns(doc: dict[str, Any]) -> tuple[list[list[Any]], list[str] | None]:
    """Turn ``{name: tensor}`` into rows: one 2-D tensor is positional, else names per column."""
    arrays = {k: np.asarray(v) for k, v in doc.items()}
    if len(arrays) == 1:
        (arr,) = arrays.values()
        if arr.ndim == 2:
            return arr.tolist(), None
        if arr.ndim == 1:
            return [arr.tolist()], None
    rows: int | None = None
    blocks: list[np.ndarray] = []
    names: list[str] = []
    for key, arr in arrays.items():
        if arr.ndim == 0:
            arr = arr.reshape(1, 1)
        elif arr.ndim == 1:
            arr = arr.reshape(-1, 1)
        elif arr.ndim > 2:
            arr = arr.reshape(arr.shape[0], -1)
        if rows is None:
            rows = arr.shape[0]
        elif arr.shape[0] != rows:
            raise ValueError(f"input {key!r} has {arr.shape[0]} rows, others {rows}")
        blocks.append(arr.astype(object))
        names += [key] if arr.shape[1] == 1 else [f"{key}_{i}" for i in range(arr.shape[1])]
    return np.concatenate(blocks, axis=1).tolist(), names


def _records(items: list[dict[str, Any]]) -> tuple[list[list[Any]], list[str]]:
    names = list(items[0])
    return [[item.get(n) for n in names] for item in items], names


def extract_rows(doc: Any) -> tuple[list[list[Any]], list[str] | None]:
    """Return the feature rows of one request body and their names (``None``: positional).

    Understands ``{"data": …}``, ``{"input": …}`` and other named inputs, MLflow's
    ``inputs``/``instances``/``dataframe_split``/``dataframe_records``, bare lists of rows
    or of records, and a JSON string of any of them.

    :raises ValueError: the body has no recognisable feature rows.
    """
    if isinstance(doc, (str, bytes)):
        doc = _loads(doc)
    if isinstance(doc, list):
        if not doc:
            return [], None
        if isinstance(doc[0], dict):
            return _records(doc)
        if isinstance(doc[0], list):
            arr = np.asarray(doc, dtype=object)
            return (arr.reshape(arr.shape[0], -1).tolist() if arr.ndim > 2 else doc), None
        return [doc], None
    if not isinstance(doc, dict) or not doc:
        raise ValueError(f"no feature rows in a {type(doc).__name__}")
    if "dataframe_split" in doc:
        split = doc["dataframe_split"]
        columns = split.get("columns")
        return list(split.get("data") or []), [str(c) for c in columns] if columns else None
    if "dataframe_records" in doc:
        items = doc["dataframe_records"] or []
        return _records(items) if items else ([], None)
    for key in ("instances", "inputs", "data"):
        if key in doc:
            inner = doc[key]
            return _named_columns(inner) if isinstance(inner, dict) else extract_rows(inner)
    return _named_columns(doc)


def _split_outputs(outputs: Any, n: int) -> list[Any]:
    """Return one output per row of a request: split arrays of length ``n``, else repeat."""
    if isinstance(outputs, list) and len(outputs) == n:
        return outputs
    if isinstance(outputs, dict) and outputs and n > 0:
        values = list(outputs.values())
        if all(isinstance(v, list) and len(v) == n for v in values):
            return [{k: v[i] for k, v in outputs.items()} for i in range(n)]
    return [outputs] * n


@dataclass
class CollectedData:
    """Feature rows of a window with their request metadata.

    :param features: ``rows x features`` float64 matrix (missing values as NaN).
    :param feature_names: one name per column (``f0 …`` for positional inputs).
    :param request_id: request id per row.
    :param ts: ISO-8601 time per row.
    :param model: model name per row.
    :param version: model version per row.
    :param outputs: the row's output, as JSON text.
    :param skipped: records left out (unreadable inputs or another input shape).
    """

    features: np.ndarray
    feature_names: list[str]
    request_id: list[str] = field(default_factory=list)
    ts: list[str] = field(default_factory=list)
    model: list[str] = field(default_factory=list)
    version: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    skipped: int = 0

    @property
    def rows(self) -> int:
        """Return the number of rows."""
        return int(self.features.shape[0])


def records_to_dataset(records: Iterable[dict[str, Any]]) -> CollectedData:
    """Turn collected records into one feature matrix.

    Records that entry scripts log themselves count only with ``designation == "inputs"``.
    When requests came in several shapes, the most common shape (by column names and count)
    wins and the others are skipped with a warning.
    """
    groups: dict[tuple[str, ...], list[tuple[list[Any], dict[str, Any], Any]]] = {}
    skipped = 0
    for record in records:
        try:
            if "designation" in record:
                if record.get("designation") != "inputs":
                    continue
                rows, names = extract_rows(record.get("data"))
                names = names or record.get("feature_names") or None
                outputs: list[Any] = [None] * len(rows)
            else:
                rows, names = extract_rows(record.get("inputs"))
                outputs = _split_outputs(record.get("outputs"), len(rows))
        except (ValueError, TypeError, KeyError, AttributeError):
            skipped += 1
            continue
        for row, out in zip(rows, outputs, strict=True):
            if not isinstance(row, list):
                row = [row]
            key = tuple(names) if names else tuple(default_feature_names(len(row)))
            if len(key) != len(row):
                skipped += 1
                continue
            groups.setdefault(key, []).append((row, record, out))
    if not groups:
        return CollectedData(features=np.empty((0, 0)), feature_names=[], skipped=skipped)
    counts = Counter({k: len(v) for k, v in groups.items()})
    names_key, _ = counts.most_common(1)[0]
    other = sum(n for k, n in counts.items() if k != names_key)
    if other:
        log.warning(
            "skipped %d rows whose inputs have another shape than the %d-column majority",
            other,
            len(names_key),
        )
    chosen = groups[names_key]
    try:
        matrix = np.array([row for row, _, _ in chosen], dtype=np.float64)
    except (TypeError, ValueError):
        kept, bad = [], 0
        for item in chosen:
            try:
                kept.append((np.asarray(item[0], dtype=np.float64), item))
            except (TypeError, ValueError):
                bad += 1
        skipped += bad
        chosen = [item for _, item in kept]
        matrix = np.array([arr for arr, _ in kept], dtype=np.float64).reshape(len(kept), len(names_key))
    return CollectedData(
        features=matrix,
        feature_names=list(names_key),
        request_id=[str(r.get("request_id", "")) for _, r, _ in chosen],
        ts=[str(r.get("ts", "")) for _, r, _ in chosen],
        model=[str(r.get("model", "")) for _, r, _ in chosen],
        version=[str(r.get("version", "")) for _, r, _ in chosen],
        outputs=[json.dumps(o, separators=(",", ":"), default=str) for _, _, o in chosen],
        skipped=skipped + other,
    )


# --- datasets (Parquet) ---------------------------------------------------------------------


def write_dataset(
    data: CollectedData, path: str | os.PathLike[str], *, metadata: dict[str, str] | None = None
) -> str:
    """Write a dataset as one Parquet file (metadata columns, then one column per feature).

    The feature names go in the schema metadata (``mlops.features``) so readers find them
    whatever the column order. The file is written beside its target and renamed into place.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    clash = set(data.feature_names) & set(META_COLUMNS)
    if clash:
        raise MonitoringError(f"feature names {sorted(clash)} clash with metadata columns {META_COLUMNS}")
    columns: dict[str, Any] = {
        "request_id": pa.array(data.request_id, pa.string()),
        "ts": pa.array([_to_utc(t) if t else None for t in data.ts], pa.timestamp("us", tz="UTC")),
        "model": pa.array(data.model, pa.string()),
        "version": pa.array(data.version, pa.string()),
        "outputs": pa.array(data.outputs, pa.string()),
    }
    for j, name in enumerate(data.feature_names):
        columns[name] = pa.array(data.features[:, j], pa.float64())
    meta = {"mlops.features": json.dumps(data.feature_names), **(metadata or {})}
    table = pa.table(columns).replace_schema_metadata({k: str(v) for k, v in meta.items()})
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, target)
    return str(target)


def read_dataset(path: str | os.PathLike[str]) -> CollectedData:
    """Read a dataset written by :func:`write_dataset`."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:
        raise MonitoringError(f"cannot read dataset {path}: {e}") from e
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if "mlops.features" in meta:
        names = json.loads(meta["mlops.features"])
    else:
        names = [c for c in table.column_names if c not in META_COLUMNS]
    if names:
        features = np.column_stack([table.column(n).to_numpy(zero_copy_only=False) for n in names])
    else:
        features = np.empty((table.num_rows, 0))

    def strings(col: str) -> list[str]:
        if col not in table.column_names:
            return [""] * table.num_rows
        return ["" if v is None else str(v) for v in table.column(col).to_pylist()]

    ts = table.column("ts").to_pylist() if "ts" in table.column_names else [None] * table.num_rows
    return CollectedData(
        features=features.astype(np.float64, copy=False),
        feature_names=list(names),
        request_id=strings("request_id"),
        ts=[t.isoformat() if t is not None else "" for t in ts],
        model=strings("model"),
        version=strings("version"),
        outputs=strings("outputs"),
    )


def dataset_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Return a dataset's schema metadata (``mlops.service``, ``mlops.window_start`` …)."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, ValueError) as e:
        raise MonitoringError(f"cannot read dataset {path}: {e}") from e
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items() if not k.startswith(b"ARROW")}


def collect_window(
    service: str,
    start: datetime,
    end: datetime,
    output_path: str | os.PathLike[str],
    *,
    sink: str | None = None,
    wasb_conn_id: str | None = None,
    wasb_hook: WasbHook | None = None,
    model: str | None = None,
    version: str | int | None = None,
) -> dict[str, Any]:
    """Read a window of a service's collected records and write them as one Parquet dataset.

    Nothing is written when the window holds no usable row.

    :return: ``{"path", "rows", "skipped", "features", "parts", "window_start", "window_end", "sink"}``;
        ``path`` is ``None`` when there were no rows.
    """
    reader = CollectedDataReader(sink, wasb_conn_id=wasb_conn_id, wasb_hook=wasb_hook)
    parts = reader.list_parts(service, start, end, model=model, version=version)
    log.info(
        "Window %s .. %s of %s in %s: %d parts",
        start.isoformat(),
        end.isoformat(),
        service,
        reader.describe(),
        len(parts),
    )
    data = records_to_dataset(reader.iter_records(service, start, end, model=model, version=version))
    result: dict[str, Any] = {
        "path": None,
        "rows": data.rows,
        "skipped": data.skipped,
        "features": len(data.feature_names),
        "parts": len(parts),
        "service": service,
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
        "sink": reader.describe(),
    }
    if data.rows:
        result["path"] = write_dataset(
            data,
            output_path,
            metadata={
                "mlops.service": service,
                "mlops.window_start": start.isoformat(),
                "mlops.window_end": end.isoformat(),
            },
        )
    return result

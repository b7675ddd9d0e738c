"""The two kinds of model the service runs: an ONNX graph, or an Azure ML entry script.

Both load once, in a worker thread, during the app's lifespan start-up. Neither knows
about HTTP: :class:`OnnxModel` turns named numpy arrays into named numpy arrays,
:class:`EntryScriptModel` turns the raw request body into whatever ``run()`` returns.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["EntryScriptModel", "ModelLoadError", "OnnxModel", "TensorSpec", "find_onnx_file"]

log = logging.getLogger(__name__)

#: onnxruntime type strings → numpy dtypes (strings are object arrays of str).
ORT_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the service does not start."""


@dataclass(frozen=True)
class TensorSpec:
    """One declared input or output: name, onnx type and shape (None or a name: free)."""

    name: str
    type: str
    shape: tuple[int | str | None, ...]
    #: whether values must be whole numbers (integer and bool types); set from ``type``
    integral: bool = field(init=False, repr=False, compare=False)
    #: ``(axis, size)`` of every fixed dimension, for the per-request shape check
    fixed: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        dtype = ORT_DTYPES.get(self.type)
        integral = (
            dtype is not None
            and dtype is not np.object_
            and (np.issubdtype(dtype, np.integer) or dtype is np.bool_)
        )
        object.__setattr__(self, "integral", integral)
        fixed = tuple((axis, d) for axis, d in enumerate(self.shape) if isinstance(d, int))
        object.__setattr__(self, "fixed", fixed)

    @property
    def dtype(self) -> Any:
        """Return the numpy dtype, or None for non-tensor types (sequences, maps)."""
        return ORT_DTYPES.get(self.type)

    @property
    def batch_free(self) -> bool:
        """Return whether the first dimension is free (so requests can be stacked)."""
        return bool(self.shape) and not isinstance(self.shape[0], int)

    def shape_text(self) -> str:
        """Return the shape as text, free dimensions as ``N`` or their name."""
        return "[" + ", ".join(str(d) if d is not None else "N" for d in self.shape) + "]"


def find_onnx_file(model_dir: Path) -> Path | None:
    """Return the single ``*.onnx`` file under ``model_dir`` (searched recursively).

    :raises ModelLoadError: there is more than one
    """
    found = sorted(p for p in model_dir.rglob("*.onnx") if p.is_file())
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(model_dir)) for p in found)
        raise ModelLoadError(f"{model_dir} holds several ONNX files ({names}); use an entry script")
    return found[0] if found else None


#: Rows in the synthetic batch that measures a model's cost at load time.
PROBE_ROWS = 8
#: A probe batch slower than this (µs) marks the model compute-bound: it gets one
#: onnxruntime intra-op thread per core; cheaper models get one thread, since the thread
#: pool's hand-offs cost more than they save and the cores serve HTTP instead.
COMPUTE_BOUND_PROBE_US = 400.0


def available_cores() -> int:
    """Return the cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class OnnxModel:
    """An ONNX graph served with onnxruntime.

    Session options suit a server: full graph optimisation, sequential execution, and
    intra-op threads that sleep rather than spin when idle (spinning threads would take
    the event loop's core). The intra-op thread count is ``threads`` when given, else
    chosen from the model's measured cost: one thread for a cheap model, one per core for
    a compute-bound one (see :data:`COMPUTE_BOUND_PROBE_US`).

    :param path: the ``.onnx`` file
    :param threads: onnxruntime intra-op threads; 0 chooses from the model's cost
    """

    def __init__(self, path: Path, *, threads: int = 0) -> None:
        self.path = path
        self._session = self._open(1 if threads == 0 else threads)
        self.inputs = [_spec(i) for i in self._session.get_inputs()]
        self.outputs = [_spec(o) for o in self._session.get_outputs()]
        self.output_names = [o.name for o in self.outputs]
        self.batchable = all(i.batch_free for i in self.inputs)
        self.threads = 1 if threads == 0 else threads
        #: measured cost of a call on one row (µs), None if unknown (set by the probe)
        self.one_row_us: float | None = None
        self._one_row_feeds: dict[str, np.ndarray] | None = None
        #: measured cost of one row (µs, from a batch of :data:`PROBE_ROWS`), None if unknown
        self.row_cost_us = self._probe()
        cores = available_cores()
        cost = self.row_cost_us
        if threads == 0 and cores > 1 and cost is not None and cost * PROBE_ROWS > COMPUTE_BOUND_PROBE_US:
            self._session = self._open(cores)
            self.threads = cores

    def _open(self, threads: int) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        try:
            return ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"onnxruntime cannot load {self.path}: {e}") from e

    def _probe(self) -> float | None:
        """Time the model on synthetic inputs (best of three); None if inputs cannot be faked.

        Returns the cost of one row within a batch of :data:`PROBE_ROWS`, and sets
        :attr:`one_row_us`, the cost of a whole call on one row (fixed overhead included).
        """
        feeds: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            dtype = spec.dtype
            if dtype is None or dtype is np.object_:
                return None
            shape = [
                (PROBE_ROWS if axis == 0 else 1) if not isinstance(d, int) else d
                for axis, d in enumerate(spec.shape)
            ]
            feeds[spec.name] = np.zeros(shape, dtype=dtype)
        rows = PROBE_ROWS if self.batchable else 1
        single = {name: value[:1] for name, value in feeds.items()} if self.batchable else feeds
        self._one_row_feeds = single
        try:
            self._session.run(self.output_names, feeds)  # warm-up: first calls allocate
            self.one_row_us = _best_of_three(lambda: self._session.run(self.output_names, single))
            batch = _best_of_three(lambda: self._session.run(self.output_names, feeds))
        except Exception:  # a model that rejects zeros still serves real inputs
            self.one_row_us = None
            return None
        return batch / rows

    def warm_up(self) -> None:
        """Run one synthetic call on the calling thread (onnxruntime's first call per thread is slow)."""
        if self._one_row_feeds is not None:
            self._session.run(self.output_names, self._one_row_feeds)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Run the graph on ``feeds`` and return the outputs by name (thread-safe)."""
        results = self._session.run(self.output_names, dict(feeds))
        return dict(zip(self.output_names, results, strict=True))


def _best_of_three(call: Callable[[], Any]) -> float:
    """Return the fastest of three runs of ``call``, in µs."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best * 1e6


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(
        d if isinstance(d, int) and d >= 0 else (d if isinstance(d, str) else None) for d in arg.shape
    )
    return TensorSpec(name=arg.name, type=arg.type, shape=shape)


class EntryScriptModel:
    """An Azure ML entry script, run unchanged: ``init()`` once, ``run(raw_data)`` per request.

    ``AZUREML_MODEL_DIR`` is set to the model folder before ``init()``; the script's own
    folder is put on ``sys.path`` so it can import its neighbours, as in Azure ML.

    :param path: the entry script
    :param model_dir: the model folder (``AZUREML_MODEL_DIR``)
    """

    def __init__(self, path: Path, model_dir: Path | None) -> None:
        self.path = path.resolve()
        self.model_dir = model_dir
        self._module: ModuleType | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Import the script and call its ``init()``.

        :raises ModelLoadError: the import or ``init()`` failed, or there is no ``run``
        """
        if self.model_dir is not None:
            os.environ["AZUREML_MODEL_DIR"] = str(self.model_dir.resolve())
        folder = str(self.path.parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        spec = importlib.util.spec_from_file_location(self.path.stem, self.path)
        if spec is None or spec.loader is None:
            raise ModelLoadError(f"cannot import entry script {self.path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[self.path.stem] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise ModelLoadError(f"importing entry script {self.path.name} failed: {e!r}") from e
        if not callable(getattr(module, "run", None)):
            raise ModelLoadError(f"entry script {self.path.name} has no run(raw_data) function")
        init = getattr(module, "init", None)
        if callable(init):
            try:
                init()
            except Exception as e:
                raise ModelLoadError(f"init() of {self.path.name} raised {e!r}") from e
        self._module = module

    def run(self, raw_data: str) -> Any:
        """Call ``run(raw_data)``; one call at a time, as Azure ML's single-threaded worker does."""
        assert self._module is not None, "load() first"
        with self._lock:
            return self._module.run(raw_data)

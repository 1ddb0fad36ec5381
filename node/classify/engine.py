"""Inference: one loaded model, on CUDA when there is one (fp16 autocast), else on the CPU.

Route workers call `classify(volume)` concurrently; a single inference thread takes what is waiting
(up to `max_batch`, waiting at most `batch_wait_ms` for more once one request is in), runs one forward
pass for the whole batch and hands each caller its own result. On a GPU that keeps the network busy
while several workers decode and assemble; on a CPU the batch is 1 and nothing waits.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from node.classify.package import ModelPackage
from node.classify.preprocess import to_network_input
from node.errors import NodeError
from node.volume import Volume

logger = logging.getLogger(__name__)


class EngineError(NodeError):
    """The engine cannot run as configured (e.g. CUDA asked for and not available)."""


@dataclass(frozen=True)
class ImagePrediction:
    """What the image model says about one series."""

    labels: dict[str, str]  # task -> most probable class
    probabilities: dict[str, dict[str, float]]  # task -> class -> probability
    model_id: str
    device: str
    batch_size: int
    timings_ms: dict[str, float] = field(default_factory=dict)  # preprocess, infer

    def confidence(self, task: str) -> float:
        return self.probabilities[task][self.labels[task]]

    def as_audit(self) -> dict[str, Any]:
        return {
            "labels": dict(self.labels),
            "confidence": {task: round(self.confidence(task), 4) for task in self.labels},
            "probabilities": {
                task: {c: round(p, 4) for c, p in probs.items()} for task, probs in self.probabilities.items()
            },
            "model": self.model_id,
            "device": self.device,
            "batch_size": self.batch_size,
        }


def resolve_device(requested: str) -> torch.device:
    """'auto' -> cuda if torch sees a GPU, else cpu; an explicit CUDA device must exist."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise EngineError(f"classify.device: {requested!r} is not a torch device ({exc})") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineError(f"classify.device is {requested!r} but torch sees no CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EngineError(f"classify.device {requested!r}: only {torch.cuda.device_count()} GPUs")
    elif device.type != "cpu":
        raise EngineError(f"classify.device: {requested!r} is neither cpu nor cuda")
    return device


@dataclass
class _Request:
    volume: Volume
    future: Future[ImagePrediction]


class ClassifierEngine:
    def __init__(
        self,
        package: ModelPackage,
        *,
        device: str = "auto",
        fp16: bool = True,
        max_batch: int | None = None,
        batch_wait_ms: float = 10.0,
        cpu_threads: int | None = None,
    ) -> None:
        self.package = package
        self.device = resolve_device(device)
        self.on_gpu = self.device.type == "cuda"
        self.fp16 = fp16 and self.on_gpu
        self.max_batch = max_batch or (8 if self.on_gpu else 1)
        self.batch_wait = batch_wait_ms / 1000.0
        if cpu_threads is not None:
            torch.set_num_threads(cpu_threads)
        if self.on_gpu:
            # Every batch has the same spatial shape (the package's grid): let cuDNN pick its fastest kernels.
            torch.backends.cudnn.benchmark = True
        self.network = package.load_network(self.device)
        self.grid = package.spec.grid
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        logger.info(
            "classifier %s on %s (fp16 %s, max batch %d)",
            package.model_id,
            self.device,
            self.fp16,
            self.max_batch,
        )

    @property
    def device_name(self) -> str:
        if self.on_gpu:
            return f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        return "cpu"

    # -- synchronous, batched --------------------------------------------------------------------

    def predict(self, volumes: Sequence[Volume]) -> list[ImagePrediction]:
        """Classify volumes in one forward pass (the caller chose the batch)."""
        if not volumes:
            return []
        started = time.perf_counter()
        with torch.inference_mode():
            inputs = torch.cat(
                [to_network_input(v.voxels, self.grid, self.device, self.package.window_hu) for v in volumes]
            )
            self._synchronize()
            preprocessed = time.perf_counter()
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.fp16):
                logits = self.network(inputs)
            probabilities = {task: torch.softmax(out.float(), dim=1).cpu() for task, out in logits.items()}
        finished = time.perf_counter()
        batch = len(volumes)
        # Per-series share of the batch's time: what one series costs at this batch size.
        timings = {
            "preprocess": (preprocessed - started) * 1000.0 / batch,
            "infer": (finished - preprocessed) * 1000.0 / batch,
        }
        results = []
        for i in range(batch):
            probs = {
                task: {c: float(p) for c, p in zip(self.package.tasks[task], values[i].tolist(), strict=True)}
                for task, values in probabilities.items()
            }
            labels = {task: max(classes, key=classes.__getitem__) for task, classes in probs.items()}
            results.append(
                ImagePrediction(labels, probs, self.package.model_id, self.device_name, batch, dict(timings))
            )
        return results

    def _synchronize(self) -> None:
        if self.on_gpu:
            torch.cuda.synchronize(self.device)

    # -- concurrent callers ----------------------------------------------------------------------

    def classify(self, volume: Volume) -> ImagePrediction:
        """Classify one volume; safe from many threads (their requests are batched together)."""
        if self.max_batch == 1:
            with self._lock:
                return self.predict([volume])[0]
        self._ensure_thread()
        future: Future[ImagePrediction] = Future()
        self._queue.put(_Request(volume, future))
        return future.result()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="classifier", daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.batch_wait
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(item)
            try:
                results = self.predict([r.volume for r in batch])
            except Exception as exc:  # thread boundary: every waiting caller gets the error
                logger.exception("classifier batch of %d failed", len(batch))
                for request in batch:
                    request.future.set_exception(exc)
                continue
            for request, result in zip(batch, results, strict=True):
                request.future.set_result(result)

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=30)

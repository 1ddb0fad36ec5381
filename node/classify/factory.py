"""Build the analyser the settings ask for: the classifier (default) or none (classify.enabled false)."""

from __future__ import annotations

import logging

from node.analysis import NoAnalysis, SeriesAnalyser
from node.config import ClassifySettings

logger = logging.getLogger(__name__)


def build_analyser(settings: ClassifySettings) -> tuple[SeriesAnalyser, int]:
    """(analyser, number of route workers). Raises ModelPackageError / EngineError when it cannot load.

    torch is imported only here, so a node with classification disabled starts without it.
    """
    if not settings.enabled:
        return NoAnalysis(), settings.workers or 1
    from node.classify.analyser import ClassifyingAnalyser
    from node.classify.engine import ClassifierEngine
    from node.classify.fusion import FusionPolicy
    from node.classify.package import STARTER_PACKAGE, load_package

    package = load_package(settings.model_dir or STARTER_PACKAGE)
    engine = ClassifierEngine(
        package,
        device=settings.device,
        fp16=settings.fp16,
        max_batch=settings.max_batch,
        batch_wait_ms=settings.batch_wait_ms,
        cpu_threads=settings.cpu_threads,
    )
    policy = FusionPolicy(settings.min_confidence, settings.min_prior_confidence, package.fusion_weights)
    workers = settings.workers or (4 if engine.on_gpu else 1)
    decoders = None
    if settings.decode_processes:
        from concurrent.futures import ProcessPoolExecutor

        decoders = ProcessPoolExecutor(settings.decode_processes)
    return ClassifyingAnalyser(engine, policy, decoders=decoders), workers

"""``weir.Worker``: the runtime's worker with the model layer's services by default.

The runtime (``weir.streams``) knows nothing of models, so ``weir.streams.Worker``
runs without model services unless it is handed some.  This roof-level worker
creates and owns ``ModelServices(settings)`` when none are given, so that
``weir.Worker(pipeline, settings)`` runs steps that call models; each such
worker has its own services, started and stopped with it.
"""

from __future__ import annotations

from collections.abc import Iterable

from weir.core.config import WeirSettings
from weir.processors.services import ModelServices
from weir.streams.pipeline import Pipeline
from weir.streams.redaction import Redactor
from weir.streams.services import WorkerServices
from weir.streams.tracing import Tracing
from weir.streams.worker import Worker as StreamsWorker

__all__ = ["Worker"]


class Worker(StreamsWorker):
    """``weir.streams.Worker`` owning ``ModelServices(settings)`` unless ``services`` is given.

    >>> worker = Worker(pipeline, settings)          # doctest: +SKIP
    >>> async with worker:                           # doctest: +SKIP
    ...     await worker.wait_stopped()
    """

    def __init__(
        self,
        pipeline: Pipeline,
        settings: WeirSettings,
        *,
        steps: Iterable[str] | None = None,
        tracing: Tracing | None = None,
        redactor: Redactor | None = None,
        services: WorkerServices | None = None,
    ) -> None:
        super().__init__(
            pipeline,
            settings,
            steps=steps,
            tracing=tracing,
            redactor=redactor,
            services=ModelServices(settings) if services is None else services,
        )

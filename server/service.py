"""The services behind the routes, over one model and its datastores: completions, the
tokenizer, attribution and admin, each a module of its own, sharing the registry of
datastores and the model thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datastore.encoder import KeyEncoder
from server.admin import AdminService
from server.attribution import AttributionService
from server.completions import CompletionService
from server.metrics import Metrics
from server.registry import DatastoreRegistry
from server.settings import Settings
from server.tokens import TokenizerService
from server.transparency import LogService
from server.worker import ModelWorker


class SiloService:
    """The four services and what they share."""

    def __init__(self, settings: Settings, registry: DatastoreRegistry, encoder: KeyEncoder,
                 model_name: str, metrics: Metrics) -> None:
        self.settings = settings
        self.registry = registry
        self.model_name = model_name
        self.metrics = metrics
        base = registry.lm()
        self.worker = ModelWorker(settings.max_batch_size, settings.max_queue,
                                  settings.batch_wait_ms / 1000, metrics.observe_batch,
                                  settings.torch_threads)
        self.tokens = TokenizerService(base.tokenizer, base.max_length, base.vocab_size,
                                       settings)
        self.completions = CompletionService(settings, registry, self.tokens, self.worker,
                                             metrics, model_name)
        self.attribution = AttributionService(registry)
        self.log = LogService(registry)
        self.admin = AdminService(registry, encoder, metrics, self.log)

    def datastore_infos(self) -> dict[str, Any]:
        return {name: lm.datastore.info() for name, lm in self.registry.loaded().items()
                if lm.datastore is not None}


def model_name_of(path: Path, configured: str | None) -> str:
    return configured or Path(path).name

"""The app factory: `create_app()` builds the FastAPI app; its lifespan loads the model
and opens the datastores, then starts the model thread.

    uvicorn --factory server.app:create_app      (what `silo serve` runs)

Settings are read here (`Settings()`), not at import. Library errors are mapped to HTTP
once, by `install_error_handlers`. Every request is counted and timed into the metrics
and logged as one JSON line.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from datastore.table.base import DocumentTable
from server.audit import AuditLog
from server.auth import KeyRing
from server.errors import install_error_handlers
from server.metrics import Metrics
from server.registry import DatastoreRegistry
from server.routes import router
from server.routes_admin import router as admin_router
from server.routes_log import router as log_router
from server.service import SiloService, model_name_of
from server.settings import Settings

log = logging.getLogger("server.access")


def load_service(settings: Settings, metrics: Metrics) -> SiloService:
    """Load the model, open the active datastore and wire the service (slow: seconds)."""
    from datastore.store.datastore import Datastore
    from datastore.tlog.keys import read_key_file
    from silo.encoder import LMEncoder
    from silo.lm import SiloConfig, SiloLM
    from silo.model import DEFAULT_MODEL, load_lm, parse_dtype

    loaded = load_lm(settings.model or DEFAULT_MODEL, device=settings.device,
                     dtype=parse_dtype(settings.dtype))
    config = SiloConfig(batch_size=settings.max_batch_size)

    signer = read_key_file(settings.log_key_file) if settings.log_key_file else None
    paths = settings.named_datastores()
    active = None
    if settings.datastore is not None:
        active = Path(settings.datastore).name
        paths[active] = settings.datastore
    check_datastores(paths, settings.default_set(), loaded.fingerprint,
                     settings.reference is not None)
    # one reference for every datastore (it is the model's own text)
    reference = None if settings.reference is None else Datastore.open(
        settings.reference, encoder_fingerprint=loaded.fingerprint)

    def open_lm(path: Path) -> SiloLM:
        store = Datastore.open(path, encoder_fingerprint=loaded.fingerprint,
                               on_knn_search=metrics.knn_seconds.observe)
        store.log.signer = signer or store.log.signer
        return SiloLM(loaded.model, loaded.tokenizer, store, config, reference=reference)

    registry = DatastoreRegistry(paths, active, open_lm,
                                 SiloLM(loaded.model, loaded.tokenizer, None, config))
    if active is not None:
        registry.lm(active)  # open now: a broken datastore fails the start, not a request
    return SiloService(settings, registry, LMEncoder.from_loaded(loaded),
                       model_name_of(loaded.path, settings.model_name), metrics)


def check_datastores(paths: dict[str, Path], default: list[str] | None,
                     fingerprint: str, reference: bool = False) -> None:
    """Refuse to start when a listed datastore's keys come from another model (any
    request may combine them, so all must share the model), when its weight is measured
    from a reference and none is set (`reference`), when the default set names a
    datastore that is not listed, or a set stored with a datastore does not read back.
    Folders without a manifest yet are checked when they open."""
    from datastore.errors import ModelMismatchError, NotFoundError
    from datastore.manifest import MANIFEST_FILE, read_manifest
    from silo.set_tuning import check_sets
    from silo.tuning import needs_reference

    for name, path in paths.items():
        check_sets(path, reference)
        if not reference and needs_reference(path):
            raise NotFoundError(
                f"datastore {name!r} ({path}) measures its relevance weight from the "
                "distance to a reference index of the model's own text; set SILO_REFERENCE "
                "to one (silo serve builds the default's)")
        if (Path(path) / MANIFEST_FILE).exists():
            theirs = read_manifest(path).model_fingerprint
            if theirs != fingerprint:
                raise ModelMismatchError(
                    f"datastore {name!r} ({path}) was built with another model "
                    f"(fingerprint {theirs[:12]}, the served model's is {fingerprint[:12]})")
    for name in default or []:
        if name != "all" and name not in paths:
            raise NotFoundError(f"SILO_DEFAULT_DATASTORES names {name!r}, which is not a "
                                f"datastore of this service ({', '.join(sorted(paths))})")


class ObserveRequests:
    """Each HTTP request counted and timed (to its response's start) into the metrics,
    and logged as one JSON line. A plain ASGI middleware: Starlette's `BaseHTTPMiddleware`
    runs every request in a task group and memory streams of its own, which cost more
    than routing a short request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._record(scope, message["status"], time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, observed)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        self.metrics.observe_request(route, scope["method"], status, seconds)
        if log.isEnabledFor(logging.INFO):
            client = scope.get("client")
            log.info(json.dumps({"method": scope["method"], "route": route,
                                 "status": status, "ms": round(1e3 * seconds, 2),
                                 "client": client[0] if client else None}))


def _active_table(state: dict[str, SiloService]) -> DocumentTable | None:
    """The document table of the active datastore, where the audit log goes by default."""
    service = state.get("service")
    if service is None or service.registry.active is None:
        return None
    return service.registry.datastore().table


def add_optout_links(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI links of the opt-out workflow, for clients and stateful fuzzers to follow:
    documents added (`POST /admin/documents`) -> opted out by id (`POST /admin/optout`)
    -> the receipts listed (`GET /admin/optouts`), all on the same datastore."""
    paths = schema.get("paths", {})
    add, optout, receipts = (paths.get(p, {}).get(m) for p, m in (
        ("/admin/documents", "post"), ("/admin/optout", "post"), ("/admin/optouts", "get")))
    if not (add and optout and receipts):
        return schema
    same_store = {"query.datastore": "$response.body#/datastore"}
    add["responses"]["200"]["links"] = {"OptOutFirstDocument": {
        "operationId": optout["operationId"], "parameters": same_store,
        "requestBody": {"doc_ids": ["$request.body#/documents/0/id"]},
        "description": "Opt out the first document just added."}}
    optout["responses"]["200"]["links"] = {"ListReceipts": {
        "operationId": receipts["operationId"], "parameters": same_store,
        "description": "The receipts of the datastore, this one among them."}}
    return schema


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service app. `settings` default to the environment (`SILO_*`)."""
    settings = settings or Settings()
    state: dict[str, SiloService] = {}
    metrics = Metrics(lambda: state["service"].datastore_infos() if state else {})

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = load_service(settings, metrics)
        state["service"] = app.state.service = service
        service.worker.start()
        log.info(json.dumps({"event": "ready", "model": service.model_name,
                             "datastore": service.registry.active}))
        try:
            yield
        finally:
            service.worker.stop()
            service.registry.close()

    app = FastAPI(title="SILO service", version="0.1.0", lifespan=lifespan,
                  description="An LM whose weights hold no legal risk, plus an opt-out "
                              "datastore (kNN-LM, RIC-LM) with attribution.")
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.audit = AuditLog(settings.audit_log, lambda: _active_table(state))
    app.state.keys = KeyRing.from_settings(
        settings.admin_key.get_secret_value() if settings.admin_key else None,
        settings.user_keys(), settings.keys_file)
    install_error_handlers(app, settings.retry_after_s)
    app.include_router(router)
    app.include_router(admin_router)
    app.include_router(log_router)
    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_optout_links(generate_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    app.add_middleware(ObserveRequests, metrics=metrics)
    return app

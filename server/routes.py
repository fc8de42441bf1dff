"""Inference routes: health, metrics, models, completions, attribution, tokenizer, page.

Thin: validate (protocol models), authorize (deps), call the service. Handlers that
only read memory are `async` (a sync one costs a hop to the thread pool per request);
tokenize and detokenize, whose work grows with the input, stay in the pool.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from server.deps import ServiceDep, UserDep
from server.metrics import CONTENT_TYPE
from server.protocol import (
    AttributionRequest,
    AttributionResponse,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    Health,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
)
from server.transparency import checkpoint_header

PAGE = Path(__file__).resolve().parent / "page" / "index.html"
router = APIRouter()


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(PAGE, media_type="text/html")


@router.get("/healthz", response_model=Health)
async def healthz(service: ServiceDep) -> Health:
    return Health(model=service.model_name, datastore=service.registry.active)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, service: ServiceDep) -> Response:
    service.metrics.queue_depth.set(service.worker.depth)
    return Response(service.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/v1/models", response_model=ModelList)
async def models(service: ServiceDep, user: UserDep) -> ModelList:
    return ModelList(data=[ModelCard(id=service.model_name, created=int(time.time()),
                                     max_model_len=service.tokens.max_length)])


@router.post("/v1/completions", response_model=CompletionResponse,
             response_model_exclude_none=False)
async def completions(body: CompletionRequest, request: Request, service: ServiceDep,
                      user: UserDep) -> Response:
    return await service.completions.respond(body, user, await request.body())


@router.post("/v1/attribution", response_model=AttributionResponse)
async def attribution(body: AttributionRequest, service: ServiceDep, user: UserDep,
                      response: Response) -> AttributionResponse:
    found, head = await service.attribution.lookup(body, user)
    response.headers.update(checkpoint_header(head))
    return found


@router.get("/tokenizer_info", response_model=TokenizerInfo)
async def tokenizer_info(service: ServiceDep, user: UserDep) -> TokenizerInfo:
    return service.tokens.info()


@router.post("/tokenize", response_model=TokenizeResponse)
def tokenize(body: TokenizeRequest, service: ServiceDep, user: UserDep) -> Any:
    return service.tokens.tokenize(body.prompt, body.add_special_tokens)


@router.post("/detokenize", response_model=DetokenizeResponse)
def detokenize(body: DetokenizeRequest, service: ServiceDep, user: UserDep) -> Any:
    return service.tokens.detokenize(body.tokens)

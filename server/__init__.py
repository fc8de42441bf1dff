"""The HTTP face of the SILO service: the OpenAI-compatible API, admin, attribution.

    app          the app factory (`server.app:create_app`) and its lifespan
    routes       inference routes; routes_admin the admin routes (thin)
    deps         FastAPI dependencies: the service, the caller, the audit log
    protocol     request and response models
    service      SiloService: the services below and what they share
    completions  POST /v1/completions, whole or streamed
    responses    the response bodies built from the protocol models
    tokens       the tokenizer: prompts, token texts, vLLM's tokenizer routes
    attribution  POST /v1/attribution
    admin        documents, opt-outs, receipts, datastores
    worker       the model thread: dynamic batching off the event loop
    registry     the datastores by name, and which one is active
    auth, audit, errors, metrics, settings
                 keys and scopes, the audit log, the HTTP error mapping, Prometheus
                 metrics, `SILO_*` settings
"""

"""HTTP face of the SILO service (OpenAI-compatible API, admin, attribution)."""

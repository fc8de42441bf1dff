"""Service settings, read from `SILO_*` environment variables (and a `.env` file).

Built by the app factory (`Settings()` inside `create_app`), never at import, so tests
and `silo serve` can set the environment first. List-valued settings are plain
comma-separated strings (`SILO_API_KEYS=a,b`), parsed by the properties below.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from silo.mode import Mode


class Settings(BaseSettings):
    """Everything the service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="SILO_", env_file=".env", extra="ignore",
                                      protected_namespaces=())

    model: Path | None = Field(default=None, description="Model folder; default: shipped.")
    model_name: str | None = Field(default=None, description="Name in /v1/models.")
    datastore: Path | None = Field(default=None, description="The datastore active at start.")
    datastores: str = Field(default="", description="More datastores to swap to: name=path,...")
    default_datastores: str = Field(default="", description=(
        "The datastores a request uses when it names none: name,name,... or 'all'; "
        "unset: the active datastore."))
    reference: Path | None = Field(default=None, description=(
        "A reference index over the model's own training text (a datastore folder), for "
        "datastores whose relevance weight is measured from the distance to it."))
    default_mode: Mode = Mode.KNNLM
    device: str = "cpu"
    dtype: str = Field(default="auto", description=(
        "The model's dtype: auto (float32), float32, bfloat16 or float16; datastores built "
        "in float32 serve any of them."))

    admin_key: SecretStr | None = None
    api_keys: SecretStr = SecretStr("")  # comma-separated user keys
    keys_file: Path | None = None  # JSON: [{"key", "name", "sources", "license_classes"}]
    audit_log: Path | None = Field(default=None, description=(
        "A JSON-lines file for the admin audit log; unset: the active datastore's "
        "document table (PostgreSQL on replicas)."))
    log_key_file: Path | None = Field(default=None, description=(
        "The Ed25519 key that signs the transparency log's checkpoints (`silo log keygen`);"
        " unset: checkpoints are unsigned."))

    max_batch_size: int = Field(default=16, ge=1, description="Sequences per model call.")
    torch_threads: int | None = Field(default=None, ge=1, description=(
        "Torch intra-op threads for the model (unset: torch's default; `silo serve` sets "
        "all cores but one, so the event loop keeps a core)."))
    batch_wait_ms: float = Field(default=2.0, ge=0, description=(
        "How long an idle model that last served several jobs together waits for as many "
        "again before it starts (a lone client's request never waits)."))
    max_queue: int = Field(default=64, ge=1, description="Queued sequences before 429.")
    request_timeout_s: float = Field(default=120.0, gt=0)
    max_prompt_tokens: int | None = Field(default=None, ge=1, description="Default: the context.")
    max_tokens_limit: int = Field(default=1024, ge=1, description="Largest accepted max_tokens.")
    max_n: int = Field(default=16, ge=1)
    max_logprobs: int = Field(default=20, ge=0)
    max_prompts: int = Field(default=64, ge=1, description="Prompts in one completion request.")
    retry_after_s: int = Field(default=1, ge=1)

    def user_keys(self) -> list[str]:
        return [k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip()]

    def default_set(self) -> list[str] | None:
        """`SILO_DEFAULT_DATASTORES` as names (["all"] for all); None when unset."""
        names = [n.strip() for n in self.default_datastores.split(",") if n.strip()]
        return names or None

    def named_datastores(self) -> dict[str, Path]:
        """`SILO_DATASTORES` as {name: folder}; a bare path is named after its folder."""
        out: dict[str, Path] = {}
        for item in (s.strip() for s in self.datastores.split(",")):
            if not item:
                continue
            name, _, path = item.rpartition("=") if "=" in item else ("", "", item)
            out[name or Path(path).name] = Path(path)
        return out

"""The model registry: all SQL over the inference schema's `models` table (schema from the pool's search_path)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import asyncpg

from llmlab.runtime import AlreadyExists, InvalidArgument, NotFound, validation_error

from ..artifacts import Manifest

BACKENDS = ("onnx", "triton", "openai")
STATUSES = ("available", "loading", "unavailable", "deprecated")
CATEGORIES = ("text-generation", "chat", "embedding")
SIZE_CLASSES = ("small", "medium", "large", "xl")

_SLUG = re.compile(r"^[a-z0-9][a-z0-9._/:-]{0,127}$")  # ":" for fine-tuned ids, "ft:<base>:<suffix>:<job>"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Keys that would hold a secret; backend_config names the env var instead (api_key_env).
SECRET_KEYS = {"api_key", "apikey", "key", "token", "secret", "password", "authorization"}


class ModelNotFound(NotFound):
    """No model has this slug or UUID (OpenAI family: `model_not_found`)."""

    default_reason = "MODEL_NOT_FOUND"


@dataclass
class ModelRecord:
    """One registered model: the union of every family's model fields, plus how generation reaches it."""

    id: str
    uuid: str
    name: str
    provider: str
    base_model: str
    status: str
    description: str
    model_size: str
    size_class: str
    parameter_count: int | None
    capabilities: list[str]
    languages: list[str]
    category: str
    owned_by: str
    cost_per_token: float
    input_cost_per_token: float
    output_cost_per_token: float
    max_tokens: int
    context_window: int
    model_identifier: str
    version: str
    config: dict[str, Any]
    parameters: dict[str, Any] | None
    format: str
    quantization: str | None
    backend: str
    backend_config: dict[str, Any]
    artifact: dict[str, Any] | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> ModelRecord:
        def obj(v: str | None) -> Any:
            return json.loads(v) if v is not None else None

        values = {f.name: r[f.name] for f in fields(cls)}
        values["uuid"] = str(values["uuid"])
        values["capabilities"], values["languages"] = list(values["capabilities"]), list(values["languages"])
        for column in _JSON_COLUMNS:
            values[column] = obj(values[column])
        return cls(**values)

    @property
    def upstream_model(self) -> str:
        """The name a remote backend knows this model by."""
        return str(self.backend_config.get("model") or self.backend_config.get("model_name") or "") or (
            self.model_identifier or self.id
        )


@dataclass
class NewModel:
    """A model to register. `id` is derived from `name` (or `model_identifier`) when absent."""

    name: str
    id: str | None = None
    provider: str = "local"
    base_model: str = ""
    status: str = "available"
    description: str = ""
    model_size: str = ""
    size_class: str | None = None  # derived from model_size / parameter_count when None
    parameter_count: int | None = None
    capabilities: list[str] = field(default_factory=lambda: ["text-generation"])
    languages: list[str] = field(default_factory=list)
    category: str = "text-generation"
    owned_by: str | None = None  # the provider when None ("llmlab" for local models)
    cost_per_token: float = 0.0
    input_cost_per_token: float | None = None  # cost_per_token when None
    output_cost_per_token: float | None = None
    max_tokens: int = 2048
    context_window: int = 2048
    model_identifier: str = ""
    version: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] | None = None
    format: str = "onnx"
    quantization: str | None = None
    backend: str = "onnx"
    backend_config: dict[str, Any] = field(default_factory=dict)
    artifact: dict[str, Any] | None = None


# Columns a caller may change with `update`; `config` is merged, the others replaced.
UPDATABLE = frozenset(f.name for f in fields(NewModel)) - {"id"}
_JSON_COLUMNS = {"config", "parameters", "backend_config", "artifact"}


def slugify(text: str) -> str:
    """ "Claude 3.5 Sonnet" -> "claude-3.5-sonnet"; "gpt2" -> "gpt2"."""
    slug = re.sub(r"[^a-z0-9._/]+", "-", text.strip().lower()).strip("-./_")
    return re.sub(r"-{2,}", "-", slug)[:128]


def parse_model_size(text: str) -> int | None:
    """ "135M" -> 135_000_000, "1.7B" -> 1_700_000_000; None when it is not a parameter count."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMbBtT])\s*", text or "")
    if not m:
        return None
    return int(float(m.group(1)) * {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m.group(2).lower()])


def size_class_for(parameter_count: int | None) -> str:
    """The `size` filter's buckets of `GET /v1/models`: small < 3B <= medium < 15B <= large < 80B <= xl."""
    if parameter_count is None or parameter_count < 3e9:
        return "small"
    if parameter_count < 15e9:
        return "medium"
    if parameter_count < 80e9:
        return "large"
    return "xl"


def validate_backend(backend: str, config: Mapping[str, Any]) -> None:
    """Raise InvalidArgument unless `config` is what `backend` needs, and holds no secret."""
    if backend not in BACKENDS:
        raise InvalidArgument(f"backend must be one of {', '.join(BACKENDS)}", field_violations=[("backend", backend)])
    secret = sorted(k for k in config if k.lower().replace("-", "_") in SECRET_KEYS)
    if secret:
        raise InvalidArgument(
            "backend_config must not hold credentials; name the environment variable that holds the key in "
            "`api_key_env`",
            field_violations=[(f"backend_config.{k}", "secrets are not stored") for k in secret],
        )

    def need_url(key: str, schemes: tuple[str, ...]) -> None:
        v = config.get(key)
        if not isinstance(v, str) or not v or (schemes and not v.startswith(schemes)):
            want = f"a {' or '.join(schemes)} URL" if schemes else "host:port"
            raise InvalidArgument(
                f"backend_config.{key} must be {want} for the {backend} backend",
                field_violations=[(f"backend_config.{key}", "required")],
            )

    if backend == "openai":
        need_url("base_url", ("http://", "https://"))
        env = config.get("api_key_env")
        if env is not None and (not isinstance(env, str) or not _ENV_NAME.match(env)):
            raise InvalidArgument(
                "backend_config.api_key_env must be the name of an environment variable",
                field_violations=[("backend_config.api_key_env", "an environment variable name")],
            )
    elif backend == "triton":
        need_url("url", ())
        if not isinstance(config.get("model_name"), str) or not config["model_name"]:
            raise InvalidArgument(
                "backend_config.model_name must name the Triton model",
                field_violations=[("backend_config.model_name", "required")],
            )


def refuse_nul(field: str, value: Any) -> None:
    """Postgres refuses NUL in text and jsonb (a 500 if it got there): a 400 naming the field instead. Walks lists
    and objects (config, parameters) too."""
    stack = [(field, value)]
    while stack:
        name, v = stack.pop()
        if isinstance(v, str):
            if "\x00" in v:
                raise validation_error(name, v, "must not contain NUL characters")
        elif isinstance(v, Mapping):
            for k, item in v.items():
                stack.append((name, k))
                stack.append((f"{name}.{k}" if isinstance(k, str) and "\x00" not in k else name, item))
        elif isinstance(v, list | tuple):
            stack.extend((name, item) for item in v)


def _validate_values(values: Mapping[str, Any]) -> None:
    def bad(name: str, constraint: str) -> InvalidArgument:
        return InvalidArgument(f"{name} {constraint}", field_violations=[(name, constraint)])

    for key, v in values.items():
        refuse_nul(key, v)
    if "name" in values and not (isinstance(values["name"], str) and 1 <= len(values["name"].strip()) <= 255):
        raise bad("name", "must be 1..255 characters")
    if "status" in values and values["status"] not in STATUSES:
        raise bad("status", f"must be one of {', '.join(STATUSES)}")
    if "category" in values and values["category"] not in CATEGORIES:
        raise bad("category", f"must be one of {', '.join(CATEGORIES)}")
    if values.get("size_class") is not None and values["size_class"] not in SIZE_CLASSES:
        raise bad("size_class", f"must be one of {', '.join(SIZE_CLASSES)}")
    for key in ("max_tokens", "context_window"):
        if key in values and not (isinstance(values[key], int) and values[key] > 0):
            raise bad(key, "must be a positive integer")
    for key in ("cost_per_token", "input_cost_per_token", "output_cost_per_token"):
        if values.get(key) is not None and not (isinstance(values[key], int | float) and values[key] >= 0):
            raise bad(key, "must be a non-negative number")
    for key in ("config", "backend_config"):
        if key in values and not isinstance(values[key], dict):
            raise bad(key, "must be an object")
    if values.get("parameters") is not None and not isinstance(values["parameters"], dict):
        raise bad("parameters", "must be an object or null")


def encode_cursor(record: ModelRecord) -> str:
    """Opaque keyset cursor over (created_at, id), the list order."""
    raw = json.dumps([record.created_at.isoformat(), record.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, model_id = json.loads(raw)
        if "\x00" in str(model_id):  # a forged cursor; Postgres would refuse the NUL
            raise ValueError("NUL in cursor")
        return dt.datetime.fromisoformat(created), str(model_id)
    except (ValueError, TypeError) as e:
        raise InvalidArgument("after is not a cursor this API issued", field_violations=[("after", "invalid")]) from e


@dataclass
class ModelFilter:
    """List filters; None means any."""

    provider: str | None = None
    category: str | None = None
    size: str | None = None  # size_class
    status: str | None = None

    def where(self, args: list[Any]) -> list[str]:
        clauses = []
        refuse_nul("provider", self.provider)
        for column, value in (
            ("provider", self.provider),
            ("category", self.category),
            ("size_class", self.size),
            ("status", self.status),
        ):
            if value:
                args.append(value)
                clauses.append(f"{column} = ${len(args)}")
        return clauses


class ModelRegistry:
    """Repository over an asyncpg pool whose search_path starts with the inference schema."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._listeners: list[Callable[[ModelRecord], Awaitable[None]]] = []

    def on_change(self, listener: Callable[[ModelRecord], Awaitable[None]]) -> None:
        """Call `listener(record)` after every write this registry makes (the model manager's cache drops it)."""
        self._listeners.append(listener)

    async def _changed(self, row: asyncpg.Record) -> ModelRecord:
        record = ModelRecord.from_record(row)
        for listener in self._listeners:
            await listener(record)
        return record

    async def list(
        self,
        filters: ModelFilter | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        after: str | None = None,
    ) -> list[ModelRecord]:
        """Models in registration order (created_at, id); offset paging or keyset paging with `after`."""
        args: list[Any] = []
        clauses = (filters or ModelFilter()).where(args)
        if after:
            created, model_id = decode_cursor(after)
            args += [created, model_id]
            clauses.append(f"(created_at, id) > (${len(args) - 1}, ${len(args)})")
        sql = "SELECT * FROM models"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY created_at, id"
        if limit is not None:
            args.append(limit)
            sql += f" LIMIT ${len(args)}"
        if offset:
            args.append(offset)
            sql += f" OFFSET ${len(args)}"
        rows = await self._pool.fetch(sql, *args)
        return [ModelRecord.from_record(r) for r in rows]

    async def count(self, filters: ModelFilter | None = None) -> int:
        args: list[Any] = []
        clauses = (filters or ModelFilter()).where(args)
        sql = "SELECT count(*) FROM models" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        return await self._pool.fetchval(sql, *args)

    async def find(self, key: str) -> ModelRecord | None:
        """By slug, or by UUID when `key` is one (a slug never parses as a UUID with dashes in place)."""
        refuse_nul("id", key)
        row = await self._pool.fetchrow("SELECT * FROM models WHERE id = $1", key)
        if row is None:
            as_uuid = _as_uuid(key)
            if as_uuid is not None:
                row = await self._pool.fetchrow("SELECT * FROM models WHERE uuid = $1", as_uuid)
        return ModelRecord.from_record(row) if row else None

    async def get(self, key: str) -> ModelRecord:
        record = await self.find(key)
        if record is None:
            raise ModelNotFound(f"The model '{key}' does not exist", metadata={"model": key})
        return record

    async def create(self, new: NewModel) -> ModelRecord:
        """Register a model; AlreadyExists (409) when its slug is taken."""
        values = {f.name: getattr(new, f.name) for f in fields(NewModel) if f.name != "id"}
        _validate_values(values)
        model_id = new.id or slugify(new.model_identifier or new.name)
        if not _SLUG.match(model_id):
            raise InvalidArgument(
                f"id {model_id!r} is not a model slug (lower-case letters, digits, '.', '_', '-', '/')",
                field_violations=[("id", "slug")],
            )
        validate_backend(new.backend, new.backend_config)
        if new.parameter_count is None:
            values["parameter_count"] = parse_model_size(new.model_size)
        if new.size_class is None:
            values["size_class"] = size_class_for(values["parameter_count"])
        if new.owned_by is None:
            values["owned_by"] = "llmlab" if new.provider == "local" else new.provider
        for key in ("input_cost_per_token", "output_cost_per_token"):
            if values[key] is None:
                values[key] = new.cost_per_token
        columns = ["id", *values]
        params = [model_id, *(_db_value(k, v) for k, v in values.items())]
        placeholders = [f"${i}::jsonb" if c in _JSON_COLUMNS else f"${i}" for i, c in enumerate(columns, 1)]
        try:
            row = await self._pool.fetchrow(
                f"INSERT INTO models ({', '.join(columns)}) VALUES ({', '.join(placeholders)}) RETURNING *", *params
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyExists(
                f"A model with id '{model_id}' already exists", reason="MODEL_EXISTS", metadata={"model": model_id}
            ) from None
        except asyncpg.CheckViolationError as e:
            raise InvalidArgument(f"model rejected by constraint {e.constraint_name}") from None
        return await self._changed(row)

    async def update(self, key: str, changes: Mapping[str, Any]) -> ModelRecord:
        """Change the given fields of the model with slug or UUID `key`. `config` is merged at the top level
        (a None value removes the key); every other field is replaced."""
        unknown = sorted(set(changes) - UPDATABLE)
        if unknown:
            raise InvalidArgument(
                f"cannot update {', '.join(unknown)}", field_violations=[(k, "not updatable") for k in unknown]
            )
        _validate_values(changes)
        async with self._pool.acquire() as conn, conn.transaction():
            current = await self._locked(conn, key)
            values = dict(changes)
            if "config" in values:
                merged = {**current.config, **values["config"]}
                values["config"] = {k: v for k, v in merged.items() if v is not None}
            if "backend" in values or "backend_config" in values:
                validate_backend(
                    values.get("backend", current.backend), values.get("backend_config", current.backend_config)
                )
            if "model_size" in values and "parameter_count" not in values:
                values["parameter_count"] = parse_model_size(values["model_size"])
            if "parameter_count" in values and "size_class" not in values:
                values["size_class"] = size_class_for(values["parameter_count"])
            if not values:
                return current
            sets, params = [], []
            for i, (column, value) in enumerate(values.items(), 1):
                sets.append(f"{column} = ${i}::jsonb" if column in _JSON_COLUMNS else f"{column} = ${i}")
                params.append(_db_value(column, value))
            params.append(current.id)
            row = await conn.fetchrow(
                f"UPDATE models SET {', '.join(sets)}, updated_at = now() WHERE id = ${len(params)} RETURNING *",
                *params,
            )
        return await self._changed(row)

    async def ensure_default(self, manifest: Manifest) -> ModelRecord:
        """Upsert the embedded model from its import manifest (at service start). Artifact-derived fields follow
        the manifest; what an operator may have edited (name, description, prices, backend) is set only on insert.
        `updated_at` moves only when something changed."""
        artifact = manifest.to_dict()
        new = NewModel(
            id=manifest.id,
            name=manifest.name,
            provider="local",
            base_model=manifest.id,
            status="available",
            description=manifest.description,
            model_size=manifest.model_size,
            parameter_count=manifest.parameter_count,
            capabilities=list(manifest.capabilities),
            languages=list(manifest.languages),
            category="chat" if "chat" in manifest.capabilities else "text-generation",
            owned_by="llmlab",
            max_tokens=manifest.context_window,
            context_window=manifest.context_window,
            model_identifier=manifest.id,
            version=manifest.source.get("version", ""),
            config=_research_config(manifest),
            format=manifest.format,
            quantization=manifest.quantization,
            backend="onnx",
            artifact=artifact,
        )
        follow = [
            "status", "model_size", "size_class", "parameter_count", "context_window", "version", "config",
            "format", "quantization", "artifact",
        ]  # fmt: skip
        values = {f.name: getattr(new, f.name) for f in fields(NewModel) if f.name != "id"}
        values["size_class"] = size_class_for(manifest.parameter_count)
        values["input_cost_per_token"] = values["output_cost_per_token"] = 0.0
        columns = ["id", *values]
        params = [new.id, *(_db_value(k, v) for k, v in values.items())]
        placeholders = [f"${i}::jsonb" if c in _JSON_COLUMNS else f"${i}" for i, c in enumerate(columns, 1)]
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in follow)
        changed = " OR ".join(f"models.{c} IS DISTINCT FROM EXCLUDED.{c}" for c in follow)
        row = await self._pool.fetchrow(
            f"""INSERT INTO models ({", ".join(columns)}) VALUES ({", ".join(placeholders)})
                ON CONFLICT (id) DO UPDATE SET {sets}, updated_at = now() WHERE {changed}
                RETURNING *""",
            *params,
        )
        if row is None:  # present and unchanged
            return await self.get(manifest.id)
        return await self._changed(row)

    async def delete(self, key: str) -> bool:
        """Remove a model row (a fine-tuned model whose publishing failed half-way: docs/training.md)."""
        return await self._pool.fetchval("DELETE FROM models WHERE id = $1 RETURNING true", key) is not None

    async def _locked(self, conn: asyncpg.Connection, key: str) -> ModelRecord:
        refuse_nul("id", key)
        row = await conn.fetchrow("SELECT * FROM models WHERE id = $1 FOR UPDATE", key)
        if row is None and (as_uuid := _as_uuid(key)) is not None:
            row = await conn.fetchrow("SELECT * FROM models WHERE uuid = $1 FOR UPDATE", as_uuid)
        if row is None:
            raise ModelNotFound(f"The model '{key}' does not exist", metadata={"model": key})
        return ModelRecord.from_record(row)


def _as_uuid(key: str) -> uuidlib.UUID | None:
    try:
        return uuidlib.UUID(key)
    except ValueError:
        return None


def _db_value(column: str, value: Any) -> Any:
    if column in _JSON_COLUMNS:
        return None if value is None else json.dumps(value)
    if column in ("capabilities", "languages"):
        return list(value)
    if column in ("cost_per_token", "input_cost_per_token", "output_cost_per_token") and value is not None:
        return float(value)
    return value


def _research_config(manifest: Manifest) -> dict[str, Any]:
    """The research family's free-form `config` of the embedded model."""
    return {
        "max_context_window": manifest.context_window,
        "quantization": manifest.quantization,
        "format": manifest.format,
        "parameter_count": manifest.parameter_count,
        "architecture": manifest.architecture,
        "license": manifest.license,
        "upstream_checkpoint": manifest.base_model,
        "source": dict(manifest.source),
        "pricing": {"input_per_million": 0.0, "output_per_million": 0.0},
    }

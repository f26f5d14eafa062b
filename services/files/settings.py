"""Settings of the files service (`LLMLAB_FILES_<NAME>`): where blobs live, URL signing, size limits."""

from __future__ import annotations

import dataclasses

from llmlab.runtime import ServiceSettings, SettingsError

MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class FilesSettings(ServiceSettings):
    """Secrets are kept out of repr() so that a logged settings object shows none of them."""

    # "fs": files under <data_dir>/files (one machine, what `make up` uses); "s3": any S3-compatible store, for
    # several replicas. `data_dir` falls back to the shared LLMLAB_DATA_DIR, as `make up`'s embedded servers do.
    blob_backend: str = "fs"
    data_dir: str = ".data"
    s3_bucket: str = "llmlab-files"
    s3_endpoint_url: str = ""  # empty: AWS itself; e.g. http://127.0.0.1:9000 for MinIO
    s3_region: str = "us-east-1"
    s3_access_key_id: str = dataclasses.field(default="", repr=False)
    s3_secret_access_key: str = dataclasses.field(default="", repr=False)
    s3_prefix: str = ""
    # HMAC-SHA256 key of signed upload/download URLs. Empty: generated once and kept in the files schema, so every
    # replica shares it; set it (32+ characters) to keep it out of the database.
    signing_secret: str = dataclasses.field(default="", repr=False)
    url_ttl_seconds: int = 3600
    # Scheme and host put in front of signed URLs. Empty: the gateway's own address as the client reached it
    # (x-forwarded-proto and x-forwarded-host, which the gateway sets).
    public_url: str = ""
    # Largest file accepted by POST /v1/files and a signed PUT (413 past it); the gateway's upload cap is above.
    max_file_bytes: int = 512 * MIB
    # Bytes per streamed download message.
    chunk_bytes: int = 1 * MIB
    # Exports of more responses than this run as background jobs with progress (GET /api/export/jobs/{id}).
    export_job_responses: int = 5000
    # Export jobs are messages on a Redis Streams queue that `python -m services.files.worker` consumes. A worker
    # that holds a job and stops reporting (killed) for this long loses it to another worker, which starts it over.
    # A live worker renews its claim every third of it, so only this bounds how late a dead worker's job restarts.
    export_claim_idle_ms: int = 30_000
    # Attempts of one job that may end in an unexpected error before its message goes to the dead-letter stream.
    export_max_deliveries: int = 3

    def __post_init__(self) -> None:
        problems = []
        if self.blob_backend not in ("fs", "s3"):
            problems.append(f"LLMLAB_FILES_BLOB_BACKEND={self.blob_backend!r} must be fs or s3")
        if self.signing_secret and len(self.signing_secret) < 32:
            problems.append("LLMLAB_FILES_SIGNING_SECRET must have at least 32 characters")
        for name in ("url_ttl_seconds", "max_file_bytes", "chunk_bytes", "export_job_responses",
                     "export_claim_idle_ms", "export_max_deliveries"):
            if getattr(self, name) <= 0:
                problems.append(f"LLMLAB_FILES_{name.upper()} must be positive")
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            problems.append(f"LLMLAB_FILES_PUBLIC_URL={self.public_url!r} must start with http:// or https://")
        if problems:
            raise SettingsError("invalid llmlab settings:\n  " + "\n  ".join(problems))

"""Settings of the analytics service (`LLMLAB_ANALYTICS_<NAME>`): the streams it reads, webhook delivery."""

from __future__ import annotations

import dataclasses

from llmlab.runtime import ServiceSettings, SettingsError


@dataclasses.dataclass(frozen=True)
class AnalyticsSettings(ServiceSettings):
    """Defaults suit one machine; docs/analytics.md lists the event catalogue each stream carries."""

    # Streams the read model consumes (comma-separated names under the Redis prefix) and its consumer group.
    event_streams: str = "responses,experiments,usage,batches,fine_tuning,training"
    consumer_group: str = "analytics"
    # Messages per read (one transaction each): larger batches amortise the round trips (docs/analytics.md).
    consumer_batch: int = 500
    # A batch read by a consumer that died stays pending this long before another member reclaims it.
    consumer_claim_idle_ms: int = 30_000
    # Webhook targets in private, loopback or link-local ranges are refused unless this is set (tests, one box).
    webhook_allow_private: bool = False
    # Production refuses plain-http webhook URLs.
    webhook_require_https: bool = False
    webhook_timeout_seconds: float = 10.0
    # Attempts per delivery; the n-th retry waits webhook_backoff_seconds * 2^(n-1) (capped at one hour).
    webhook_max_attempts: int = 8
    webhook_backoff_seconds: float = 5.0

    @property
    def streams(self) -> list[str]:
        return [s.strip() for s in self.event_streams.split(",") if s.strip()]

    def __post_init__(self) -> None:
        problems = []
        if not self.streams:
            problems.append("LLMLAB_ANALYTICS_EVENT_STREAMS must name at least one stream")
        if self.consumer_batch < 1:
            problems.append("LLMLAB_ANALYTICS_CONSUMER_BATCH must be positive")
        if self.webhook_max_attempts < 1 or self.webhook_backoff_seconds < 0 or self.webhook_timeout_seconds <= 0:
            problems.append("webhook attempts/timeout must be positive and the backoff not negative")
        if problems:
            raise SettingsError("invalid llmlab settings:\n  " + "\n  ".join(problems))

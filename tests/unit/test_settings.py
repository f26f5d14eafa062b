"""Settings: per-service prefix, shared fallback, defaults, and fail-fast validation."""

import dataclasses

import pytest

from llmlab.runtime import DEFAULT_PORTS, ServiceSettings, SettingsError, load_settings


def test_defaults_work_on_one_machine():
    s = load_settings(ServiceSettings, "experiments", environ={})
    assert s.port == DEFAULT_PORTS["experiments"]
    assert s.db_schema == "experiments"
    assert s.database_url.startswith("postgresql://")
    assert s.peer_target("inference").endswith(":50053")


def test_service_prefix_wins_over_shared_value():
    env = {"LLMLAB_PORT": "7000", "LLMLAB_EXPERIMENTS_PORT": "7001", "LLMLAB_LOG_LEVEL": "debug"}
    s = load_settings(ServiceSettings, "experiments", environ=env)
    assert s.port == 7001
    assert s.log_level == "debug"
    assert load_settings(ServiceSettings, "metrics", environ=env).port == 7000


def test_every_bad_value_is_reported_at_once():
    env = {"LLMLAB_AUTH_PORT": "eighty", "LLMLAB_AUTH_DB_POOL_MAX": "x", "LLMLAB_SHUTDOWN_GRACE_SECONDS": "soon"}
    with pytest.raises(SettingsError) as err:
        load_settings(ServiceSettings, "auth", environ=env)
    text = str(err.value)
    assert "LLMLAB_AUTH_PORT='eighty' is not an integer" in text
    assert "LLMLAB_AUTH_DB_POOL_MAX" in text
    assert "LLMLAB_SHUTDOWN_GRACE_SECONDS" in text


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("LLMLAB_FILES_PORT", "70000", "outside 0..65535"),
        ("LLMLAB_FILES_DB_SCHEMA", "Bad-Schema", "lower-case SQL identifier"),
        ("LLMLAB_DATABASE_URL", "mysql://x", "postgresql://"),
        ("LLMLAB_REDIS_URL", "http://x", "redis://"),
        ("LLMLAB_LOG_FORMAT", "xml", "json or console"),
    ],
)
def test_semantic_validation(var, value, needle):
    with pytest.raises(SettingsError, match=needle):
        load_settings(ServiceSettings, "files", environ={var: value})


@dataclasses.dataclass(frozen=True)
class _Custom(ServiceSettings):
    workers: int = 2
    use_gpu: bool = False
    ratio: float = 0.5
    model_dir: str | None = None


def test_service_specific_fields_and_types():
    env = {"LLMLAB_INFERENCE_WORKERS": "4", "LLMLAB_INFERENCE_USE_GPU": "yes", "LLMLAB_INFERENCE_RATIO": "0.25"}
    s = load_settings(_Custom, "inference", environ=env)
    assert (s.workers, s.use_gpu, s.ratio, s.model_dir) == (4, True, 0.25, None)
    with pytest.raises(SettingsError, match="not a boolean"):
        load_settings(_Custom, "inference", environ={"LLMLAB_INFERENCE_USE_GPU": "maybe"})


def test_unknown_peer_is_an_error():
    with pytest.raises(KeyError):
        load_settings(ServiceSettings, "auth", environ={}).peer_target("billing")

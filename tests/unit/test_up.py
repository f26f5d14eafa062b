"""make up's first-admin password: from the environment, or generated once and kept private."""

import stat

from scripts.up import _admin_credentials


def test_generated_once_and_private(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMLAB_AUTH_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("LLMLAB_AUTH_ADMIN_USERNAME", raising=False)
    user, password, path = _admin_credentials(tmp_path / "data")
    assert user == "admin" and len(password) >= 16 and path is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _admin_credentials(tmp_path / "data") == (user, password, path)


def test_environment_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMLAB_AUTH_ADMIN_PASSWORD", "correct-horse-battery")
    monkeypatch.setenv("LLMLAB_AUTH_ADMIN_USERNAME", "root")
    assert _admin_credentials(tmp_path) == ("root", "correct-horse-battery", None)
    assert not (tmp_path / "admin-password").exists()

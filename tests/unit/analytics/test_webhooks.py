"""Webhook rules: the Standard Webhooks signature (the specification's test vector), event and secret checks, the
backoff, and target URLs in private ranges refused."""

from __future__ import annotations

import pytest

from llmlab.runtime import InvalidArgument
from services.analytics.webhooks import domain


def test_signature_matches_the_standard_webhooks_test_vector():
    sig = domain.sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                      b'{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_secret_without_the_prefix_is_used_as_its_bytes():
    assert domain.signing_key("plain-secret") == b"plain-secret"
    assert domain.signing_key("whsec_not base64!") == b"whsec_not base64!"


def test_event_ids_are_stable():
    a = domain.event_id("batches", "1-0", "batch.completed")
    assert a == domain.event_id("batches", "1-0", "batch.completed") and a.startswith("evt_")
    assert a != domain.event_id("batches", "2-0", "batch.completed")


def test_backoff_doubles_up_to_an_hour():
    assert [domain.backoff(n, 5) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert domain.backoff(30, 5) == domain.MAX_BACKOFF_SECONDS


@pytest.mark.parametrize("events", [[], ["payment.failed"], ["batch.completed", "nope"]])
def test_unknown_or_no_events_are_refused(events):
    with pytest.raises(InvalidArgument):
        domain.check_events(events)


def test_a_missing_secret_is_refused():
    with pytest.raises(InvalidArgument):
        domain.check_secret("")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/h", "http://10.1.2.3/h", "http://169.254.169.254/latest",
                                 "http://[::1]/h", "http://[::ffff:127.0.0.1]/h", "http://192.168.0.1/",
                                 "http://100.64.0.1/", "http://0.0.0.0/", "http://localhost/h"])
async def test_private_targets_are_refused(url):
    with pytest.raises(InvalidArgument):
        await domain.check_url(url, require_https=False, allow_private=False)
    assert await domain.check_url(url.replace("localhost", "127.0.0.1"), require_https=False,
                                  allow_private=True)


@pytest.mark.parametrize("url", ["ftp://example.com/x", "/relative", "http://user:pw@8.8.8.8/", "http://8.8.8.8:99999/"])
async def test_malformed_urls_are_refused(url):
    with pytest.raises(InvalidArgument):
        await domain.check_url(url, require_https=False, allow_private=True)


async def test_https_is_required_in_production_and_public_ips_pass():
    with pytest.raises(InvalidArgument):
        await domain.check_url("http://8.8.8.8/hook", require_https=True, allow_private=False)
    assert await domain.check_url("https://8.8.8.8/hook", require_https=True, allow_private=False)

"""Rate limits, token counters and login attempts in Redis, each decision one atomic Lua script.

Request limits are sliding logs (a sorted set of admission times per window, on Redis's own clock): the check
counts, compares and admits in one script, so concurrent requests on any number of replicas never admit more than
the limit within any window length. Token limits are counters per minute and per calendar month (UTC), fed by the
usage of finished requests: a request is refused once its window's tokens are spent. All keys of one user share a
Redis Cluster hash tag (`{<user id>}`), so each script touches a single slot.

Each user also has a revocation generation (`{<user id>}:gen`), raised by every revocation of the user's keys or
sessions. The auth service caches verified credentials in process memory together with the generation it read
before verifying them; the admission script compares it atomically with the admission, so a revoked credential is
never admitted from a stale cache on any replica.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import uuid
from dataclasses import dataclass

import redis.asyncio as redis

from llmlab.runtime.context import Principal
from llmlab.runtime.redis_client import key as redis_key

from .limits import Limits

MINUTE_MS = 60_000

# KEYS[1]: the user's revocation generation, then n request-window sorted sets, then token counters.
# ARGV: the generation the caller verified the credential at, n, member, (limit, period_ms) per request window,
# limit per token counter. Returns {-1} when the generation moved (nothing counted: the caller re-verifies), else
# {refused index (0: admitted), now_ms, (count, oldest_ms) per request window, used per token counter}; a refused
# request is not counted anywhere.
_CHECK = """
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then return {-1} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[2])
local refused = 0
local out = {0, now}
for i = 1, n do
  local limit, period = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', KEYS[1 + i], '-inf', now - period)
  local count = redis.call('ZCARD', KEYS[1 + i])
  if count >= limit and refused == 0 then refused = i end
  out[#out + 1] = count
end
for j = n + 1, #KEYS - 1 do
  local used = tonumber(redis.call('GET', KEYS[1 + j]) or '0')
  if used >= tonumber(ARGV[3 + n + j]) and refused == 0 then refused = j end
  out[#out + 1] = used
end
out[1] = refused
if refused == 0 then
  for i = 1, n do
    redis.call('ZADD', KEYS[1 + i], now, ARGV[3])
    redis.call('PEXPIRE', KEYS[1 + i], ARGV[3 + 2 * i])
    out[2 + i] = out[2 + i] + 1
  end
end
for i = 1, n do
  local oldest = redis.call('ZRANGE', KEYS[1 + i], 0, 0, 'WITHSCORES')
  out[#out + 1] = oldest[2] and tonumber(oldest[2]) or now
end
return out
"""

# KEYS[1]: the request's "already counted" marker, KEYS[2..]: token counters. ARGV[1]: tokens, ARGV[2]: marker
# TTL (ms), ARGV[2 + i]: TTL (ms) of counter i. Returns the counters after adding, or nothing for a repeat.
_RECORD = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[2]) then return false end
local out = {}
for i = 2, #KEYS do
  out[#out + 1] = redis.call('INCRBY', KEYS[i], ARGV[1])
  redis.call('PEXPIRE', KEYS[i], ARGV[1 + i])
end
return out
"""

# KEYS[1]: attempts for the username, KEYS[2]: attempts from the address. ARGV: window_ms, max per user,
# max per address. Counts this attempt; returns 0 when it may go ahead, else the ms until it may.
_LOGIN = """
local function count(k)
  local c = redis.call('INCR', k)
  if c == 1 then redis.call('PEXPIRE', k, ARGV[1]) end
  return c
end
local u, a = count(KEYS[1]), count(KEYS[2])
if u > tonumber(ARGV[2]) then return math.max(redis.call('PTTL', KEYS[1]), 1) end
if a > tonumber(ARGV[3]) then return math.max(redis.call('PTTL', KEYS[2]), 1) end
return 0
"""


@dataclass(frozen=True)
class Window:
    """One limit of one principal. Requests: a sliding window of `period_ms`. Tokens: a fixed bucket ending at
    `ends_at_ms` (the counter key names the bucket)."""

    scope: str  # "key" or "user"
    name: str  # requests_per_minute, requests_per_hour, burst, tokens_per_minute, tokens_per_month
    limit: int
    period_ms: int
    key: str
    ends_at_ms: int = 0

    @property
    def tokens(self) -> bool:
        return self.name.startswith("tokens_")


@dataclass(frozen=True)
class WindowState:
    window: Window
    used: int
    reset_at_ms: int  # when `remaining` next grows (requests) or the bucket ends (tokens)

    @property
    def remaining(self) -> int:
        return max(0, self.window.limit - self.used)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    states: list[WindowState]
    refused: WindowState | None
    now_ms: int


class StaleGeneration(Exception):
    """The user's revocation generation moved since the credential was verified: nothing was counted."""


def _month_bounds(now: dt.datetime) -> tuple[str, int]:
    """("202501", end of the month in epoch ms) for a UTC time."""
    first_next = (now.replace(day=28) + dt.timedelta(days=4)).replace(day=1, hour=0, minute=0, second=0,
                                                                       microsecond=0)
    return now.strftime("%Y%m"), int(first_next.timestamp() * 1000)


@functools.lru_cache(maxsize=4)
def _month_of_minute(minute: int) -> tuple[str, int]:
    """_month_bounds of a whole UTC minute (months start on a minute): computed once a minute, not per request."""
    return _month_bounds(dt.datetime.fromtimestamp(minute * 60, dt.UTC))


class RateLimiter:
    """The Redis side of limits: admission checks, token accounting, login attempts."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix
        self._check = client.register_script(_CHECK)
        self._record = client.register_script(_RECORD)
        self._login = client.register_script(_LOGIN)

    def _base(self, principal: Principal, scope: str) -> str:
        tag = redis_key(self._prefix, "rl", "{" + principal.user_id + "}")
        return f"{tag}:key:{principal.key_id}" if scope == "key" else f"{tag}:user"

    def _token_keys(self, principal: Principal, now_ms: int) -> list[tuple[str, str, int, int]]:
        """(scope, name, counter key, bucket end ms) of each token counter of the principal at `now_ms`."""
        minute = now_ms // MINUTE_MS
        month, month_end = _month_of_minute(minute)
        scopes = ["key", "user"] if principal.key_id else ["user"]
        out = []
        for scope in scopes:
            base = self._base(principal, scope)
            out.append((scope, "tokens_per_minute", f"{base}:tpm:{minute}", (minute + 1) * MINUTE_MS))
            out.append((scope, "tokens_per_month", f"{base}:tpmo:{month}", month_end))
        return out

    def windows(self, principal: Principal, limits: Limits, now_ms: int) -> list[Window]:
        """The limited windows of a principal: request windows first, then token buckets."""
        requests = [
            ("key", "requests_per_minute", limits.key_requests_per_minute, MINUTE_MS, "rpm"),
            ("user", "burst", limits.user_burst, 1_000, "rps"),
            ("user", "requests_per_minute", limits.user_requests_per_minute, MINUTE_MS, "rpm"),
            ("user", "requests_per_hour", limits.user_requests_per_hour, 60 * MINUTE_MS, "rph"),
        ]
        out = [
            Window(scope, name, limit, period, f"{self._base(principal, scope)}:{suffix}")
            for scope, name, limit, period, suffix in requests
            if limit > 0 and (scope == "user" or principal.key_id)
        ]
        for scope, name, key, ends in self._token_keys(principal, now_ms):
            limit = getattr(limits, f"{scope}_{name}")
            if limit > 0:
                out.append(Window(scope, name, limit, 0, key, ends))
        return out

    def generation_key(self, user_id: str) -> str:
        """The user's revocation generation: in the user's slot, so the admission script can read it."""
        return f"{redis_key(self._prefix, 'rl', '{' + user_id + '}')}:gen"

    async def generation(self, user_id: str) -> str:
        """The user's revocation generation now ("0" before any revocation)."""
        raw = await self._redis.get(self.generation_key(user_id))
        return raw.decode() if raw else "0"

    async def bump_generation(self, user_id: str) -> None:
        """After a revocation: every cached verification of the user's credentials is stale from now on."""
        await self._redis.incr(self.generation_key(user_id))

    async def admit(self, principal: Principal, limits: Limits, now_ms: int, generation: str) -> Decision:
        """Count the request in every request window unless one of the principal's windows is spent; raise
        StaleGeneration (counting nothing) when the user's revocation generation is no longer `generation`."""
        windows = self.windows(principal, limits, now_ms)
        requests = [w for w in windows if not w.tokens]
        args: list[int | str] = [generation, len(requests), uuid.uuid4().hex]
        for w in requests:
            args += [w.limit, w.period_ms]
        args += [w.limit for w in windows if w.tokens]
        keys = [self.generation_key(principal.user_id), *(w.key for w in windows)]
        out = [int(x) for x in await self._check(keys=keys, args=args)]
        if out[0] == -1:
            raise StaleGeneration(principal.user_id)
        refused, now = out[0], out[1]
        counts, oldest = out[2:2 + len(windows)], out[2 + len(windows):]
        states = []
        for i, (w, used) in enumerate(zip(windows, counts, strict=True)):
            reset = oldest[i] + w.period_ms if not w.tokens else w.ends_at_ms
            states.append(WindowState(w, used, reset))
        return Decision(refused == 0, states, states[refused - 1] if refused else None, now)

    async def record_tokens(self, principal: Principal, tokens: int, request_id: str,
                            now_ms: int) -> dict[tuple[str, str], int] | None:
        """Add a finished request's tokens to the principal's counters, once per request id; the counters
        after adding ((scope, name) -> used), or None when this request was already counted."""
        counters = self._token_keys(principal, now_ms)
        marker = f"{self._base(principal, 'user')}:seen:{request_id}"
        ttls = [max(ends - now_ms, 0) + MINUTE_MS for _, _, _, ends in counters]
        out = await self._record(keys=[marker, *(k for _, _, k, _ in counters)],
                                 args=[max(tokens, 0), 2 * 24 * 3600 * 1000, *ttls])
        if out is None:
            return None
        return {(scope, name): int(v) for (scope, name, _, _), v in zip(counters, out, strict=True)}

    async def token_usage(self, principal: Principal, now_ms: int) -> dict[tuple[str, str], tuple[int, int]]:
        """(scope, name) -> (used, bucket end ms) of the principal's token counters now."""
        counters = self._token_keys(principal, now_ms)
        values = await self._redis.mget([k for _, _, k, _ in counters])
        return {(s, n): (int(v or 0), ends) for (s, n, _, ends), v in zip(counters, values, strict=True)}

    async def login_attempt(self, username_digest: str, address: str, *, window_s: int, per_user: int,
                            per_address: int) -> int:
        """Count a login attempt; 0 when it may go ahead, else seconds until it may."""
        base = redis_key(self._prefix, "auth", "{login}")
        wait_ms = int(await self._login(
            keys=[f"{base}:user:{username_digest}", f"{base}:addr:{address}"],
            args=[window_s * 1000, per_user, per_address],
        ))
        return math.ceil(wait_ms / 1000) if wait_ms else 0

    async def login_succeeded(self, username_digest: str, address: str) -> None:
        """A successful login clears the username's count and does not count against the address."""
        base = redis_key(self._prefix, "auth", "{login}")
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(f"{base}:user:{username_digest}")
            pipe.decr(f"{base}:addr:{address}")
            await pipe.execute()

"""Who may use the page: secret hashes, login sessions, CSRF tokens and the login rate limit.

Pure: no sockets, no clock and no randomness of its own (`now` and `token` are passed in), so every
rule is a unit test. The config holds only a hash of the password or API token
(`scrypt$N$r$p$salt$hash`, made by `relay ui-hash`); a login gets a random session id in an
HttpOnly, SameSite=Strict cookie and a CSRF token the page sends back in a header on every
state-changing request. A client address that fails `attempts` logins within `window_s` is refused
until the oldest failure leaves the window.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

COOKIE = "relay_ui"
# scrypt cost: ~50 ms and 16 MiB per check on a small machine; a login is rare, a brute force is not
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
MAX_SECRET = 1024  # longer inputs are refused before hashing (scrypt of a huge body costs us, not them)


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def hash_secret(secret: str, salt: bytes | None = None, *, n: int = SCRYPT_N, r: int = SCRYPT_R) -> str:
    """The config form of a password or token: `scrypt$N$r$p$salt$hash` (base64url, no padding)."""
    salt = secrets.token_bytes(16) if salt is None else salt
    dk = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=SCRYPT_P, maxmem=128 * n * r * 2, dklen=32)
    return f"scrypt${n}${r}${SCRYPT_P}${_b64(salt)}${_b64(dk)}"


def verify_secret(secret: str, stored: str | None) -> bool:
    """True if `secret` hashes to `stored`; a missing or malformed hash matches nothing."""
    if not stored or not secret or len(secret) > MAX_SECRET:
        return False
    try:
        kind, n, r, p, salt, want = stored.split("$")
        if kind != "scrypt":
            return False
        ni, ri, pi = int(n), int(r), int(p)
        if ni > 1 << 20 or ri > 32 or pi > 16:  # a hash from elsewhere must not make a check cost minutes
            return False
        dk = hashlib.scrypt(
            secret.encode(), salt=_unb64(salt), n=ni, r=ri, p=pi, maxmem=128 * ni * ri * 2, dklen=32
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(dk, _unb64(want))


@dataclass
class Session:
    id: str
    csrf: str
    expires: float


class Sessions:
    """Logged-in sessions by id; expired ones are forgotten when met or pruned."""

    def __init__(self, ttl_s: float, *, token: Callable[[], str] = lambda: secrets.token_urlsafe(32)) -> None:
        self.ttl_s = ttl_s
        self.token = token
        self._by_id: dict[str, Session] = {}

    def create(self, now: float) -> Session:
        self.prune(now)
        s = Session(self.token(), self.token(), now + self.ttl_s)
        self._by_id[s.id] = s
        return s

    def get(self, sid: str | None, now: float) -> Session | None:
        if not sid:
            return None
        s = self._by_id.get(sid)
        if s is None:
            return None
        if now >= s.expires:
            del self._by_id[sid]
            return None
        return s

    def end(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)

    def prune(self, now: float) -> None:
        for sid in [k for k, s in self._by_id.items() if now >= s.expires]:
            del self._by_id[sid]

    def __len__(self) -> int:
        return len(self._by_id)


def csrf_ok(session: Session | None, sent: str | None) -> bool:
    """The header the page sends equals its session's token (constant-time)."""
    return session is not None and bool(sent) and hmac.compare_digest(session.csrf, sent or "")


class LoginLimiter:
    """At most `attempts` failed logins per client address in any `window_s`."""

    def __init__(self, attempts: int, window_s: float, *, max_clients: int = 10_000) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self.max_clients = max_clients  # addresses remembered; the oldest is forgotten beyond it
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, peer: str, now: float) -> deque[float]:
        q = self._failures.get(peer)
        if q is None:
            return deque()
        while q and now - q[0] >= self.window_s:
            q.popleft()
        if not q:
            del self._failures[peer]
        return q

    def allowed(self, peer: str, now: float) -> bool:
        return len(self._recent(peer, now)) < self.attempts

    def retry_after(self, peer: str, now: float) -> float:
        """Seconds until `peer` may try again (0 if it may now)."""
        q = self._recent(peer, now)
        if len(q) < self.attempts:
            return 0.0
        return max(0.0, q[0] + self.window_s - now)

    def failed(self, peer: str, now: float) -> None:
        q = self._recent(peer, now)
        if peer not in self._failures:
            if len(self._failures) >= self.max_clients:
                self._failures.pop(next(iter(self._failures)))
            self._failures[peer] = q
        q.append(now)

    def succeeded(self, peer: str) -> None:
        self._failures.pop(peer, None)


def parse_cookies(header: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (header or "").split(";"):
        k, sep, v = part.strip().partition("=")
        if sep and k:
            out.setdefault(k, v.strip().strip('"'))
    return out


def session_cookie(sid: str, max_age_s: float) -> str:
    """The Set-Cookie value: not readable by scripts, never sent from another site's page."""
    return f"{COOKIE}={sid}; Path=/ui; Max-Age={int(max_age_s)}; HttpOnly; SameSite=Strict"


def clear_cookie() -> str:
    return f"{COOKIE}=; Path=/ui; Max-Age=0; HttpOnly; SameSite=Strict"


def same_origin(origin: str | None, host: str | None) -> bool:
    """A browser's Origin header (when sent) names this server's host, or the request is refused."""
    if origin is None:
        return True
    if not host:
        return False
    _, sep, rest = origin.partition("://")
    return bool(sep) and rest.rstrip("/").lower() == host.lower()

"""Browser logins for the dashboard. A browser cannot send the API token on a navigation, so `ferry dashboard`
(which holds the token) asks for a login code; the code, opened once within CODE_TTL_S, becomes a session cookie
(HttpOnly, SameSite=Strict, Path=/ui) that lasts SESSION_TTL_S. The API accepts the cookie only for GET /ui and
/ui/* (api.py): nothing a session can do changes anything.

Only SHA-256 digests of codes and sessions are kept, so a lookup compares no secret byte by byte. Both tables are
bounded (the oldest entries go first), so a token holder asking for codes in a loop cannot grow ferry's memory.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable

COOKIE = "ferry_ui"
CODE_TTL_S = 60.0
SESSION_TTL_S = 8 * 3600.0
MAX_CODES = 100
MAX_SESSIONS = 1000


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Logins:
    """One-time codes and the sessions they became; `clock` is monotonic seconds."""

    def __init__(self, *, code_ttl_s: float = CODE_TTL_S, session_ttl_s: float = SESSION_TTL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.code_ttl_s = code_ttl_s
        self.session_ttl_s = session_ttl_s
        self._clock = clock
        self._codes: dict[str, float] = {}  # digest -> expiry, oldest first
        self._sessions: dict[str, float] = {}

    def issue_code(self) -> str:
        """A new code, good once until it expires."""
        now = self._clock()
        _forget(self._codes, now, MAX_CODES - 1)
        code = secrets.token_urlsafe(24)
        self._codes[_digest(code)] = now + self.code_ttl_s
        return code

    def redeem(self, code: str | None) -> str | None:
        """The session a code becomes, or None: unknown, used already or expired (a code is spent either way)."""
        if not code or len(code) > 200:
            return None
        expiry = self._codes.pop(_digest(code), None)
        now = self._clock()
        if expiry is None or now >= expiry:
            return None
        _forget(self._sessions, now, MAX_SESSIONS - 1)
        session = secrets.token_urlsafe(32)
        self._sessions[_digest(session)] = now + self.session_ttl_s
        return session

    def valid(self, session: str | None) -> bool:
        if not session or len(session) > 200:
            return False
        key = _digest(session)
        expiry = self._sessions.get(key)
        if expiry is None:
            return False
        if self._clock() >= expiry:
            del self._sessions[key]
            return False
        return True

    def sessions(self) -> int:
        return len(self._sessions)


def _forget(table: dict[str, float], now: float, keep: int) -> None:
    """Drop what expired, then the oldest until at most `keep` remain."""
    for key in [k for k, expiry in table.items() if now >= expiry]:
        del table[key]
    while len(table) > keep:
        del table[next(iter(table))]

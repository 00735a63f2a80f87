"""
Password hashes for the dashboard's users (SPEC 9), for the settings check,
the C{passwd} command and the login alike.

Passwords are hashed with scrypt (stdlib C{hashlib.scrypt}): salted and
memory-hard, its parameters kept inside the string so that they can be
raised later without breaking old hashes::

    scrypt$<n>$<r>$<p>$<salt, base64>$<key, base64>

Checking a password costs tens of milliseconds of CPU on purpose; callers run
L{verify_password} in a thread, never on the reactor thread.
"""

import base64
import dataclasses
import hashlib
import hmac
import secrets
from typing import Optional

from ..command import admin_command
from ..core.limits import SCRYPT_N, SCRYPT_P, SCRYPT_R

_SALT_BYTES = 16
_KEY_BYTES = 32
_PREFIX = "scrypt"

# The largest scrypt parameters a stored hash may ask for: 4 times the
# defaults' memory (2 checks at once on a Pi stay under 256 MiB).
MAX_N = 2**17
MAX_R = 16
MAX_P = 4
MAX_MEMORY = 128 * 2**20


class InvalidHash(ValueError):
    """
    A string that is not a password hash of ours; the message says what is
    wrong without repeating the string.
    """


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # maxmem: OpenSSL's default (32 MiB) is just below what n=2**15, r=8 needs.
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=_KEY_BYTES, maxmem=256 * r * n + 2**20
    )


def hash_password(password: str, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """
    A new salted scrypt hash of C{password}, for C{DASHBOARD_USERS}.
    """
    salt = secrets.token_bytes(_SALT_BYTES)
    return f"{_PREFIX}${n}${r}${p}${_b64(salt)}${_b64(_scrypt(password, salt, n, r, p))}"


@dataclasses.dataclass(frozen=True)
class _Parsed:
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes


def parse_hash(text: object) -> _Parsed:
    """
    Check that C{text} is a hash made by L{hash_password}.

    @raise InvalidHash: when it is not.
    """
    if not isinstance(text, str):
        raise InvalidHash(f"not a password hash (a string) from '{admin_command()} passwd NAME'")
    parts = text.split("$")
    if len(parts) != 6 or parts[0] != _PREFIX:
        raise InvalidHash(f"not a password hash from '{admin_command()} passwd NAME'")
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except ValueError:
        raise InvalidHash(f"a damaged password hash: make a new one with '{admin_command()} passwd NAME'") from None
    if not (salt and len(key) == _KEY_BYTES):
        raise InvalidHash(f"a damaged password hash: make a new one with '{admin_command()} passwd NAME'")
    # Bounds keep a typo from asking a Pi for gigabytes at every login: a
    # check needs 128 * n * r bytes (the default: 32 MiB).
    if not (2 <= n <= MAX_N and n & (n - 1) == 0 and 1 <= r <= MAX_R and 1 <= p <= MAX_P and 128 * n * r <= MAX_MEMORY):
        raise InvalidHash(
            f"a password hash with scrypt parameters out of range (n={n}, r={r}, p={p}: "
            f"{128 * n * r // 2**20} MiB per check); allowed: n a power of 2 up to 2^17, r up to {MAX_R}, "
            f"p up to {MAX_P}, at most {MAX_MEMORY // 2**20} MiB"
        )
    return _Parsed(n, r, p, salt, key)


def verify_password(stored: Optional[str], password: str) -> bool:
    """
    True when C{password} matches the hash C{stored}, compared in constant
    time.  With C{stored=None} (no such user) the same work is done against
    a dummy hash, so the answer takes as long as for a real user.
    """
    parsed = parse_hash(stored if stored is not None else _DUMMY)
    key = _scrypt(password, parsed.salt, parsed.n, parsed.r, parsed.p)
    return hmac.compare_digest(key, parsed.key) and stored is not None


# A hash of nothing anyone can type, with the default parameters.
_DUMMY = f"{_PREFIX}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(b'0' * _SALT_BYTES)}${_b64(b'0' * _KEY_BYTES)}"

"""The agent token format, `cst_<prefix>_<secret>`: making one, parsing one and hashing its secret.

The prefix (8 hex digits) is not secret: it finds the row and names the token on pages and in the
audit log. The secret is 32 random bytes (URL-safe base64), so SHA-256 is the right hash: there is
nothing to brute-force that a slow hash would protect. No Django here.
"""

import hashlib
import re
import secrets
from typing import NamedTuple

SCHEME = "cst"
PREFIX_BYTES = 4  # 8 hex digits
SECRET_BYTES = 32
_FORMAT = re.compile(r"^cst_(?P<prefix>[0-9a-f]{8})_(?P<secret>[A-Za-z0-9_-]{43})$")


class ParsedToken(NamedTuple):
    prefix: str
    secret: str


def new_prefix() -> str:
    return secrets.token_hex(PREFIX_BYTES)


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def assemble(prefix: str, secret: str) -> str:
    """The string the agent sends: what the admin copies, once."""
    return f"{SCHEME}_{prefix}_{secret}"


def parse(raw: str) -> ParsedToken | None:
    """Split a presented token into prefix and secret; None when it does not have the format at all."""
    match = _FORMAT.match(raw.strip())
    return ParsedToken(match["prefix"], match["secret"]) if match else None


def hash_secret(secret: str) -> str:
    """SHA-256 (hex) of the secret: what is stored and compared (with `hmac.compare_digest`)."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()

"""The admin token: how it is stored (only its sha256, in `secrets`) and how a presented one is checked."""

import hashlib
import hmac
import secrets

TOKEN_SECRET = "admin_token_sha256"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def generate_if_unset(cur, configured: str) -> str | None:
    """With no AYON_ADMIN_TOKEN, store a new token's hash on the first run; returns the token only when new."""
    if configured:
        return None
    token = secrets.token_urlsafe(32)
    cur.execute(
        "INSERT INTO secrets (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
        (TOKEN_SECRET, token_hash(token)),
    )
    return token if cur.rowcount == 1 else None


def stored_hash(db) -> str | None:
    """The hash setup stored, or None before setup has run."""
    row = db.fetchone("SELECT value FROM secrets WHERE name = %s", (TOKEN_SECRET,))
    return row[0] if row else None


def matches(token: str, configured: str, stored: str | None) -> bool:
    """A presented token against AYON_ADMIN_TOKEN, or else the stored hash; in constant time."""
    if configured:
        return hmac.compare_digest(token.encode(), configured.encode())
    return stored is not None and hmac.compare_digest(token_hash(token), stored)

"""Signing keys, each with its own ``kid`` and pinned algorithm."""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from crm_api.config import Settings


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    algorithm: str
    #: The secret (HS*) or the PEM private key (RS*/ES*).
    signing: str
    #: The secret (HS*) or the PEM public key.
    verifying: str


@dataclass(frozen=True, slots=True)
class KeyRing:
    current: SigningKey
    by_kid: dict[str, SigningKey]


def _kid(material: str) -> str:
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def _make_key(material: str, algorithm: str) -> SigningKey:
    if algorithm.startswith("HS"):
        return SigningKey(_kid(material), algorithm, material, material)
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key(material.encode(), password=None)
    public = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return SigningKey(_kid(public), algorithm, material, public)


def _generated_secret(data_dir: Path) -> str:
    """The development default: a random secret kept in the data directory."""
    path = data_dir / "jwt-signing.key"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secret)
    return secret


def keyring_from_settings(settings: Settings) -> KeyRing:
    if settings.jwt_signing_key is not None:
        material = settings.jwt_signing_key.get_secret_value()
    elif settings.is_production:  # Settings already refuses this; belt and braces
        raise RuntimeError("CRM_JWT_SIGNING_KEY is required in production")
    else:
        if not settings.jwt_algorithm.startswith("HS"):
            raise RuntimeError("a generated key is HS only; set CRM_JWT_SIGNING_KEY")
        material = _generated_secret(settings.data_dir)
    current = _make_key(material, settings.jwt_algorithm)
    keys = {current.kid: current}
    for old in settings.jwt_previous_keys:
        key = _make_key(old.get_secret_value(), settings.jwt_algorithm)
        keys.setdefault(key.kid, key)
    return KeyRing(current, keys)

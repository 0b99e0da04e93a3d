"""AES-256-GCM sealing of files that hold model weights (registry models and checkpoints).

Layout of a sealed file::

    b"BOTAIGCM1" | 12-byte nonce | ciphertext+tag   (associated data: the file name)

Binding the file name as associated data means a sealed file renamed to another model's or
checkpoint's name no longer decrypts. The key is 32 bytes (``ModelStoreBlock.get_key()``).
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.exceptions import ConfigurationError

MAGIC = b"BOTAIGCM1"
_NONCE_BYTES = 12


def encrypt_bytes(plain: bytes, key: bytes, associated: bytes) -> bytes:
    """AES-256-GCM encrypt. Returns ``MAGIC | nonce | ciphertext+tag``."""
    nonce = os.urandom(_NONCE_BYTES)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, plain, associated)


def decrypt_bytes(blob: bytes, key: bytes, associated: bytes) -> bytes:
    """Inverse of :func:`encrypt_bytes`.

    Returns:
        the plaintext.

    Raises:
        ConfigurationError: not a sealed file, or wrong key / tampered or renamed file.
    """
    if not blob.startswith(MAGIC):
        raise ConfigurationError("file is not an encrypted BotAI model file (bad header)")
    nonce = blob[len(MAGIC) : len(MAGIC) + _NONCE_BYTES]
    try:
        return AESGCM(key).decrypt(nonce, blob[len(MAGIC) + _NONCE_BYTES :], associated)
    except InvalidTag as e:
        raise ConfigurationError(
            "model file could not be decrypted: wrong model-store key or the file was modified"
        ) from e

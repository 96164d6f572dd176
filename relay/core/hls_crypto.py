"""AES-128 segment decryption for HLS (RFC 8216 §4.3.2.4): AES-128-CBC with PKCS#7 padding.

A pure function over whole segments: HLS keys are per segment (the IV changes with the media
sequence number), and a segment is decrypted once it is complete, so no state is kept here.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY_BYTES = 16


class DecryptError(ValueError):
    """The segment, its key or its padding is not what AES-128 HLS makes; str() is short."""


def decrypt_segment(data: bytes | bytearray | memoryview, key: bytes, iv: bytes) -> bytes:
    if len(key) != KEY_BYTES:
        raise DecryptError(f"key is {len(key)} bytes, not 16")
    if len(iv) != KEY_BYTES:
        raise DecryptError(f"IV is {len(iv)} bytes, not 16")
    if not data or len(data) % 16:
        raise DecryptError("ciphertext is not a whole number of AES blocks")
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    plain = dec.update(bytes(data)) + dec.finalize()
    unpad = padding.PKCS7(128).unpadder()
    try:
        return unpad.update(plain) + unpad.finalize()
    except ValueError:
        raise DecryptError("bad padding (wrong key or IV)") from None


def encrypt_segment(data: bytes, key: bytes, iv: bytes) -> bytes:
    """The inverse, for tests and the fake provider: what a packager does."""
    pad = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return enc.update(pad.update(data) + pad.finalize()) + enc.finalize()

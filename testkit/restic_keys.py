"""Test repositories whose key opens in milliseconds instead of half a second.

restic derives the key that opens a repository from its password with scrypt, at a cost it
calibrates at `init` (N=2^15, r=8, p=4 here: ~0.4 s of CPU), and pays it in every process: a
backup runs a dozen, the suite thousands - minutes of CI on two cores, spent on the one thing no
test is about. `cheapen` re-wraps a repository's master key under the same password with N=2^10,
r=8, p=1, exactly as restic stores a key (internal/crypto: scrypt -> 32 bytes AES-256-CTR key,
16 + 16 bytes Poly1305-AES MAC key; the key file is IV || ciphertext || MAC of the master key's
JSON, named by its SHA-256): the repository, its config, packs and snapshots are untouched, and
every restic version opens it as before. Only the test kit's repository templates use it; the
bench measures restic's own cost, and the product never touches a key file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.poly1305 import Poly1305

CHEAP = {"N": 2 ** 10, "r": 8, "p": 1}


def _user_key(password: bytes, salt: bytes, n: int, r: int, p: int) -> tuple[bytes, bytes, bytes]:
    """(AES-256 key, MAC key K, MAC key R), as restic derives them from the password."""
    derived = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=2 ** 31 - 1, dklen=64)
    return derived[:32], derived[32:48], derived[48:64]


def _mac(k: bytes, r: bytes, nonce: bytes, data: bytes) -> bytes:
    """Poly1305-AES: the one-time key is R || AES_K(nonce)."""
    aes = Cipher(algorithms.AES(k), modes.ECB()).encryptor()
    return Poly1305.generate_tag(r + aes.update(nonce) + aes.finalize(), data)


def _ctr(key: bytes, nonce: bytes, data: bytes) -> bytes:
    aes = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
    return aes.update(data) + aes.finalize()


def cheapen(repository: Path, password: bytes) -> None:
    """Every key file of `repository` re-wrapped with CHEAP scrypt parameters (a fresh salt and
    IV). Raises ValueError when `password` does not open a key: nothing is written then."""
    keys = Path(repository) / "keys"
    for path in sorted(keys.iterdir()):
        doc = json.loads(path.read_bytes())
        enc, k, r = _user_key(password, base64.b64decode(doc["salt"]), doc["N"], doc["r"], doc["p"])
        blob = base64.b64decode(doc["data"])
        nonce, sealed, tag = blob[:16], blob[16:-16], blob[-16:]
        if _mac(k, r, nonce, sealed) != tag:
            raise ValueError(f"the password does not open key {path.name} of {repository}")
        master = _ctr(enc, nonce, sealed)
        salt, iv = os.urandom(64), os.urandom(16)
        enc, k, r = _user_key(password, salt, **{"n": CHEAP["N"], "r": CHEAP["r"], "p": CHEAP["p"]})
        sealed = _ctr(enc, iv, master)
        doc.update(CHEAP, salt=base64.b64encode(salt).decode(),
                   data=base64.b64encode(iv + sealed + _mac(k, r, iv, sealed)).decode())
        raw = json.dumps(doc).encode()
        (keys / hashlib.sha256(raw).hexdigest()).write_bytes(raw)
        path.unlink()

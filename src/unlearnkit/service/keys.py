"""The service's secrets, kept in ``MODEL/service/``: its Ed25519 signing key and the token secret.

Both are created on first use (``unlearnkit serve`` or ``unlearnkit tokens create``) with mode 0600 in a
folder of mode 0700, written atomically, and refused when another user can read them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import UnlearnKitError

FOLDER = "service"
SIGNING_KEY = "signing-key.pem"
PUBLIC_KEY = "signing-key.pub.pem"
TOKEN_SECRET = "token-secret"


def service_dir(model_dir: str | os.PathLike, create: bool = False) -> Path:
    folder = Path(model_dir) / FOLDER
    if create and not folder.is_dir():
        folder.mkdir(mode=0o700)
    if folder.is_symlink():
        raise UnlearnKitError(
            f"{folder} is a symbolic link; the service's secrets must live inside the model directory"
        )
    return folder


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_private(path: Path, what: str) -> bytes:
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise UnlearnKitError(f"{what} {path} does not exist") from None
    if not stat.S_ISREG(info.st_mode):
        raise UnlearnKitError(f"{what} {path} is not a regular file")
    if info.st_mode & 0o077:
        raise UnlearnKitError(
            f"{what} {path} can be read by other users (mode {stat.S_IMODE(info.st_mode):o}); run `chmod 600 {path}`"
        )
    return path.read_bytes()


def key_id(public: Ed25519PublicKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw public key."""
    return hashlib.sha256(public_bytes(public)).hexdigest()[:16]


def public_bytes(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class Signer:
    """The service's Ed25519 key."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.private = private
        self.public = private.public_key()
        self.key_id = key_id(self.public)

    @classmethod
    def load_or_create(cls, model_dir: str | os.PathLike) -> "Signer":
        folder = service_dir(model_dir, create=True)
        path = folder / SIGNING_KEY
        if not path.exists():
            key = Ed25519PrivateKey.generate()
            _write_private(
                path,
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                ),
            )
            pub = key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            (folder / PUBLIC_KEY).write_bytes(pub)
        return cls.load(model_dir)

    @classmethod
    def load(cls, model_dir: str | os.PathLike) -> "Signer":
        path = service_dir(model_dir) / SIGNING_KEY
        try:
            key = serialization.load_pem_private_key(_read_private(path, "signing key"), password=None)
        except ValueError as exc:
            raise UnlearnKitError(f"signing key {path} cannot be read: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise UnlearnKitError(f"signing key {path} is not an Ed25519 key")
        return cls(key)

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self.private.sign(message)).decode()


def load_public_key(path: str | os.PathLike) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (``MODEL/service/signing-key.pub.pem``)."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise UnlearnKitError(f"public key {path} cannot be read: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UnlearnKitError(f"public key {path} is not an Ed25519 key")
    return key


def model_public_key(model_dir: str | os.PathLike) -> Ed25519PublicKey:
    path = service_dir(model_dir) / PUBLIC_KEY
    if not path.is_file():
        raise UnlearnKitError(f"{model_dir} has no service key ({path}); it is created by `unlearnkit serve`")
    return load_public_key(path)


def verify_signature(public: Ed25519PublicKey, message: bytes, signature_b64: str) -> bool:
    try:
        public.verify(base64.b64decode(signature_b64, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def token_secret(model_dir: str | os.PathLike, create: bool = False) -> bytes:
    """The server secret that token hashes are keyed with (HMAC-SHA256)."""
    folder = service_dir(model_dir, create=create)
    path = folder / TOKEN_SECRET
    if not path.exists():
        if not create:
            raise UnlearnKitError(f"{model_dir} has no API tokens yet; create one with `unlearnkit tokens create`")
        _write_private(path, secrets.token_hex(32).encode())
    return bytes.fromhex(_read_private(path, "token secret").decode().strip())

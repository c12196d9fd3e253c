"""Ed25519 keys, DSSE envelopes around in-toto Statements, and their verification."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pandacead.errors import ConfigError

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://pandacea.org/pandacead/training-provenance/v1"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is actually signed."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def keyid(public_key: Ed25519PublicKey) -> str:
    """sha256 (hex) of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_path(private_path: Path) -> Path:
    return private_path.with_suffix(".pub")


def generate_key(path: Path) -> bool:
    """Create an Ed25519 key (0600) and its .pub beside it. False if it already exists."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    pub = public_key_path(path)
    tmp = pub.with_name(f".{pub.name}.tmp")
    tmp.write_bytes(public_pem(key.public_key()))
    os.chmod(tmp, 0o644)
    os.replace(tmp, pub)
    return True


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load the signing key, refusing one that others can read or that is not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(f"The signing key {path} does not exist; run `pandacead init`.") from None
    except OSError as exc:
        raise ConfigError(f"The signing key {path} cannot be opened: {exc.strerror}.") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # checked before fdopen, which refuses a directory with EISDIR
        os.close(fd)
        raise ConfigError(f"The signing key {path} is not a regular file.")
    with os.fdopen(fd, "rb") as fh:
        if st.st_mode & 0o077:
            raise ConfigError(
                f"The signing key {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o});"
                f" run `chmod 600 {path}`."
            )
        data = fh.read(65536)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"The signing key {path} is not a PEM private key: {exc}.") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"The signing key {path} is not an Ed25519 key.")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    data = Path(path).read_bytes()
    try:
        key: Any = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path} is not a PEM public key: {exc}.") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key.")
    return key


class Ed25519Signer:
    """The built-in signer (registered as a plugin through `pandacead_sign_artifact`)."""

    def __init__(self, key: Ed25519PrivateKey):
        self.key = key
        self.keyid = keyid(key.public_key())

    def sign(self, payload: bytes) -> dict[str, str]:
        return {"keyid": self.keyid, "sig": base64.b64encode(self.key.sign(payload)).decode("ascii")}


def statement(subject_name: str, subject_bytes: bytes, predicate: dict[str, Any]) -> dict[str, Any]:
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": subject_name, "digest": {"sha256": hashlib.sha256(subject_bytes).hexdigest()}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    }


def statement_bytes(stmt: dict[str, Any]) -> bytes:
    """The envelope's payload: the statement as compact JSON, keys sorted."""
    return json.dumps(stmt, sort_keys=True, separators=(",", ":")).encode("utf-8")


def envelope(stmt: dict[str, Any], signatures: list[dict[str, str]], payload: bytes | None = None) -> dict[str, Any]:
    """The DSSE envelope; `payload`: `statement_bytes(stmt)` when the caller has it already."""
    if payload is None:
        payload = statement_bytes(stmt)
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": signatures,
    }


def envelope_payload(stmt: dict[str, Any], payload: bytes | None = None) -> bytes:
    """The PAE bytes signers sign for `stmt` (same serialisation as `envelope`)."""
    return pae(PAYLOAD_TYPE, statement_bytes(stmt) if payload is None else payload)


def verify_envelope(env: Any, keys: dict[str, Ed25519PublicKey]) -> tuple[dict[str, Any] | None, list[str]]:
    """Check a DSSE envelope's signatures. Returns (statement, problems).

    As in DSSE and securesystemslib, signatures by keys we do not know are
    ignored as long as one signature is by a trusted key and verifies; a
    signature by a trusted key that does not verify is always a problem.
    """
    problems: list[str] = []
    unknown: list[str] = []
    verified = 0
    if not isinstance(env, dict):
        return None, ["the envelope is not a JSON object"]
    if env.get("payloadType") != PAYLOAD_TYPE:
        problems.append(f"payloadType is {env.get('payloadType')!r}, expected {PAYLOAD_TYPE!r}")
    try:
        payload = base64.b64decode(env.get("payload", ""), validate=True)
        stmt = json.loads(payload)
    except (ValueError, TypeError):
        return None, [*problems, "the envelope payload is not base64 JSON"]
    sigs = env.get("signatures")
    if not isinstance(sigs, list) or not sigs:
        return stmt, [*problems, "the envelope has no signatures"]
    seen: set[str] = set()
    signed = pae(PAYLOAD_TYPE, payload)
    for i, sig in enumerate(sigs):
        if not isinstance(sig, dict):
            problems.append(f"signature {i} is not an object")
            continue
        kid = sig.get("keyid")
        if not isinstance(kid, str) or kid in seen:
            problems.append(f"signature {i} repeats or lacks its keyid")
            continue
        seen.add(kid)
        key = keys.get(kid)
        if key is None:
            unknown.append(f"signature {i} is by an unknown key {kid[:16]}…")
            continue
        try:
            key.verify(base64.b64decode(sig.get("sig", ""), validate=True), signed)
            verified += 1
        except (InvalidSignature, ValueError, TypeError):
            problems.append(f"signature {i} by key {kid[:16]}… does not verify")
    if not verified:
        problems.extend(unknown)
    return stmt, problems

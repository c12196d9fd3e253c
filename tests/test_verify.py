"""`pandacead verify`: accepts what the daemon signed and refuses every kind of tampering."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from conftest import cli, drop, job, make_home, run_once


@pytest.fixture(scope="module")
def signed(tmp_path_factory) -> Path:
    home = make_home(tmp_path_factory.mktemp("v") / "home")
    drop(home, "a.json", job("a"))
    drop(home, "b.json", job("b", seed=8))
    assert run_once(home).returncode == 0
    return home


def copy_pair(home: Path, tmp: Path, jid: str = "a") -> tuple[Path, Path]:
    art, env = tmp / f"{jid}.json", tmp / f"{jid}.dsse.json"
    shutil.copy(home / "outbox" / f"{jid}.json", art)
    shutil.copy(home / "outbox" / f"{jid}.dsse.json", env)
    return art, env


def verify(home: Path, art: Path, *extra: str):
    return cli(home, "verify", str(art), "--home", str(home), *extra)


def test_untampered_artifact_verifies(signed, tmp_path):
    art, _ = copy_pair(signed, tmp_path)
    r = verify(signed, art)
    assert r.returncode == 0, r.stderr.decode()
    r = verify(signed, art, "--key", str(signed / "state" / "keys" / "ed25519.pub"))
    assert r.returncode == 0


def edit(path: Path, fn) -> None:
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj, indent=2))


def test_modified_model_is_refused(signed, tmp_path):
    art, _ = copy_pair(signed, tmp_path)
    def flip(a):
        raw = bytearray(base64.b64decode(a["model"]))
        raw[-1] ^= 1
        a["model"] = base64.b64encode(bytes(raw)).decode()
    edit(art, flip)
    r = verify(signed, art)
    assert r.returncode == 1 and "hash" in r.stderr.decode()


def test_modified_epsilon_with_recomputed_hash_is_refused(signed, tmp_path):
    from pandacead.artifacts import artifact_hash

    art, _ = copy_pair(signed, tmp_path)
    def cheat(a):
        a["epsilon"] = 0.01
        a["hash"] = artifact_hash(a)
    edit(art, cheat)
    r = verify(signed, art)
    assert r.returncode == 1 and "sha256" in r.stderr.decode()


def test_envelope_swapped_between_artifacts_is_refused(signed, tmp_path):
    art, env = copy_pair(signed, tmp_path, "a")
    shutil.copy(signed / "outbox" / "b.dsse.json", env)
    assert verify(signed, art).returncode == 1


def test_stripped_or_duplicated_signature_is_refused(signed, tmp_path):
    art, env = copy_pair(signed, tmp_path)
    edit(env, lambda e: e.update(signatures=[]))
    r = verify(signed, art)
    assert r.returncode == 1 and "no signatures" in r.stderr.decode()
    art, env = copy_pair(signed, tmp_path)
    edit(env, lambda e: e.update(signatures=e["signatures"] * 2))
    assert verify(signed, art).returncode == 1


def test_wrong_key_is_refused(signed, tmp_path):
    other = make_home(tmp_path / "other")
    art, _ = copy_pair(signed, tmp_path)
    r = verify(signed, art, "--key", str(other / "state" / "keys" / "ed25519.pub"))
    assert r.returncode == 1 and "unknown key" in r.stderr.decode()


def test_missing_envelope_is_refused(signed, tmp_path):
    art, env = copy_pair(signed, tmp_path)
    env.unlink()
    r = verify(signed, art)
    assert r.returncode == 1 and "missing" in r.stderr.decode()

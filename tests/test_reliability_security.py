"""Security review as tests: no pickle, safe file modes, no path from a job escapes the home,
keys enforced, and `verify` refuses every kind of tampering (extends tests/test_verify.py)."""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, cli, drop, env_for, job, make_home, run_once
from fuzz.strategies import FILE_NAMES
from hypothesis import given, settings
from hypothesis import strategies as st

from pandacead.artifacts import safe_stem
from pandacead.errors import JobRejected
from pandacead.jobs import parse_job
from pandacead.spool import spool_name

# --------------------------------------------------------------------------- nothing is unpickled

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "jsonpickle"}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield node, owner, name


def _kw(node: ast.Call, key: str):
    for k in node.keywords:
        if k.arg == key:
            return k.value
    return None


def _unsafe_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text("utf-8"), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            out.append(f"from {node.module} import ...")
    for node, owner, name in _calls(tree):
        where = f"line {node.lineno}"
        if name == "load" and owner == "torch":
            wo = _kw(node, "weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                out.append(f"{where}: torch.load without weights_only=True")
        elif name == "load" and owner in ("np", "numpy"):
            ap = _kw(node, "allow_pickle")
            if not (isinstance(ap, ast.Constant) and ap.value is False):
                out.append(f"{where}: numpy.load without allow_pickle=False")
        elif name in ("read_pickle", "to_pickle"):
            out.append(f"{where}: pandas {name}")
        elif name == "load" and owner == "yaml":
            out.append(f"{where}: yaml.load (use safe_load)")
        elif name in ("loads", "load") and owner in UNSAFE_MODULES:
            out.append(f"{where}: {owner}.{name}")
        elif name in ("eval", "exec") and isinstance(node.func, ast.Name):  # the builtins, not module.eval()
            out.append(f"{where}: {name}()")
    if "__reduce__" in path.read_text("utf-8"):
        out.append("defines or uses __reduce__")
    return out


def test_nothing_is_ever_unpickled():
    files = sorted([*REPO.joinpath("pandacead").rglob("*.py"), *REPO.joinpath("plugins").rglob("*.py")])
    assert len(files) > 20
    found = {str(p.relative_to(REPO)): u for p in files if (u := _unsafe_uses(p))}
    assert found == {}, f"unsafe deserialisation: {found}"


def test_the_unpickle_check_catches_what_it_should(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nimport torch, numpy as np\n"
        "torch.load('m.pt')\ntorch.load('m.pt', weights_only=False)\nnp.load('x.npy')\n"
        "torch.load('ok.pt', weights_only=True)\nnp.load('ok.npz', allow_pickle=False)\n"
    )
    uses = _unsafe_uses(bad)
    assert len(uses) == 4, uses


# --------------------------------------------------------------------------- modes of what is created


def _reachable_by_others(path: Path, home: Path) -> bool:
    p = path.parent
    while True:
        if not os.stat(p).st_mode & stat.S_IXOTH:
            return False
        if p == home or p == p.parent:
            return True
        p = p.parent


def test_created_files_have_safe_modes_even_with_a_careless_umask(tmp_path):
    umask = 0  # the worst case: every mode must be explicit (the other tests run with umask 022)
    home = tmp_path / "h"
    env = env_for(home)
    code = f"import os, sys; os.umask({umask}); from pandacead.cli import main; sys.argv = sys.argv[1:]; main()"

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-c", code, "pandacead", *args], env=env, capture_output=True,
                              timeout=120, cwd=tmp_path)

    assert run("init", "--home", str(home)).returncode == 0
    (home / "pandacead.toml").write_text((home / "pandacead.toml").read_text().replace(
        "settle_seconds = 0.5", "settle_seconds = 0.05"))
    drop(home, "ok.json", job("ok"))
    drop(home, "bad.json", b"{")
    os.mkfifo(home / "inbox" / "fifo.json")
    r = run("run", "--once", "--home", str(home))
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    modes = {str(p.relative_to(home)): stat.S_IMODE(os.lstat(p).st_mode) for p in home.rglob("*")}
    assert not stat.S_IMODE(os.stat(home).st_mode) & stat.S_IWOTH, "the home is world-writable"
    for key in ("state/keys/ed25519.pem", "state/keys/noise.key"):
        assert modes[key] == 0o600, (key, oct(modes[key]))
    for d in ("state", "state/keys", "state/spool", "state/rejected"):
        assert modes[d] == 0o700, (d, oct(modes[d]))
    for name in ("ok.json", "ok.dsse.json", "bad.error.json", "fifo.error.json"):
        assert modes[f"outbox/{name}"] == 0o644, (name, oct(modes[f"outbox/{name}"]))
    problems = []
    for p in home.rglob("*"):
        if p.is_symlink() or not _reachable_by_others(p, home):
            continue
        m = stat.S_IMODE(os.lstat(p).st_mode)
        rel = str(p.relative_to(home))
        if m & stat.S_IWOTH and not (p.is_dir() and m & stat.S_ISVTX):
            problems.append(f"{rel} is world-writable ({m:04o})")
        if rel.startswith("state/"):
            problems.append(f"{rel} is reachable by other users")
    assert problems == []


def test_a_noise_key_readable_by_others_is_refused(tmp_path):
    home = make_home(tmp_path / "h")
    os.chmod(home / "state" / "keys" / "noise.key", 0o644)
    r = run_once(home, timeout=60)
    assert r.returncode == 1 and "noise key" in r.stderr.decode() and "Traceback" not in r.stderr.decode()


# --------------------------------------------------------------------------- no path from a job escapes the home

OUTBOX_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._~-]*\Z")


@settings(max_examples=400, deadline=None)
@given(FILE_NAMES)
def test_any_inbox_name_maps_to_a_safe_spool_name_and_report_name(name):
    fname = name + ".json"
    sp = spool_name(fname)
    assert "/" not in sp and "\0" not in sp and sp.isprintable()
    assert len(sp.encode()) <= 200 and sp.endswith(".json")
    stem = safe_stem(sp)
    assert OUTBOX_NAME.match(stem) and ".." not in stem.split("/") and len(stem) <= 128, stem
    outbox = Path("/srv/h/outbox")
    assert os.path.normpath(outbox / f"{stem}.error.json").startswith(str(outbox) + "/")


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=40), st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,127}\n?\Z")))
def test_an_accepted_job_id_names_files_inside_the_outbox_only(jid):
    try:
        j = parse_job(json.dumps({"job_id": jid, "user_id": "u"}).encode())
    except JobRejected:
        return
    outbox = Path("/srv/h/outbox")
    for suffix in (".json", ".dsse.json", ".error.json"):
        p = os.path.normpath(outbox / f"{j.job_id}{suffix}")
        assert p.startswith(str(outbox) + "/") and "/" not in p[len(str(outbox)) + 1:]
    assert OUTBOX_NAME.match(j.job_id) and "\n" not in j.job_id


def test_planted_links_in_the_outbox_are_replaced_never_followed(tmp_path):
    home = make_home(tmp_path / "h")
    target = tmp_path / "target.txt"
    target.write_text("keep me")
    for name in ("sl.json", "sl.dsse.json", "sl-bad.error.json"):
        os.symlink(target, home / "outbox" / name)
    drop(home, "sl.json", job("sl"))
    drop(home, "sl-bad.json", b"[")
    assert run_once(home).returncode == 0
    assert target.read_text() == "keep me"
    for name in ("sl.json", "sl.dsse.json", "sl-bad.error.json"):
        assert not (home / "outbox" / name).is_symlink()
    assert cli(home, "verify", str(home / "outbox" / "sl.json")).returncode == 0


# --------------------------------------------------------------------------- verify refuses tampering


@pytest.fixture(scope="module")
def signed(tmp_path_factory) -> Path:
    home = make_home(tmp_path_factory.mktemp("sec") / "home")
    drop(home, "a.json", job("a"))
    drop(home, "b.json", job("b", seed=8))
    assert run_once(home).returncode == 0
    return home


def _verify(home: Path, art: Path, *extra: str) -> tuple[int, str]:
    from click.testing import CliRunner

    from pandacead.cli import cli as group

    r = CliRunner().invoke(group, ["verify", str(art), "--home", str(home), *extra])
    return r.exit_code, r.output


def _pair(home: Path, tmp: Path, jid: str = "a", as_name: str | None = None) -> tuple[Path, Path]:
    name = as_name or jid
    art, env = tmp / f"{name}.json", tmp / f"{name}.dsse.json"
    shutil.copy(home / "outbox" / f"{jid}.json", art)
    shutil.copy(home / "outbox" / f"{jid}.dsse.json", env)
    return art, env


def _edit(path: Path, fn) -> None:
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj, indent=2))


def _other_key(tmp: Path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from pandacead.signing import Ed25519Signer

    return Ed25519Signer(Ed25519PrivateKey.generate())


def test_verify_accepts_the_untouched_pair(signed, tmp_path):
    art, _ = _pair(signed, tmp_path)
    assert _verify(signed, art)[0] == 0


def test_verify_of_an_artifact_renamed_onto_another_name_says_the_name_it_was_signed_under(signed, tmp_path):
    # Issue #16: a renamed artifact verifies by its digest, and verify says under which name it
    # was signed, so c.json cannot pass for job c's result unnoticed (its job_id is hashed, too).
    art, _ = _pair(signed, tmp_path, "a", as_name="c")
    code, out = _verify(signed, art)
    assert code == 0 and "signed as a.json" in out and json.loads(art.read_text())["job_id"] == "a"


def test_verify_refuses_a_changed_payload_type(signed, tmp_path):
    art, env = _pair(signed, tmp_path)
    _edit(env, lambda e: e.update(payloadType="application/json"))
    assert _verify(signed, art)[0] == 1


def test_verify_ignores_an_extra_signature_by_an_unknown_key_but_never_trusts_it_alone(signed, tmp_path):
    from pandacead.signing import PAYLOAD_TYPE, pae

    art, env = _pair(signed, tmp_path)
    other = _other_key(tmp_path)

    def add(e):
        e["signatures"].append(other.sign(pae(PAYLOAD_TYPE, base64.b64decode(e["payload"]))))
    _edit(env, add)
    code, out = _verify(signed, art)
    assert code == 0  # Issue #16: as DSSE, an unknown co-signer is ignored while a trusted signature holds
    _edit(env, lambda e: e.update(signatures=e["signatures"][1:]))  # ... but it alone is not enough
    code, out = _verify(signed, art)
    assert code == 1 and "unknown key" in out


def test_verify_refuses_a_foreign_signature_relabelled_with_the_trusted_keyid(signed, tmp_path):
    from pandacead.signing import PAYLOAD_TYPE, pae

    art, env = _pair(signed, tmp_path)
    other = _other_key(tmp_path)

    def relabel(e):
        sig = other.sign(pae(PAYLOAD_TYPE, base64.b64decode(e["payload"])))
        e["signatures"] = [{"keyid": e["signatures"][0]["keyid"], "sig": sig["sig"]}]
    _edit(env, relabel)
    code, out = _verify(signed, art)
    assert code == 1 and "does not verify" in out


def test_verify_refuses_a_restated_payload_with_a_borrowed_signature(signed, tmp_path):
    """The attacker writes a statement naming the forged artifact and reuses b's signature."""
    art, env = _pair(signed, tmp_path)
    _edit(art, lambda a: a.update(epsilon=0.001))
    digest = hashlib.sha256(art.read_bytes()).hexdigest()
    b_env = json.loads((signed / "outbox" / "b.dsse.json").read_text())

    def restate(e):
        stmt = json.loads(base64.b64decode(e["payload"]))
        stmt["subject"] = [{"name": "a.json", "digest": {"sha256": digest}}]
        e["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()
        e["signatures"] = b_env["signatures"]
    _edit(env, restate)
    assert _verify(signed, art)[0] == 1


@pytest.mark.parametrize("mangle", [
    lambda p: p.write_bytes(p.read_bytes() + b"\n"),  # same JSON, other bytes: the digest is over bytes
    lambda p: p.write_bytes(p.read_bytes()[:100]),
    lambda p: p.write_bytes(b""),
    lambda p: _edit(p, lambda a: a.pop("hash")),
    lambda p: _edit(p, lambda a: a.update(user_id="someone-else")),
    lambda p: _edit(p, lambda a: a.update(model_format="pickle")),
])
def test_verify_refuses_a_mangled_artifact(signed, tmp_path, mangle):
    art, _ = _pair(signed, tmp_path)
    mangle(art)
    assert _verify(signed, art)[0] == 1


@pytest.mark.parametrize("mangle", [
    lambda p: p.write_text("not json"),
    lambda p: p.write_text("[]"),
    lambda p: _edit(p, lambda e: e.update(payload="!!not base64!!")),
    lambda p: _edit(p, lambda e: e.update(signatures=[{"keyid": 7, "sig": 8}])),
    lambda p: _edit(p, lambda e: e.update(signatures=[{"keyid": e["signatures"][0]["keyid"]}])),
    lambda p: _edit(p, lambda e: e.update(signatures="sig")),
])
def test_verify_refuses_a_mangled_envelope(signed, tmp_path, mangle):
    art, env = _pair(signed, tmp_path)
    mangle(env)
    assert _verify(signed, art)[0] == 1


def test_verify_with_a_key_file_that_is_not_a_key_says_so_in_one_sentence(signed, tmp_path):
    bogus = tmp_path / "bogus.pub"
    bogus.write_text("hello")
    art, _ = _pair(signed, tmp_path)
    r = cli(signed, "verify", str(art), "--key", str(bogus))
    err = r.stderr.decode()
    assert r.returncode == 1 and "not a PEM public key" in err and "Traceback" not in err

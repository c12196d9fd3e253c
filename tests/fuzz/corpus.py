"""The hostile job-file corpus: `python tests/fuzz/corpus.py` (re)writes tests/hostile/.

Every case is (file name, content, needle): dropped into a running daemon the
file must end as an error report with status "rejected" whose error or details
contain the needle, and nothing may be charged. The report is named after the
file's stem (every case whose job_id is readable uses its stem as job_id).
Cases too big to keep in the repository are built by `big_cases()` at test time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HOSTILE_DIR = Path(__file__).resolve().parent.parent / "hostile"
USER = "mallory"


def base(job_id: str, **over: Any) -> dict[str, Any]:
    j: dict[str, Any] = {
        "job_id": job_id, "user_id": USER, "dataset": "synthetic", "task": "classification",
        "dp": {"enabled": True, "epsilon": 0.5, "delta": 1e-5, "clip": 1.0},
        "epochs": 2, "batch_size": 64, "learning_rate": 0.05, "seed": 1,
    }
    j.update(over)
    return j


def dp(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"enabled": True, "epsilon": 0.5, "delta": 1e-5, "clip": 1.0}
    d.update(over)
    return d


def enc(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def cases() -> list[tuple[str, bytes, str]]:
    out: list[tuple[str, bytes, str]] = []

    def add(stem: str, content: bytes, needle: str) -> None:
        out.append((f"{stem}.json", content, needle))

    def field(stem: str, needle: str, **over: Any) -> None:
        add(stem, enc(base(stem, **over)), needle)

    # -- encodings ---------------------------------------------------------------------
    text = json.dumps(base("enc-x"))
    add("enc-utf16le-bom", "\ufeff".encode("utf-16-le") + text.replace("enc-x", "enc-utf16le-bom").encode("utf-16-le"), "UTF-8")
    add("enc-utf16be-bom", "\ufeff".encode("utf-16-be") + text.replace("enc-x", "enc-utf16be-bom").encode("utf-16-be"), "UTF-8")
    add("enc-utf16le", text.replace("enc-x", "enc-utf16le").encode("utf-16-le"), "not valid JSON")
    add("enc-utf32", text.replace("enc-x", "enc-utf32").encode("utf-32"), "UTF-8")
    add("enc-latin1", text.replace("enc-x", "enc-latin1").replace(USER, "mallöry").encode("latin-1"), "UTF-8")
    add("enc-invalid-byte", enc(base("enc-invalid-byte")).replace(b'"synthetic"', b'"synth\xffetic"'), "UTF-8")
    add("enc-overlong-slash", enc(base("enc-overlong-slash")).replace(b'"synthetic"', b'"..\xc0\xafetc"'), "UTF-8")
    add("enc-utf8-surrogate", enc(base("enc-utf8-surrogate")).replace(b'"synthetic"', b'"\xed\xa0\x80"'), "UTF-8")
    add("enc-nul-trailing", enc(base("enc-nul-trailing")) + b"\x00\x00\x00", "Extra data")
    add("enc-nul-leading", b"\x00" + enc(base("enc-nul-leading")), "not valid JSON")
    add("enc-nul-everywhere", b"\x00".join(bytes([c]) for c in enc(base("enc-nul-everywhere"))), "not valid JSON")
    add("enc-nul-escape-in-id", enc(base("enc-nul-escape-in-id")).replace(b'"user_id": "mallory"', b'"user_id": "mal\\u0000lory"'), "user_id")
    add("enc-raw-control-char", enc(base("enc-raw-control-char")).replace(b'"synthetic"', b'"syn\x01thetic"'), "control character")
    add("enc-lone-surrogate-escape", enc(base("enc-lone-surrogate-escape")).replace(b'"user_id": "mallory"', b'"user_id": "\\ud800"'), "user_id")
    add("enc-double-bom", "\ufeff\ufeff".encode() + enc(base("enc-double-bom")), "not valid JSON")
    add("enc-ansi-escape-id", enc(base("enc-ansi-escape-id")).replace(b'"user_id": "mallory"', b'"user_id": "\\u001b[31mroot"'), "user_id")

    # -- syntax -------------------------------------------------------------------------
    add("syn-empty", b"", "not valid JSON")
    add("syn-whitespace", b" \n\t \r\n", "not valid JSON")
    add("syn-truncated", enc(base("syn-truncated"))[:60], "not valid JSON")
    add("syn-trailing-garbage", enc(base("syn-trailing-garbage")) + b" garbage", "Extra data")
    add("syn-two-objects", enc(base("syn-two-objects")) * 2, "Extra data")
    add("syn-comment", b"// a job\n" + enc(base("syn-comment")), "not valid JSON")
    add("syn-single-quotes", enc(base("syn-single-quotes")).replace(b'"', b"'"), "not valid JSON")
    add("syn-trailing-comma", enc(base("syn-trailing-comma"))[:-1] + b",}", "not valid JSON")
    add("syn-unquoted-key", enc(base("syn-unquoted-key")).replace(b'"seed"', b"seed"), "not valid JSON")
    add("syn-duplicate-job-id", b'{"job_id": "syn-duplicate-job-id", "job_id": "other", "user_id": "mallory"}', "duplicate key")
    add("syn-duplicate-nested", enc(base("syn-duplicate-nested")).replace(b'"epsilon": 0.5', b'"epsilon": 0.5, "epsilon": 0.001'), "duplicate key")
    add("syn-top-array", enc([base("syn-top-array")]), "JSON object")
    add("syn-top-string", b'"syn-top-string"', "JSON object")
    add("syn-top-null", b"null", "JSON object")
    add("syn-top-number", b"42", "JSON object")
    add("syn-top-true", b"true", "JSON object")
    add("syn-hex-number", enc(base("syn-hex-number")).replace(b'"seed": 1', b'"seed": 0x10'), "not valid JSON")
    add("syn-leading-zero", enc(base("syn-leading-zero")).replace(b'"seed": 1', b'"seed": 01'), "not valid JSON")
    add("syn-plus-sign", enc(base("syn-plus-sign")).replace(b'"seed": 1', b'"seed": +1'), "not valid JSON")
    add("syn-python-literal", enc(base("syn-python-literal")).replace(b'"enabled": true', b'"enabled": True'), "not valid JSON")
    add("syn-yaml", b"job_id: syn-yaml\nuser_id: mallory\n", "not valid JSON")
    add("syn-pickle", b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x06job_id\x94\x8c\x01x\x94s.", "UTF-8")

    # -- numbers ------------------------------------------------------------------------
    add("num-nan", enc(base("num-nan")).replace(b'"epsilon": 0.5', b'"epsilon": NaN'), "NaN")
    add("num-infinity", enc(base("num-infinity")).replace(b'"epsilon": 0.5', b'"epsilon": Infinity'), "Infinity")
    add("num-neg-infinity", enc(base("num-neg-infinity")).replace(b'"clip": 1.0', b'"clip": -Infinity'), "Infinity")
    add("num-overflow", enc(base("num-overflow")).replace(b'"epsilon": 0.5', b'"epsilon": 1e999'), "not finite")
    add("num-neg-overflow", enc(base("num-neg-overflow")).replace(b'"learning_rate": 0.05', b'"learning_rate": -1e400'), "not finite")
    add("num-bigint", enc(base("num-bigint")).replace(b'"epochs": 2', b'"epochs": ' + b"9" * 5000), "digits")
    add("num-bigint-seed", enc(base("num-bigint-seed")).replace(b'"seed": 1', b'"seed": 18446744073709551616'), "seed")
    field("num-eps-zero", "dp.epsilon", dp=dp(epsilon=0))
    field("num-eps-negative", "dp.epsilon", dp=dp(epsilon=-1))
    field("num-eps-negative-zero", "dp.epsilon", dp=dp(epsilon=-0.0))
    field("num-eps-over-max", "dp.epsilon", dp=dp(epsilon=100.5))
    field("num-eps-string", "dp.epsilon", dp=dp(epsilon="0.5"))
    field("num-eps-bool", "dp.epsilon", dp=dp(epsilon=True))
    field("num-eps-null", "dp.epsilon", dp=dp(epsilon=None))
    field("num-eps-list", "dp.epsilon", dp=dp(epsilon=[0.5]))
    field("num-delta-one", "dp.delta", dp=dp(delta=1))
    field("num-delta-zero", "dp.delta", dp=dp(delta=0))
    field("num-delta-negative", "dp.delta", dp=dp(delta=-1e-5))
    field("num-delta-over-max", "dp.delta", dp=dp(delta=0.02))
    field("num-delta-over-1-over-n", "1/n", dp=dp(delta=0.009))
    field("num-clip-zero", "dp.clip", dp=dp(clip=0))
    field("num-noise-zero", "dp.noise_multiplier", dp=dp(noise_multiplier=0))
    field("num-noise-negative", "dp.noise_multiplier", dp=dp(noise_multiplier=-1))
    field("num-epochs-zero", "epochs", epochs=0)
    field("num-epochs-fraction", "epochs", epochs=2.5)
    field("num-epochs-over-max", "epochs", epochs=1001)
    field("num-epochs-string", "epochs", epochs="10")
    field("num-epochs-bool", "epochs", epochs=True)
    field("num-epochs-null", "epochs", epochs=None)
    field("num-batch-zero", "batch_size", batch_size=0)
    field("num-batch-huge", "batch_size", batch_size=10**9)
    field("num-seed-negative", "seed", seed=-1)
    field("num-seed-fraction", "seed", seed=1.5)
    field("num-lr-zero", "learning_rate", learning_rate=0)
    field("num-lr-negative", "learning_rate", learning_rate=-0.1)
    field("num-hidden-zero", "model.hidden", model={"type": "mlp", "hidden": [0]})
    field("num-hidden-huge", "model.hidden", model={"type": "mlp", "hidden": [10**9]})
    field("num-hidden-too-many", "model.hidden", model={"type": "mlp", "hidden": [8] * 5})

    # -- types and fields -----------------------------------------------------------------
    field("typ-dp-list", "dp", dp=[0.5, 1e-5])
    field("typ-dp-null", "dp", dp=None)
    field("typ-dp-string", "dp", dp="epsilon=0.5")
    field("typ-model-list", "model", model=["mlp"])
    field("typ-model-pickle", "model.type", model={"type": "pickle"})
    field("typ-model-torchscript", "model.type", model={"type": "torchscript", "path": "/tmp/x.pt"})
    field("typ-hidden-strings", "model.hidden", model={"type": "mlp", "hidden": ["8"]})
    field("typ-task-unknown", "task", task="clustering")
    field("typ-accountant-unknown", "dp.accountant", dp=dp(accountant="gdp"))
    field("typ-backend-number", "backend", backend=7)
    field("typ-user-object", "user_id", user_id={"$ne": None})
    field("typ-user-number", "user_id", user_id=0)
    field("typ-extra-code", "code", code="__import__('os').system('id')")
    field("typ-extra-proto", "__proto__", __proto__={"admin": True})
    field("typ-extra-dp-field", "dp", dp=dp(budget_override=1000))
    field("typ-dp-disabled", "disabled", dp=dp(enabled=False))
    field("typ-dp-enabled-string", "dp.enabled", dp=dp(enabled="false"))
    field("typ-linear-hidden", "hidden layers", model={"type": "linear", "hidden": [8]})
    add("typ-missing-job-id", enc({k: v for k, v in base("x").items() if k != "job_id"}), "job_id")
    add("typ-missing-user-id", enc({k: v for k, v in base("typ-missing-user-id").items() if k != "user_id"}), "user_id")
    add("typ-job-id-number", enc(base(7)), "job_id")  # type: ignore[arg-type]
    add("typ-job-id-null", enc(base(None)), "job_id")  # type: ignore[arg-type]
    add("typ-job-id-list", enc(base(["typ-job-id-list"])), "job_id")  # type: ignore[arg-type]
    add("typ-empty-object", b"{}", "job_id")

    # -- identifiers used as paths or look-alikes -------------------------------------------
    for stem, value in [
        ("id-dotdot-slash", "../x"), ("id-dotdot-outbox", "../../outbox/victim"), ("id-abs-path", "/etc/passwd"),
        ("id-dotdot", ".."), ("id-dot", "."), ("id-hidden", ".bashrc"), ("id-backslash", "..\\x"),
        ("id-slash", "a/b"), ("id-newline", "x\n"), ("id-cr", "x\r"), ("id-tab", "x\ty"), ("id-space", "a b"),
        ("id-cyrillic", "\u0430lice"), ("id-fullwidth", "\uff4a\uff4f\uff42"), ("id-rtl-override", "\u202ejob"),
        ("id-zero-width", "a\u200bb"), ("id-too-long", "a" * 129), ("id-empty", ""), ("id-tilde", "~root"),
        ("id-dash", "-rf"), ("id-dsse", "victim.dsse"), ("id-error", "victim.error"), ("id-dsse-upper", "victim.DSSE"),
        ("id-glob", "*"), ("id-nul", "a\u0000b"), ("id-percent", "%2e%2e%2fx"), ("id-url", "file:///etc/passwd"),
    ]:
        add(stem, enc(base(value)), "job_id")
    for stem, key, value in [
        ("user-dotdot", "user_id", "../../etc"), ("user-newline", "user_id", "mallory\n"),
        ("user-cyrillic", "user_id", "m\u0430llory"), ("user-empty", "user_id", ""),
        ("dataset-path", "dataset", "../../../../etc/passwd"), ("dataset-abs", "dataset", "/etc/shadow"),
        ("dataset-unknown", "dataset", "patients"), ("dataset-newline", "dataset", "synthetic\n"),
        ("backend-path", "backend", "../mock"), ("backend-upper", "backend", "MOCK"),
        ("backend-unknown", "backend", "pickle"), ("backend-newline", "backend", "mock\n"),
    ]:
        add(stem, enc(base(stem, **{key: value})), key if key != "dataset" or value != "patients" else "patients")

    # -- nesting ----------------------------------------------------------------------------
    add("nest-deep-arrays", b"[" * 20_000 + b"]" * 20_000, "nests deeper")
    add("nest-deep-objects", b'{"a":' * 5000 + b"1" + b"}" * 5000, "nests deeper")
    add("nest-unbalanced", b"[" * 50_000, "nests deeper")
    add("nest-17-in-field", enc(base("nest-17-in-field")).replace(b'"seed": 1', b'"seed": ' + b"[" * 17 + b"]" * 17), "nests deeper")
    add("nest-16-in-field", enc(base("nest-16-in-field")).replace(b'"seed": 1', b'"seed": ' + b"[" * 14 + b"1" + b"]" * 14), "seed")
    return out


def big_cases(max_bytes: int = 1_048_576) -> list[tuple[str, bytes, str]]:
    """Cases too large to keep in the repository."""
    ok = enc(base("size-over-limit"))
    return [
        ("size-over-limit.json", ok + b" " * (max_bytes - len(ok) + 1), "over the"),
        ("size-hidden-list.json", enc(base("size-hidden-list", model={"type": "mlp", "hidden": [0] * 250_000})), "problems"),
        ("size-many-keys.json", enc({**base("size-many-keys"), **{f"k{i}": i for i in range(60_000)}}), "Additional properties"),
        ("size-long-id.json", enc(base("x" * 900_000)), "job_id"),
        ("size-long-string-field.json", enc(base("size-long-string-field", dataset="d" * 900_000)), "dataset"),
    ]


# Benign variants that must be accepted (a BOM is allowed by RFC 8259 section 8.1).
def benign_cases(max_bytes: int = 1_048_576) -> list[tuple[str, bytes]]:
    ok = enc(base("ok-exactly-at-limit"))
    return [
        ("ok-exactly-at-limit.json", ok[:-1] + b" " * (max_bytes - len(ok)) + b"}"),
        ("ok-utf8-bom.json", "\ufeff".encode() + enc(base("ok-utf8-bom"))),
        ("ok-crlf-pretty.json", json.dumps(base("ok-crlf-pretty"), indent=4).replace("\n", "\r\n").encode()),
        ("ok-unicode-escapes.json", enc(base("ok-unicode-escapes")).replace(b'"synthetic"', b'"\\u0073ynthetic"')),
        ("ok-float-integers.json", enc(base("ok-float-integers", epochs=2.0, seed=3.0))),
    ]


def write_corpus(directory: Path = HOSTILE_DIR) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.json"):
        old.unlink()
    lines = ["# file\tneedle (the error report must contain it; status rejected; nothing charged)"]
    for name, content, needle in cases():
        (directory / name).write_bytes(content)
        lines.append(f"{name}\t{needle}")
    (directory / "EXPECTED.tsv").write_text("\n".join(lines) + "\n", "utf-8")
    return len(lines) - 1


def load_corpus(directory: Path = HOSTILE_DIR) -> list[tuple[str, bytes, str]]:
    """The corpus as stored: (name, bytes, needle) for every tests/hostile/*.json."""
    needles = {}
    for line in (directory / "EXPECTED.tsv").read_text("utf-8").splitlines():
        if line and not line.startswith("#"):
            name, needle = line.split("\t", 1)
            needles[name] = needle
    files = sorted(p.name for p in directory.glob("*.json"))
    assert set(files) == set(needles), "tests/hostile/ and EXPECTED.tsv disagree; run tests/fuzz/corpus.py"
    return [(n, (directory / n).read_bytes(), needles[n]) for n in files]


if __name__ == "__main__":
    print(f"wrote {write_corpus()} hostile job files to {HOSTILE_DIR}", file=sys.stderr)

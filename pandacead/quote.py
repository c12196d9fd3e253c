"""Quotes: what a job would cost, signed before it is paid for.

A quote is the plan the daemon would make for a job — the trainer's own
`plan`, run the way the daemon runs it (in a worker process for an isolated
backend) — with the (ε, δ) it would reserve, what that costs the account
under the active composition mode and what would be left. Nothing is reserved
or charged and no training data is read: `plan` sees the dataset's
description only, and the run-time and memory estimates come from the plan's
numbers alone (no earlier job's timing, which would be a timing of a run on
private data, goes into a quote).

The quote is an in-toto Statement in a DSSE envelope signed by this host's
key. Its subject is the job, named by its job_id, with the sha256 of the
job's canonical JSON (RFC 8785) without its `quote` field; its predicate holds
the plan and a validity period. `pandacead quote` keeps the envelope under
`state/quotes/<hex>.dsse.json`, where <hex> is the sha256 of the envelope's
payload: the quote's digest. A job that carries `"quote": "sha256:<hex>"` is
admitted only if that quote is ours, untampered, unexpired, names this very
job, and the plan at admission is the quoted plan; otherwise it is refused
before anything is reserved (the buyer pays what it was quoted, or nothing).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pandacead.errors import JobRejected
from pandacead.jobs import Job
from pandacead.signing import keyid, load_public_key, statement, verify_envelope
from pandacead.trainers import PrivacyPlan

PREDICATE_TYPE = "https://pandacea.org/pandacead/quote/v1"
DEFAULT_VALID_SECONDS = 3600.0
# What must be identical between the quoted plan and the plan at admission.
PLAN_FIELDS = ("epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "accountant", "n_train")
CLOCK_SKEW = timedelta(minutes=5)


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of a JSON value (the same canonicaliser as artifact hashes)."""
    from pandacead.artifacts import canonical

    return canonical(value)


def job_digest(job: Job) -> str:
    """"sha256:<hex>" of the validated job's canonical JSON, without its `quote` field.

    The validated job (defaults filled in) is what the daemon runs, so two files
    that differ only in spacing, key order or spelt-out defaults are one job.
    """
    d = job.to_dict()
    d.pop("quote", None)
    return "sha256:" + hashlib.sha256(canonical_json(d)).hexdigest()


# -- what a quote says --------------------------------------------------------------


def admission_preview(ledger: Any, account: str, dataset: str, plan: PrivacyPlan) -> dict[str, Any]:
    """What admitting `plan` would cost `account` (and `dataset`) now, under the active composition.

    Read-only, and the same decision `Ledger.reserve` makes: the account's part
    computed here (its marginal cost and what is left), the dataset's from
    `Ledger.admission_preview` (all buyers together).
    """
    from pandacead.accounting import Spend, admit, job_curve

    summary = ledger.summary(account)
    eps_budget, delta_budget = float(summary["epsilon_budget"]), float(summary["delta_budget"])
    mode = ledger.composition
    used_e = float(summary["epsilon_spent"]) + float(summary["epsilon_reserved"])
    used_d = float(summary["delta_spent"]) + float(summary.get("delta_reserved") or 0.0)
    curve = job_curve(plan.rdp, plan.noise_multiplier, plan.sample_rate, plan.steps)
    spends = ledger._accounting_spends(account) if summary.get("known") else []
    try:
        d = admit(spends, Spend(plan.epsilon, plan.delta, curve, mode), eps_budget, delta_budget,
                  mode=mode, approx_share=ledger.approx_delta_share)
        ok, reason = d.ok, (d.reason or None)
        after_e, after_d = float(d.epsilon_after), float(d.delta_after)
    except ValueError as exc:
        ok, reason = False, str(exc)
        after_e, after_d = used_e + plan.epsilon, used_d + plan.delta
    pv = ledger.admission_preview(account, dataset, plan) if hasattr(ledger, "admission_preview") else {"fits": True}
    ds_public, ds_budget = None, None
    if dataset is not None and hasattr(ledger, "dataset_summary"):
        try:
            ds = ledger.dataset_summary(dataset)
            ds_public, ds_budget = ds.get("public"), ds.get("epsilon_budget")
        except Exception:  # an unregistered name: the daemon refuses it at admission
            pass
    return {
        "composition": mode,
        "account": {
            "id": account, "known": bool(summary.get("known")), "epsilon_budget": eps_budget,
            "delta_budget": delta_budget, "epsilon_used": used_e, "delta_used": used_d,
            "marginal_epsilon": max(0.0, after_e - used_e), "marginal_delta": max(0.0, after_d - used_d),
            "epsilon_left_after": max(0.0, eps_budget - after_e), "delta_left_after": max(0.0, delta_budget - after_d),
        },
        # The dataset's budget (all buyers together): the ledger's own read-only admission check.
        "dataset": {
            # Whether it fits, never what is left: a quote may be handed to a buyer, and the
            # dataset's remaining budget tells one buyer what the others spent (docs/accounts.md).
            "id": dataset, "public": ds_public, "fits": pv.get("dataset_fits"), "budget": ds_budget,
        },
        "fits": bool(ok) and bool(pv.get("fits")),
        "reason": (reason if not ok else pv.get("refusal")) if not (ok and pv.get("fits")) else None,
    }


# Plan-only throughput figures (docs/benchmarks.md order of magnitude on one CPU core).
_STARTUP_SECONDS = {"opacus": 4.0, "syft": 20.0, "mock": 0.05}  # accountant, data loading, warm-up
_FLOPS_PER_SECOND = 2e8


def estimate(job: Job, plan: PrivacyPlan, info: Any, backend: str) -> dict[str, Any]:
    """A rough run time and peak memory from the plan and the dataset's public shape only."""
    n_features = int(getattr(info, "n_features", 0) or 0)
    n_out = int(getattr(info, "n_classes", None) or 1)
    n_out = 1 if n_out <= 2 else n_out
    widths = [n_features, *job.model.hidden, n_out]
    params = sum((a + 1) * b for a, b in zip(widths, widths[1:]))
    # The public count only (the declared rows of private data): the quote reaches the buyer.
    n_train = int(plan.n_train or getattr(info, "public_n_train", None) or 0)
    batch = (plan.sample_rate or 0) * n_train or job.batch_size
    steps = plan.steps or max(1, math.ceil(n_train / max(1, job.batch_size))) * job.epochs
    # forward, backward and per-sample gradients: ~6 flops per parameter and example
    runs = 1.0
    sp = (plan.details or {}).get("search")
    if sp:  # a search trains all M candidates under constant work, K (mean E[K]) without it
        runs = float(sp.get("max") or sp.get("mean") or 1) if sp.get("constant_work") else float(sp.get("mean") or 1)
    seconds = _STARTUP_SECONDS.get(backend, 2.0) + runs * steps * batch * params * 6 / _FLOPS_PER_SECOND
    # per-sample gradients (batch × params), activations, the data, and the interpreter/libraries
    base = 350 * 2**20 if backend in ("opacus", "syft") else 60 * 2**20
    peak = base + 4 * (params * (batch * 1.5 + 4) + n_train * (n_features + 1) * 2)
    return {"seconds": round(seconds, 3), "peak_memory_bytes": int(peak), "parameters": params,
            "basis": "the plan's steps and expected batch and the dataset's shape; no earlier run's timing"}


def utc(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_utc(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass
class Quote:
    statement: dict[str, Any]
    envelope: dict[str, Any]
    digest: str  # "sha256:<hex>" of the envelope's payload

    @property
    def predicate(self) -> dict[str, Any]:
        return dict(self.statement["predicate"])

    def summary(self) -> dict[str, Any]:
        """The flat JSON `pandacead quote --json` prints."""
        p = self.predicate
        plan = p["plan"]
        return {
            "quote": self.digest, "job_id": p["job_id"], "job_digest": p["job_digest"], "account": p["account"],
            "dataset": p["dataset"], "backend": p["backend"], "epsilon": plan["epsilon"], "delta": plan["delta"],
            "noise_multiplier": plan["noise_multiplier"], "sample_rate": plan["sample_rate"],
            "steps": plan["steps"], "accountant": plan["accountant"], "n_train": plan["n_train"],
            "composition": p["admission"]["composition"], "fits": p["admission"]["fits"],
            "reason": p["admission"]["reason"], "account_after": p["admission"]["account"],
            "dataset_after": p["admission"]["dataset"], "estimate": p["estimate"],
            "issued_at": p["issued_at"], "expires_at": p["expires_at"], "charged": False,
            "search": p.get("search"),
        }


def _search_price(plan: PrivacyPlan) -> dict[str, Any] | None:
    sp = (plan.details or {}).get("search")
    if not sp:
        return None
    return {k: sp.get(k) for k in ("distribution", "mean", "shape", "max", "constant_work", "base_epsilon",
                                   "naive_epsilon", "search_epsilon", "uncapped_epsilon")}


def plan_fields(plan: PrivacyPlan) -> dict[str, Any]:
    d = plan.to_dict()
    return {k: d.get(k) for k in PLAN_FIELDS}


def build_quote(
    job: Job, backend: str, plan: PrivacyPlan, admission: dict[str, Any], est: dict[str, Any],
    sign_statement: Any, *, valid_seconds: float = DEFAULT_VALID_SECONDS, now: datetime | None = None,
) -> Quote:
    """Sign a quote. `sign_statement(stmt)` returns its DSSE envelope (`Pipeline.sign`: the signer hooks)."""
    issued = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    predicate = {
        "job_id": job.job_id, "job_digest": job_digest(job), "account": job.user_id, "dataset": job.dataset,
        "backend": backend, "plan": plan_fields(plan), "admission": admission, "estimate": est,
        "issued_at": utc(issued), "expires_at": utc(issued + timedelta(seconds=valid_seconds)),
        # A hyperparameter search: its price next to what the same candidates would cost as separate jobs.
        "search": _search_price(plan),
    }
    stmt = statement(job.job_id, b"", predicate)
    stmt["subject"][0]["digest"] = {"sha256": job_digest(job).split(":", 1)[1]}
    stmt["predicateType"] = PREDICATE_TYPE
    env = sign_statement(stmt)
    return Quote(stmt, env, "sha256:" + hashlib.sha256(base64.b64decode(env["payload"])).hexdigest())


def quotes_dir(settings: Any) -> Path:
    return Path(settings.state) / "quotes"


def store_quote(settings: Any, quote: Quote) -> Path:
    from pandacead.artifacts import publish

    d = quotes_dir(settings)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = d / f"{quote.digest.split(':', 1)[1]}.dsse.json"
    publish(path, (json.dumps(quote.envelope, indent=2) + "\n").encode("utf-8"), mode=0o600)
    return path


def own_keys(settings: Any) -> dict[str, Any]:
    """This host's own public key: the only key a quote may be signed with."""
    pub = load_public_key(Path(settings.key_path).with_suffix(".pub"))
    return {keyid(pub): pub}


def check_admission(
    settings: Any, job: Job, backend: str, plan: PrivacyPlan, *, keys: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Refuse (JobRejected) a job whose quote is missing, not ours, tampered, expired, for another job,
    or whose plan differs from the quoted one. Returns the quote's predicate."""
    digest = job.quote or ""
    short = digest[7:23] + "…"

    def refuse(why: str, detail: str) -> JobRejected:
        return JobRejected(f"Job {job.job_id} carries quote {short} but {why}; it was not run and nothing was charged.",
                           [f"quote: {detail}"])

    hexd = digest.split(":", 1)[1] if digest.startswith("sha256:") else ""
    path = quotes_dir(settings) / f"{hexd}.dsse.json"
    try:
        env = json.loads(path.read_bytes()) if hexd else None
    except FileNotFoundError:
        env = None
    except (OSError, ValueError):
        raise refuse("its stored quote cannot be read", f"{path.name} is unreadable") from None
    if not isinstance(env, dict):
        raise refuse("this host issued no such quote", "unknown quote digest")
    try:
        payload = base64.b64decode(env.get("payload", ""), validate=True)
    except (ValueError, TypeError):
        raise refuse("the stored quote is damaged", "payload is not base64") from None
    if "sha256:" + hashlib.sha256(payload).hexdigest() != digest:
        raise refuse("the stored quote does not match its digest (tampered)", "payload digest mismatch")
    try:
        trusted = keys if keys is not None else own_keys(settings)
    except Exception as exc:  # no public key: nothing can be trusted
        raise refuse(f"this host's public key is unavailable ({exc})", "no key to verify with") from None
    stmt, problems = verify_envelope(env, trusted)
    sigs = env.get("signatures")
    good = [s for s in (sigs if isinstance(sigs, list) else []) if isinstance(s, dict) and s.get("keyid") in trusted]
    if stmt is None or not good or problems:
        raise refuse("the quote is not signed by this host", "; ".join(problems) or "no signature by this host")
    if not isinstance(stmt, dict) or stmt.get("predicateType") != PREDICATE_TYPE:
        raise refuse("the signed statement is not a quote", "wrong predicateType")
    pred = stmt.get("predicate") or {}
    current = now or datetime.now(timezone.utc)
    issued, expires = _parse_utc(pred.get("issued_at")), _parse_utc(pred.get("expires_at"))
    if issued is None or expires is None or current < issued - CLOCK_SKEW:
        raise refuse("the quote's validity period is unusable", "bad issued_at/expires_at")
    if current > expires:
        raise refuse(f"the quote expired at {pred.get('expires_at')}", f"expired {pred.get('expires_at')}")
    want = job_digest(job)
    subjects = stmt.get("subject") or []
    named = any(isinstance(s, dict) and s.get("name") == job.job_id
                and ("sha256:" + str((s.get("digest") or {}).get("sha256"))) == want for s in subjects)
    if not named or pred.get("job_digest") != want:
        raise refuse("the quote is for a different job (the job changed since it was quoted)",
                     f"job digest {want[7:23]}… is not the quoted one")
    if pred.get("account") != job.user_id or pred.get("dataset") != job.dataset:
        raise refuse("the quote names another account or dataset", "account/dataset differ")
    if pred.get("backend") != backend:
        raise refuse(f"it was quoted on backend {pred.get('backend')!r} and would now run on {backend!r}",
                     f"backend {backend!r} != quoted {pred.get('backend')!r}")
    now_plan = plan_fields(plan)
    quoted = pred.get("plan") or {}
    changed = [k for k in PLAN_FIELDS if quoted.get(k) != now_plan.get(k)]
    if changed:
        diffs = ", ".join(f"{k} {quoted.get(k)!r} → {now_plan.get(k)!r}" for k in changed)
        raise refuse(f"the plan changed since it was quoted ({diffs})", f"plan changed: {diffs}")
    return dict(pred)


def valid_seconds(settings: Any) -> float:
    """`[quote] valid_seconds` (default one hour): how long a quote may be used."""
    return float((getattr(settings, "data", {}) or {}).get("quote", {}).get("valid_seconds", DEFAULT_VALID_SECONDS))


def make(settings: Any, job: Job, *, valid_for: float | None = None, store: bool = True) -> Quote:
    """Quote `job` on this home: select its backend and plan it exactly as the daemon would.

    The plan runs through a worker process for an isolated backend (like the
    daemon's pool); nothing is reserved and no data is read.
    """
    from pandacead.app import App
    from pandacead.pipeline import Pipeline
    from pandacead.worker import WorkerPool

    app = App(settings)
    assert app.ctx is not None
    pool = WorkerPool(settings.home, size=1)
    try:
        pipe = Pipeline(settings, app.plugins, app.ctx, "quote", pool=pool, public_keys=app.public_keys,
                        noise_key=app.noise_key)
        trainer = pipe.select(job)
        plan = pipe.plan(job, trainer)
        pipe.check_budget(job, plan)
        admission = admission_preview(pipe.ledger(), job.user_id, job.dataset, plan)
        info = app.ctx.datasets.get(job.dataset)
        q = build_quote(job, trainer.name, plan, admission, estimate(job, plan, info, trainer.name), pipe.sign,
                        valid_seconds=valid_for if valid_for is not None else valid_seconds(settings))
    finally:
        pool.close()
    if store:
        store_quote(settings, q)
    return q

"""DP linear models from noisy sufficient statistics (the "nss" trainer).

Mechanism
---------
Each training row (x, y) is turned into a bounded row before anything is
summed:

* features: x is clipped to L2 norm C (C = the job's ``dp.clip``) and a constant
  intercept column equal to C is appended: x̃ = (clip_C(x), C), so ‖x̃‖ ≤ B_x = √2·C;
* targets, as a row vector t with ‖t‖ ≤ B_t:
  - regression: t = clip(y, −B_y, B_y) (one column), B_t = B_y, the *label bound*
    (earner configuration, see `label_bound`; default 1);
  - binary classification: t = +1 for class 1 and −1 for class 0 (ridge regression
    on ±1 labels: a linear classifier), B_t = 1;
  - k > 2 classes: t = the one-hot row (least squares one-vs-rest), B_t = 1.

The trainer then releases, once, the two sufficient statistics of least squares

    S = X̃ᵀX̃ (its upper triangle incl. the diagonal) + N(0, σ₁²)  per entry, mirrored
    b = X̃ᵀT                                       + N(0, σ₂²)  per entry

and everything after that is post-processing (free under DP): project S onto the
positive semi-definite cone, add a data-independent ridge λ·I and solve
(S + λI) w = b.

Sensitivity (neighbouring data sets differ by adding or removing one row, the
same notion as DP-SGD's accountants; for "replace one row" double both Δ):

* Δ₁: adding a row changes X̃ᵀX̃ by x̃x̃ᵀ. The L2 norm of its upper triangle is
  √(Σ_{i≤j} x̃ᵢ²x̃ⱼ²) ≤ ‖x̃x̃ᵀ‖_F = ‖x̃‖² ≤ B_x², so Δ₁ = B_x² = 2C².
* Δ₂: adding a row changes X̃ᵀT by x̃tᵀ, whose Frobenius norm is ‖x̃‖·‖t‖ ≤ B_x·B_t,
  so Δ₂ = B_x·B_t.

Accounting: dividing each release by its σ (a bijection) gives one Gaussian
mechanism with unit noise on (S/σ₁, b/σ₂), whose L2 sensitivity is at most
μ = √((Δ₁/σ₁)² + (Δ₂/σ₂)²). So the job is exactly a Gaussian mechanism with
μ = Δ/σ: (α, αμ²/2)-RDP for all α (μ²/2-zCDP; the two releases compose by
adding their μ²), and (ε, δ)-DP exactly when δ ≥ Φ(μ/2 − ε/μ) − e^ε Φ(−μ/2 − ε/μ)
(Balle & Wang 2018). `plan` picks the largest μ for the job's (ε, δ) — with the
exact profile by default, or with the RDP conversion when the job asks for
``dp.accountant = "rdp"`` — and splits it evenly: Δ₁/σ₁ = Δ₂/σ₂ = μ/√2.
A job that sets ``dp.noise_multiplier`` z gets μ = 1/z instead and is refused
if that costs more than its ε.

Refusals (in `plan`, before any data is read): unknown dataset or task, a model
other than "linear", δ ≥ 1/n_train, and an ε so small that the noise on every
entry of X̃ᵀX̃ would exceed the largest value the entry can take (σ₁ > n_train·B_x²,
i.e. μ < √2/n_train): the output would be noise whatever the data.

Randomness: the noise comes from the per-job secret ``ctx.options["noise_seed"]``
(HMAC of the host's noise key with the job id and seed, supplied by the
pipeline), never from the buyer's ``job.seed``: whoever could regenerate the
noise could subtract it and recover the exact statistics. Two jobs never share
noise (their job ids differ). Without a noise seed (a caller outside the
pipeline), or with ``secure_mode``, the noise comes from the OS entropy pool.

Released: the model (post-processing of the two noisy statistics) and, for data
the earner declared public only, held-out metrics. For private data no metric,
no true row count and no plain digest leaves the host (docs/privacy.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from typing import Any

import numpy as np

from pandacead.errors import JobFailed, JobRejected
from pandacead.jobs import Job
from pandacead.trainers import DatasetInfo, PrivacyPlan, Progress, TrainerContext, TrainResult
from pandacead_nss import accounting

MECHANISM = "gaussian-sufficient-statistics"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("pandacead-nss")
    except Exception:  # running from a source tree
        return "0+unknown"


def _options(ctx: TrainerContext) -> dict[str, Any]:
    opts = ctx.options.get("nss", {}) if isinstance(ctx.options, dict) else {}
    return opts if isinstance(opts, dict) else {}


def _positive(value: Any, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise JobRejected(f"The nss trainer's {what} {value!r} is not a finite positive number.", [f"{what}: {value!r}"])
    return v


def label_bound(info: DatasetInfo, ctx: TrainerContext) -> float:
    """B_y for regression: options.nss.label_bound, else the dataset's source.label_bound, else 1."""
    opts = _options(ctx)
    if "label_bound" in opts:
        return _positive(opts["label_bound"], "label_bound")
    if isinstance(info.source, dict) and "label_bound" in info.source:
        return _positive(info.source["label_bound"], "label_bound")
    return 1.0


def clip_rows(X: np.ndarray, bound: float) -> np.ndarray:
    """Scale each row down to L2 norm ≤ `bound` (non-finite entries become 0 first)."""
    X = np.nan_to_num(np.asarray(X, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    norms = np.linalg.norm(X, axis=1)
    # A hair below the bound, so rounding in the division can never push a row over it.
    scale = (bound * (1.0 - 1e-12)) / np.maximum(norms, bound)
    return X * scale[:, None]


def augment(X: np.ndarray, clip: float) -> np.ndarray:
    """x̃ = (clip_C(x), C): ‖x̃‖ ≤ √2·C."""
    Xc = clip_rows(X, clip)
    return np.hstack([Xc, np.full((Xc.shape[0], 1), clip)])


class NSSTrainer:
    """DP linear/ridge regression and linear classification by noisy sufficient statistics."""

    name = "nss"
    isolated = False  # numpy only: runs in the daemon's process
    private = True

    # ------------------------------------------------------------------ plan
    def plan(self, job: Job, ctx: TrainerContext) -> PrivacyPlan:
        info = ctx.dataset(job)  # JobRejected for an unknown dataset or a task mismatch
        problems: list[str] = []
        if job.model.type != "linear" or job.model.hidden:
            problems.append(f"model.type: the nss trainer trains linear models only, not {job.model.type!r}")
        if job.task not in ("classification", "regression"):
            problems.append(f"task: {job.task!r} is not supported")
        # The public count (true n for public data, the declared rows otherwise): the true
        # n of private data is private under add/remove neighbours and shapes no decision.
        n = int(info.require_public_n_train())
        d = int(info.n_features)
        if n < 1 or d < 1:
            problems.append(f"dataset: {info.name!r} has {n} training rows and {d} features")
        k = 1
        if job.task == "classification":
            if not info.n_classes or info.n_classes < 2:
                problems.append(f"dataset: {info.name!r} declares {info.n_classes!r} classes")
            else:
                k = 1 if info.n_classes == 2 else int(info.n_classes)
        if problems:
            raise JobRejected(f"The nss trainer cannot run this job: {problems[0]}.", problems)

        eps, delta, clip = job.dp.epsilon, job.dp.delta, job.dp.clip
        for value, what in ((eps, "dp.epsilon"), (clip, "dp.clip")):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise JobRejected(f"{what} {value!r} is not a finite positive number.", [f"{what}: {value!r}"])
        if not (isinstance(delta, (int, float)) and math.isfinite(delta) and 0 < delta < 1):
            raise JobRejected(f"dp.delta {delta!r} is not in (0, 1).", [f"dp.delta: {delta!r}"])
        if delta >= 1.0 / n:
            raise JobRejected(
                f"δ={delta:g} must be below 1/n = {1.0 / n:.3g} for dataset {info.name!r} ({n} training rows).",
                [f"dp.delta: {delta:g} >= 1/n_train"],
            )

        bx = math.sqrt(2.0) * clip
        bt = label_bound(info, ctx) if job.task == "regression" else 1.0
        sens_xtx = bx * bx
        sens_xty = bx * bt

        # The job's dp.accountant, else the host's default: "rdp" uses the RDP conversion; anything
        # else ("prv", ...) gets the exact analytic profile, which no accountant can beat.
        accountant = "rdp" if (job.dp.accountant or ctx.accountant) == "rdp" else "analytic-gaussian"
        if job.dp.noise_multiplier is not None:
            z = _positive(job.dp.noise_multiplier, "dp.noise_multiplier")
            mu = 1.0 / z
            if accountant == "rdp":
                planned = accounting.rdp_to_epsilon(accounting.rdp_curve(mu), delta)
            else:
                planned = accounting.gaussian_epsilon(mu, delta)
            if not planned <= eps:
                raise JobRejected(
                    f"With noise multiplier {z:g} this job costs ε={planned:.4g} at δ={delta:g}, more than the requested ε={eps:g}.",
                    [f"dp.noise_multiplier: {z:g} gives ε={planned:.6g} > dp.epsilon={eps:g}"],
                )
        else:
            mu = accounting.calibrate_mu_rdp(eps, delta) if accountant == "rdp" else accounting.calibrate_mu(eps, delta)
            if mu <= 0:
                raise JobRejected(
                    f"No amount of Gaussian noise certifies ε={eps:g} at δ={delta:g} with the {accountant} accountant.",
                    [f"dp.epsilon: {eps:g} is below what the {accountant} accountant can certify"],
                )
            planned = (
                accounting.rdp_to_epsilon(accounting.rdp_curve(mu), delta)
                if accountant == "rdp"
                else accounting.gaussian_epsilon(mu, delta)
            )
            if not planned <= eps:  # cannot happen: μ is calibrated with a 1e-9 margin
                raise JobRejected(
                    f"The {accountant} accountant cannot certify ε={eps:g} at δ={delta:g}.",
                    [f"dp.epsilon: calibration gave ε={planned!r}"],
                )
        if mu < math.sqrt(2.0) / n:
            raise JobRejected(
                f"ε={eps:g} is too small for {n} training rows: the noise would exceed every possible value of the statistics.",
                [f"dp.epsilon: needs μ ≥ √2/n = {math.sqrt(2.0) / n:.3g}, the request allows μ = {mu:.3g}"],
            )
        if not (math.isfinite(planned) and planned > 0):
            raise JobRejected("The nss trainer's privacy cost cannot be computed.", [f"epsilon: {planned!r}"])

        # Even split of μ² between the two releases.
        mu_each = mu / math.sqrt(2.0)
        sigma_xtx = sens_xtx / mu_each
        sigma_xty = sens_xty / mu_each
        dims = d + 1
        try:
            ridge_factor = float(_options(ctx).get("ridge_factor", 1.0))
        except (TypeError, ValueError):
            ridge_factor = math.nan
        if not (math.isfinite(ridge_factor) and ridge_factor >= 0):
            raise JobRejected(f"The nss ridge_factor {ridge_factor!r} is not a finite number ≥ 0.", ["options.nss.ridge_factor"])
        # ≈ the operator norm of the symmetric noise matrix (2σ√d): data-independent.
        ridge = ridge_factor * 2.0 * sigma_xtx * math.sqrt(dims)
        details = {
            "mechanism": MECHANISM,
            "neighbouring": "add/remove one row",
            "mu": mu,
            "feature_clip": clip,
            "feature_bound": bx,
            "label_bound": bt,
            "intercept_constant": clip,
            "outputs": k,
            "sensitivity_xtx": sens_xtx,
            "sensitivity_xty": sens_xty,
            "sigma_xtx": sigma_xtx,
            "sigma_xty": sigma_xty,
            "ridge": ridge,
            "releases": 2,
        }
        return PrivacyPlan(
            epsilon=float(planned),
            delta=float(delta),
            noise_multiplier=1.0 / mu,
            sample_rate=1.0,
            steps=1,
            accountant=accountant,
            n_train=n,
            rdp=accounting.rdp_curve(mu),
            details=details,
        )

    # ----------------------------------------------------------------- train
    def _rng(self, job: Job, ctx: TrainerContext) -> np.random.Generator:
        """The noise generator: from the secret per-job seed, never from `job.seed`."""
        seed = ctx.options.get("noise_seed")
        if ctx.secure_mode or not isinstance(seed, int) or isinstance(seed, bool):
            return np.random.default_rng(secrets.randbits(128))
        digest = hashlib.sha256(f"pandacead-nss\0{seed}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest, "big"))

    def train(self, job: Job, plan: PrivacyPlan, ctx: TrainerContext, progress: Progress) -> TrainResult:
        from safetensors import __version__ as st_version

        from pandacead import datasets

        # Re-derive the noise from the job, never from a plan that may have been edited in transit.
        fresh = self.plan(job, ctx)
        if fresh.epsilon > plan.epsilon or fresh.delta > plan.delta:
            raise JobFailed(
                "The nss trainer's privacy cost changed since the job was planned.",
                [f"planned ε={plan.epsilon:.6g} δ={plan.delta:g}, now ε={fresh.epsilon:.6g} δ={fresh.delta:g}"],
            )
        det = fresh.details
        info = ctx.dataset(job)
        progress({"stage": "data_loaded"})  # from here on the job is charged whatever happens
        X, y, Xt, yt = datasets.load(info, ctx.options.get("home", "."))
        X = np.asarray(X)
        Xt = np.asarray(Xt)
        if X.ndim != 2 or X.shape[1] != info.n_features or len(X) < 1:
            raise JobFailed(
                f"Dataset {info.name!r} loaded with shape {X.shape}, but it declares {info.n_features} features.",
                [f"dataset: shape {X.shape}"],
            )
        clip = float(det["feature_clip"])
        k = int(det["outputs"])
        T = self._targets(job, np.asarray(y), k, float(det["label_bound"]))
        A = augment(X, clip)
        dims = A.shape[1]

        rng = self._rng(job, ctx)
        xtx = A.T @ A
        xty = A.T @ T
        upper = np.triu(rng.standard_normal((dims, dims)))
        noise_xtx = upper + np.triu(upper, 1).T
        noise_xty = rng.standard_normal((dims, k))
        s = xtx + float(det["sigma_xtx"]) * noise_xtx
        b = xty + float(det["sigma_xty"]) * noise_xty
        # ---- everything below is post-processing of (s, b) ----
        vals, vecs = np.linalg.eigh((s + s.T) / 2.0)
        s_psd = (vecs * np.clip(vals, 0.0, None)) @ vecs.T
        ridge = float(det["ridge"])
        W = np.linalg.solve(s_psd + (ridge + 1e-9) * np.eye(dims), b)  # (dims, k)
        weight = W[:-1].T.copy()  # (k, d)
        bias = W[-1] * clip  # (k,)

        if info.public:
            metrics, accuracy, loss = self._evaluate(job, weight, bias, clip, Xt, np.asarray(yt), k, float(det["label_bound"]))
        else:  # exact held-out metrics of private data are not DP: not computed, not released
            metrics, accuracy, loss = {}, None, None
        progress({"epoch": 1, "epochs": 1, "loss": loss, "epsilon": fresh.epsilon, "epsilon_exact": True,
                  "epsilon_kind": "exact"})

        arch = {
            "type": "linear",
            "in_features": int(X.shape[1]),
            "out_features": k,
            "task": job.task,
            "n_classes": int(info.n_classes) if job.task == "classification" and info.n_classes else None,
            "input_row_clip": clip,
            "decision": self._decision(job, k),
        }
        model = save_model(
            {"weight": weight.astype(np.float32), "bias": bias.astype(np.float32)},
            {
                "architecture": json.dumps(arch, sort_keys=True),
                "backend": self.name,
                "mechanism": MECHANISM,
                "epsilon": repr(fresh.epsilon),
                "delta": repr(fresh.delta),
                "format": "pandacead-linear-v1",
            },
        )
        params = {
            "architecture": arch,
            "mechanism": MECHANISM,
            "accountant": fresh.accountant,
            "noise_multiplier": fresh.noise_multiplier,
            **{key: det[key] for key in ("mu", "sigma_xtx", "sigma_xty", "sensitivity_xtx",
                                         "sensitivity_xty", "feature_clip", "label_bound", "ridge", "neighbouring")},
            "secure_mode": bool(ctx.secure_mode),
        }
        return TrainResult(
            model=model,
            epsilon=fresh.epsilon,
            delta=fresh.delta,
            n=info.public_n_train,
            accuracy=accuracy,
            metrics=metrics,
            training_params=params,
            provenance={
                "dataset_version": info.commitment,
                "versions": {"numpy": np.__version__, "safetensors": st_version, "pandacead-nss": _version()},
            },
        )

    # --------------------------------------------------------------- helpers
    @staticmethod
    def _decision(job: Job, k: int) -> str:
        if job.task == "regression":
            return "identity"
        return "class 1 if score > 0 else class 0" if k == 1 else "argmax"

    @staticmethod
    def _targets(job: Job, y: np.ndarray, k: int, bound: float) -> np.ndarray:
        if job.task == "regression":
            yv = np.nan_to_num(y.astype(np.float64).reshape(-1), nan=0.0, posinf=bound, neginf=-bound)
            return np.clip(yv, -bound, bound)[:, None]
        labels = y.astype(np.int64).reshape(-1)
        if k == 1:
            return np.where(labels == 1, 1.0, -1.0)[:, None]
        onehot = np.zeros((len(labels), k))
        valid = (labels >= 0) & (labels < k)
        onehot[np.nonzero(valid)[0], labels[valid]] = 1.0  # an out-of-range label contributes a zero row
        return onehot

    @staticmethod
    def _evaluate(
        job: Job, weight: np.ndarray, bias: np.ndarray, clip: float, Xt: np.ndarray, yt: np.ndarray, k: int, bound: float
    ) -> tuple[dict[str, Any], float | None, float | None]:
        """Held-out metrics (the test rows are the earner's too: as for every trainer, these are not DP)."""
        if len(Xt) == 0:
            return {"held_out_n": 0}, None, None
        scores = clip_rows(Xt, clip) @ weight.T + bias
        if job.task == "regression":
            yv = yt.astype(np.float64).reshape(-1)
            mse = float(np.mean((scores[:, 0] - yv) ** 2))
            var = float(np.var(yv))
            r2 = 1.0 - mse / var if var > 0 else 0.0
            return {"mse": mse, "r2": r2, "held_out_n": int(len(yv))}, None, mse
        labels = yt.astype(np.int64).reshape(-1)
        pred = (scores[:, 0] > 0).astype(np.int64) if k == 1 else scores.argmax(axis=1)
        accuracy = float(np.mean(pred == labels))
        targets = NSSTrainer._targets(job, labels, k, bound)
        mse = float(np.mean((scores - targets) ** 2))
        return {"accuracy": accuracy, "mse": mse, "held_out_n": int(len(labels))}, accuracy, mse


def save_model(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """safetensors bytes that are identical for identical input.

    `safetensors.numpy.save` writes `__metadata__` in hash-map order, which
    changes from call to call once there is more than one key; the header is
    rewritten here with sorted metadata keys (same format, still loadable).
    """
    from safetensors.numpy import load, save

    raw = save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)
    (n,) = np.frombuffer(raw[:8], dtype="<u8")
    header = json.loads(raw[8 : 8 + int(n)])
    meta = header.pop("__metadata__", None)
    ordered: dict[str, Any] = {}
    if meta is not None:
        ordered["__metadata__"] = dict(sorted(meta.items()))
    ordered.update(sorted(header.items()))
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    out = len(text).to_bytes(8, "little") + text + raw[8 + int(n) :]
    load(out)  # still valid safetensors (raises otherwise)
    return out

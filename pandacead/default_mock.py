"""The mock trainer: no torch, deterministic by seed, charges the requested (ε, δ) like a real job.

It exercises the whole daemon path (budget, artifact, signing) and plays the
role httpx's MockTransport plays in tests. Its model is a plain numpy
logistic/linear regression: useful for plumbing, NOT differentially private
(`private = False`), so it only ever runs on data the earner declared public
(the built-in `synthetic`): the pipeline refuses it on private data before
planning, and its own `plan` refuses again.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

from pandacead.errors import JobRejected
from pandacead.hookspecs import hookimpl
from pandacead.jobs import Job
from pandacead.trainers import (
    DATA_LOADED,
    PrivacyPlan,
    Progress,
    TrainerContext,
    TrainResult,
    may_train_on,
)


class MockTrainer:
    name = "mock"
    isolated = False
    private = False

    def plan(self, job: Job, ctx: TrainerContext) -> PrivacyPlan:
        info = ctx.dataset(job)
        may_train_on(self, info, job.job_id)
        n = info.n_train
        if job.dp.delta >= 1.0 / n:
            raise JobRejected(
                f"δ={job.dp.delta:g} must be below 1/n = {1.0 / n:.3g} for dataset {job.dataset!r} ({n} training rows).",
                [f"dp.delta: {job.dp.delta:g} >= 1/n"],
            )
        return PrivacyPlan(
            epsilon=job.dp.epsilon,
            delta=job.dp.delta,
            noise_multiplier=job.dp.noise_multiplier,
            sample_rate=min(1.0, job.batch_size / n),
            steps=None,
            accountant="declared",
            n_train=n,
        )

    def train(self, job: Job, plan: PrivacyPlan, ctx: TrainerContext, progress: Progress) -> TrainResult:
        import numpy as np
        from safetensors.numpy import save

        from pandacead import datasets

        info = ctx.dataset(job)
        may_train_on(self, info, job.job_id)
        base = ctx.options.get("home", ".")
        progress(dict(DATA_LOADED))
        X, y, Xt, yt = datasets.load(info, base)
        # float64 once: `X @ W` with float32 X and float64 W cast X on every product (the same values)
        X = X.astype(np.float64)
        rng = np.random.default_rng(job.seed)
        d = X.shape[1]
        classes = int(info.n_classes or 2) if job.task == "classification" else 1
        out = 1 if classes <= 2 else classes
        W = rng.normal(0, 0.01, size=(d, out)).astype(np.float64)
        b = np.zeros(out)
        lr = min(job.learning_rate * 10, 1.0)
        loss = 0.0
        for epoch in range(1, min(job.epochs, 20) + 1):
            z = X @ W + b
            if job.task == "regression":
                err = z[:, 0] - y
                loss = float(np.mean(err**2))
                gW = X.T @ err[:, None] / len(X)
                gb = np.array([err.mean()])
            elif out == 1:
                p = 1 / (1 + np.exp(-z[:, 0]))
                loss = float(-np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12)))
                gW = X.T @ (p - y)[:, None] / len(X)
                gb = np.array([(p - y).mean()])
            else:
                z = z - z.max(axis=1, keepdims=True)
                p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
                onehot = np.eye(out)[y.astype(int)]
                loss = float(-np.mean(np.log((p * onehot).sum(axis=1) + 1e-12)))
                gW = X.T @ (p - onehot) / len(X)
                gb = (p - onehot).mean(axis=0)
            W -= lr * gW
            b -= lr * gb
            progress({"epoch": epoch, "epochs": job.epochs, "loss": loss, "epsilon": plan.epsilon * epoch / job.epochs})
            if ctx.options.get("mock_delay"):
                time.sleep(float(ctx.options["mock_delay"]))
        zt = Xt @ W + b
        metrics: dict[str, Any]
        if job.task == "regression":
            mse = float(np.mean((zt[:, 0] - yt) ** 2))
            var = float(np.var(yt)) or 1.0
            metrics, accuracy = {"mse": mse, "r2": 1 - mse / var}, None
        else:
            pred = (zt[:, 0] > 0).astype(int) if out == 1 else zt.argmax(axis=1)
            accuracy = float((pred == yt).mean())
            metrics = {"accuracy": accuracy}
        arch = {"type": "linear", "in_features": d, "out_features": out, "task": job.task, "n_classes": classes}
        model = save(
            {"weight": W.T.astype(np.float32).copy(), "bias": b.astype(np.float32)},
            # One metadata key: safetensors writes several in hash-map order,
            # which would make the bytes (and the artifact hash) vary run to run.
            metadata={"architecture": json.dumps({**arch, "backend": "mock"}, sort_keys=True)},
        )
        buf = io.BytesIO(model)
        return TrainResult(
            model=buf.getvalue(),
            epsilon=plan.epsilon,
            delta=plan.delta,
            n=int(len(X)),
            accuracy=accuracy,
            metrics=metrics,
            training_params={"architecture": arch, "mechanism": "mock (not private)"},
            provenance={"dataset_version": info.commitment, "versions": {"numpy": np.__version__}},
        )


@hookimpl
def pandacead_register_trainers(register: Any) -> None:
    register(MockTrainer())

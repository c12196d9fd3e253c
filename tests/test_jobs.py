"""Job parsing and validation: every violation named, nothing hostile accepted."""

from __future__ import annotations

import json

import pytest

from pandacead.errors import JobRejected
from pandacead.jobs import Job, parse_job


def reject(data: bytes | str) -> JobRejected:
    with pytest.raises(JobRejected) as info:
        parse_job(data.encode() if isinstance(data, str) else data)
    return info.value


def test_seed_minimal_job_gets_seed_defaults():
    job = parse_job(b'{"job_id": "test_123", "dp": {"epsilon": 1.0}}', default_user="user_456")
    assert job.user_id == "user_456"
    assert job.dataset == "synthetic" and job.task == "classification"
    assert job.dp.delta == 1e-5 and job.dp.clip == 1.0 and job.dp.noise_multiplier is None
    assert (job.epochs, job.batch_size, job.learning_rate, job.seed) == (10, 32, 0.01, 42)


def test_seed_full_job_is_accepted():
    seed_job = {
        "job_id": "unique_job_identifier", "dataset": "synthetic", "task": "classification",
        "dp": {"enabled": True, "epsilon": 1.0, "delta": 1e-5, "clip": 1.0, "noise_multiplier": 0.5},
        "epochs": 10, "batch_size": 32, "learning_rate": 0.01, "seed": 42, "user_id": "u",
    }
    job = parse_job(json.dumps(seed_job).encode())
    assert job.dp.noise_multiplier == 0.5
    assert Job.from_dict(job.to_dict()) == job


def test_every_violation_is_reported_with_its_field():
    exc = reject(json.dumps({
        "job_id": "../etc/passwd", "user_id": "", "dp": {"epsilon": -1, "delta": 2, "clip": 0},
        "epochs": 0, "batch_size": 10**9, "learning_rate": "fast", "seed": -1, "surprise": 1,
    }))
    fields = {d.split(":")[0] for d in exc.details}
    assert {"job_id", "user_id", "dp.epsilon", "dp.delta", "dp.clip", "epochs", "batch_size",
            "learning_rate", "seed", "(job)"} <= fields


@pytest.mark.parametrize("text, needle", [
    ('{"job_id": "a", "user_id": "u", "dp": {"epsilon": NaN}}', "NaN"),
    ('{"job_id": "a", "user_id": "u", "dp": {"epsilon": Infinity}}', "Infinity"),
    ('{"job_id": "a", "user_id": "u", "dp": {"epsilon": 1e999}}', "not finite"),
    ('{"job_id": "a", "job_id": "b", "user_id": "u"}', "duplicate"),
    ('{"job_id": "a", "user_id": "u"', "not valid JSON"),
    ("[1, 2, 3]", "JSON object"),
    ('"just a string"', "JSON object"),
    ('{"job_id": "a", "user_id": "u", "dp": {"enabled": false}}', "cannot be disabled"),
    ('{"job_id": "a", "user_id": "u", "seed": 18446744073709551616}', "seed"),
    ('{"job_id": "a", "user_id": "u", "epochs": true}', "epochs"),
    ('{"job_id": "a", "user_id": "u", "dp": {"epsilon": 0}}', "dp.epsilon"),
    ('{"job_id": "a", "user_id": "u", "dp": {"delta": 0}}', "dp.delta"),
    ('{"job_id": "a", "user_id": "u", "model": {"type": "mlp", "hidden": [100000]}}', "model.hidden"),
    ('{"job_id": "a"}', "user_id"),
])
def test_hostile_or_wrong_values_are_rejected(text, needle):
    exc = reject(text)
    assert needle in exc.message + " ".join(exc.details)


def test_deep_nesting_and_bad_encoding_are_rejected_without_recursion():
    assert "nests deeper" in reject("[" * 100000 + "]" * 100000).message
    assert "UTF-8" in reject(b'{"job_id": "\xff\xfe"}').message


def test_huge_integer_is_rejected_cleanly():
    exc = reject('{"job_id": "a", "user_id": "u", "epochs": ' + "9" * 5000 + "}")
    assert exc.message

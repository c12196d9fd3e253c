"""The book-keeping DP-SGD fast path and direct-indexing Poisson batches: parity with Opacus, secret noise."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from opacus import GradSampleModule  # noqa: E402
from opacus.optimizers import DPOptimizer  # noqa: E402
from opacus.utils.uniform_sampler import UniformWithReplacementSampler  # noqa: E402
from pandacead_opacus import fastpath, models, sampling  # noqa: E402
from pandacead_opacus.training import _criterion, _shape, train_arrays  # noqa: E402

from pandacead import datasets  # noqa: E402
from pandacead.jobs import DPParams, Job, ModelSpec  # noqa: E402
from pandacead.trainers import TrainerContext  # noqa: E402

pytestmark = [pytest.mark.opacus, pytest.mark.filterwarnings("ignore:Full backward hook is firing")]
torch.set_num_threads(1)

#: Every architecture the opacus backend builds: linear and MLPs up to 4 hidden layers, all heads.
ARCHS = [
    ("linear", [], "classification", 2),
    ("linear", [], "classification", 4),
    ("linear", [], "regression", None),
    ("mlp", [8], "classification", 2),
    ("mlp", [16, 16], "classification", 3),
    ("mlp", [8, 8, 8, 8], "classification", 2),
    ("mlp", [12], "regression", None),
]
CLIP = 0.5


def _model_and_batch(kind: str, hidden: list[int], task: str, k: int | None, seed: int = 0) -> tuple[Any, dict, Any, Any]:
    arch = models.architecture(model_type=kind, hidden=hidden, n_features=6, task=task, n_classes=k)
    torch.manual_seed(seed)
    model = models.build_model(arch)
    if not hidden:  # linear models start at zero: move them so gradients differ per sample
        with torch.no_grad():
            for p in model.parameters():
                p.normal_()
    g = torch.Generator().manual_seed(seed + 1)
    x = 3 * torch.randn(37, 6, generator=g)  # large inputs: most samples are clipped
    if arch["head"] == "softmax_logits":
        y = torch.randint(0, k, (37,), generator=g)
    elif arch["head"] == "binary_logit":
        y = torch.randint(0, 2, (37,), generator=g).float()
    else:
        y = torch.randn(37, generator=g)
    return model, arch, x, y


def _fast_sums(model: Any, arch: dict, x: Any, y: Any) -> list[Any]:
    fp = fastpath.BookkeepingDPSGD(model, arch["head"], max_grad_norm=CLIP, noise_multiplier=0.0,
                                   expected_batch_size=32, learning_rate=0.1, noise_generator=None)
    return fp.clipped_sum(x, y)[0]


def _opacus_sums(model: Any, arch: dict, x: Any, y: Any, mode: str) -> list[Any]:
    """Opacus's own clipping: GradSampleModule per-sample gradients, DPOptimizer.clip_and_accumulate."""
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean", force_functorch=(mode == "functorch"))
    opt = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=0.1), noise_multiplier=0.0, max_grad_norm=CLIP,
                      expected_batch_size=32)
    loss = _criterion(arch["head"])(_shape(arch["head"], gsm(x)), y)
    loss.backward()
    opt.clip_and_accumulate()
    sums = [p.summed_grad.detach().clone() for p in gsm.parameters()]
    gsm._close()
    return sums


def _naive_sums(model: Any, arch: dict, x: Any, y: Any) -> list[Any]:
    """One backward per sample, flat clipping by hand."""
    crit = _criterion(arch["head"])
    total = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(len(x)):
        model.zero_grad()
        crit(_shape(arch["head"], model(x[i : i + 1])), y[i : i + 1]).backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        norm = torch.sqrt(sum((g * g).sum() for g in grads))
        f = min(1.0, CLIP / (float(norm) + fastpath.CLIP_EPS))
        for t, g in zip(total, grads):
            t.add_(g, alpha=f)
    return total


@pytest.mark.parametrize("kind,hidden,task,k", ARCHS)
def test_clipped_sums_equal_opacus_and_a_per_sample_loop(kind: str, hidden: list[int], task: str, k: int | None) -> None:
    model, arch, x, y = _model_and_batch(kind, hidden, task, k)
    assert fastpath.applies(model)
    fast = _fast_sums(model, arch, x, y)
    naive = _naive_sums(model, arch, x, y)
    for mode in ("hooks", "functorch"):
        ref = _opacus_sums(model, arch, x, y, mode)
        assert len(ref) == len(fast)
        for a, b in zip(fast, ref):
            torch.testing.assert_close(a, b, atol=5e-6, rtol=1e-5)
    for a, b in zip(fast, naive):
        torch.testing.assert_close(a, b, atol=5e-6, rtol=1e-5)


def test_fast_path_applies_only_to_linear_relu_networks() -> None:
    from torch import nn

    assert fastpath.applies(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)))
    assert not fastpath.applies(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)))
    assert not fastpath.applies(nn.Sequential(nn.Conv1d(1, 2, 3)))
    assert not fastpath.applies(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)))
    assert not fastpath.applies(nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 1)))
    frozen = nn.Sequential(nn.Linear(3, 4))
    frozen[0].bias.requires_grad_(False)
    assert not fastpath.applies(frozen)


def test_noise_is_sigma_times_clip_from_the_secret_generator() -> None:
    """Recover the noise a step added from the weight change and check it is the generator's draw × σC."""
    model, arch, x, y = _model_and_batch("mlp", [64, 64], "classification", 2)
    sigma, lr, ebs = 1.7, 0.3, 32
    before = [p.detach().clone() for p in model.parameters()]
    sums = _fast_sums(model, arch, x, y)
    fp = fastpath.BookkeepingDPSGD(model, arch["head"], max_grad_norm=CLIP, noise_multiplier=sigma,
                                   expected_batch_size=ebs, learning_rate=lr,
                                   noise_generator=torch.Generator().manual_seed(1234))
    fp.step(x, y)
    noise = torch.cat([((b - p.detach()) * ebs / lr - s).reshape(-1)
                       for b, p, s in zip(before, model.parameters(), sums)])
    expected = torch.empty(noise.numel()).normal_(0.0, sigma * CLIP, generator=torch.Generator().manual_seed(1234))
    torch.testing.assert_close(noise, expected, atol=2e-3, rtol=1e-3)
    assert abs(float(noise.std()) / (sigma * CLIP) - 1) < 0.05


def test_an_empty_poisson_batch_still_adds_noise() -> None:
    model, arch, x, y = _model_and_batch("linear", [], "classification", 2)
    before = [p.detach().clone() for p in model.parameters()]
    fp = fastpath.BookkeepingDPSGD(model, arch["head"], max_grad_norm=CLIP, noise_multiplier=1.0,
                                   expected_batch_size=8, learning_rate=0.1,
                                   noise_generator=torch.Generator().manual_seed(5))
    assert float(fp.step(x[:0], y[:0])) == 0.0
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_poisson_batches_are_opacus_sampler_batches() -> None:
    n, rate, steps = 1000, 1 / 31, 31
    ours = [idx.tolist() for idx in sampling.poisson_batches(n, rate, steps, torch.Generator().manual_seed(99))]
    theirs = list(UniformWithReplacementSampler(num_samples=n, sample_rate=rate,
                                                generator=torch.Generator().manual_seed(99)))
    assert ours == theirs
    assert len(ours) == steps and all(ours)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def synthetic_run() -> tuple[dict, dict, dict]:
    from pandacead_opacus.trainer import OpacusTrainer

    info = datasets.describe("synthetic", datasets.builtin_specs()["synthetic"], ".")
    arrays = dict(zip(("X_train", "y_train", "X_test", "y_test"), datasets.load(info, ".")))
    job = Job(job_id="fp", user_id="alice", epochs=2, batch_size=64, learning_rate=0.1,
              dp=DPParams(epsilon=3.0, accountant="rdp"), model=ModelSpec(type="linear"))
    ctx = TrainerContext(datasets={"synthetic": info}, state_dir=".", options={"home": "."})
    plan = OpacusTrainer().plan(job, ctx).to_dict()
    return job.to_dict(), plan, arrays


def test_fast_path_run_spends_exactly_what_opacus_spends(synthetic_run: Any) -> None:
    job, plan, arrays = synthetic_run
    fast = train_arrays(job, plan, arrays, 1, noise_seed=11, fast_path="auto")
    slow = train_arrays(job, plan, arrays, 1, noise_seed=11, fast_path="off")
    assert fast["training_params"]["fast_path"] == "bookkeeping"
    assert slow["training_params"]["fast_path"] is None
    assert fast["epsilon"] == slow["epsilon"] <= plan["epsilon"]
    assert fast["training_params"]["steps"] == slow["training_params"]["steps"] == plan["steps"]
    # Same mechanism, same Poisson batches: both learn the task alike (only the noise draws differ).
    assert fast["metrics"]["accuracy"] > 0.8 and slow["metrics"]["accuracy"] > 0.8
    assert abs(fast["metrics"]["accuracy"] - slow["metrics"]["accuracy"]) <= 0.05


def test_fast_path_noise_comes_from_the_secret_seed_not_the_buyer_seed(synthetic_run: Any) -> None:
    job, plan, arrays = synthetic_run
    a = train_arrays(job, plan, arrays, 1, noise_seed=11, fast_path="auto")
    b = train_arrays(job, plan, arrays, 1, noise_seed=11, fast_path="auto")
    c = train_arrays(job, plan, arrays, 1, noise_seed=12, fast_path="auto")
    assert a["model"] == b["model"]  # reproducible from the secret
    assert a["model"] != c["model"]  # same job.seed, other secret: other noise and batches
    # The attack: a buyer replays training with its own seed and without the secret; it cannot get the model.
    guesses = {train_arrays(job, plan, arrays, 1, noise_seed=int(job["seed"]), fast_path="auto")["model"],
               train_arrays(job, plan, arrays, 1, noise_seed=None, fast_path="auto")["model"]}
    assert a["model"] not in guesses


def test_a_bad_fast_path_setting_is_refused(synthetic_run: Any) -> None:
    from pandacead.errors import JobFailed

    job, plan, arrays = synthetic_run
    with pytest.raises(JobFailed, match="fast-path"):
        train_arrays(job, plan, arrays, 1, fast_path="always")



# ----------------------------------------------------------------------------- accounting memo


def test_accounting_memo_returns_what_the_accountant_computes() -> None:
    from opacus.accountants import PRVAccountant, RDPAccountant
    from pandacead_opacus import privacy

    privacy.cache_clear()
    history = [(1.1, 0.02, 500)]
    for name, acc, kw in (("rdp", RDPAccountant(), {"alphas": privacy.EPS_ALPHAS}), ("prv", PRVAccountant(), {"eps_error": 0.01})):
        acc.history = list(history)
        direct = float(acc.get_epsilon(1e-5, **kw))
        assert privacy.epsilon(name, history, 1e-5) == direct
        assert privacy.epsilon(name, history, 1e-5) == direct  # the hit
        assert privacy.epsilon(name, history, 2e-5) != direct  # every input is in the key
    first = privacy.calibrate("prv", 2.0, 1e-5, 0.02, 500)
    again = privacy.calibrate("prv", 2.0, 1e-5, 0.02, 500)
    assert not first["cached"] and again["cached"]
    assert (again["noise_multiplier"], again["epsilon"]) == (first["noise_multiplier"], first["epsilon"])
    again["noise_multiplier"] = 0.0  # a caller mutating its copy does not poison the memo
    assert privacy.calibrate("prv", 2.0, 1e-5, 0.02, 500)["noise_multiplier"] == first["noise_multiplier"]
    curve = privacy.rdp_curve(1.1, 0.02, 500)
    curve["2.0"] = -1.0
    assert privacy.rdp_curve(1.1, 0.02, 500)["2.0"] > 0
    assert privacy.RdpProgress(1.1, 0.02, 1e-5).epsilon(500) == pytest.approx(privacy.epsilon("rdp", history, 1e-5))
    assert privacy._epsilon_cached.cache_info().maxsize == privacy.ACCOUNTING_CACHE_SIZE

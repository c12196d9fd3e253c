"""Private hyperparameter search vs a single default run vs the best of k separately charged jobs.

    .venv/bin/python bench/bench_tuning.py [--seeds 3] [--eps 1,3] [--mean 10] [--only breast_cancer]

At the same total ε, on offline datasets registered the way an earner would
(raw rows, declared public bounds and row count; bench/utility.py's helpers),
measured on rows the host never saw:

* **default**: one opacus job at ε, with the family defaults;
* **search**: one job with a `search` block (logarithmic number of candidates,
  the given mean), priced as a whole at ε (Papernot & Steinke), with the
  family defaults and the search's default space around them (`--space
  default`) or a named space below;
* **best of k**: k = mean separately charged jobs at ε/k each over the same
  space — what a buyer without the search pays the same total for (basic
  composition) — the best picked by accuracy on the evaluation rows
  themselves: an optimistic bound, no buyer could choose that well;
* **the search's candidates** (bench-only instrument, nothing of it is in the
  product): every candidate the search trained is also scored on the unseen
  rows, giving their mean and the **oracle pick** — the best of the K
  candidates by the unseen rows themselves, an upper bound of what *any*
  selection rule over those candidates (any score, any score noise) could
  release;
* **a buyer's guess** (the schema's generic epochs 10, batch 32, learning
  rate 0.01 set in the job, as a buyer who knows nothing would) against a
  search over the `wide` space: where tuning has something to find.

Appends its table to docs/utility.md (between markers, replaced on rerun).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import utility as U  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs" / "utility.md"
BEGIN, END = "<!-- bench_tuning: begin -->", "<!-- bench_tuning: end -->"
#: The reading of the table (prose, updated by hand when the figures change).
READING = Path(__file__).resolve().parent / "bench_tuning_reading.md"
#: "default": the search's own space (no `space` in the job: search.space_of around the
#: family defaults); a buyer's space around the family defaults (linear: 30 epochs, lr 2,
#: batch n/3), and a wide one that also covers poor settings.
SPACES: dict[str, dict[str, Any] | None] = {
    "default": None,
    "near-defaults": {"learning_rate": {"low": 0.7, "high": 4.0, "log": True}, "epochs": [20, 30],
                      "batch_size": [96, 160]},
    "wide": {"learning_rate": {"low": 0.1, "high": 4.0, "log": True}, "epochs": [10, 30], "batch_size": [32, 128]},
}
SPACE: dict[str, Any] | None = None
#: The hyperparameters of "a buyer's guess": the job schema's generic defaults, given explicitly.
GUESS: dict[str, Any] = {"epochs": 10, "batch_size": 32, "learning_rate": 0.01}


def _job(info: Any, seed: int, eps: float, **kw: Any) -> Any:
    from pandacead.jobs import DPParams, Job, ModelSpec

    return Job(job_id=f"t{seed}-{kw.pop('tag', 'x')}", user_id="bench", dataset=info.name, seed=seed,
               model=ModelSpec(type="linear"),
               dp=DPParams(epsilon=eps, delta=1 / info.n_train ** 1.1, accountant="rdp"), **kw)


#: Filled by `_instrument` while a search runs: the unseen-row accuracy of each candidate.
CANDIDATES: list[float] = []


def _instrument(data: Any, unseen: Any, info: Any) -> Any:
    """Wrap the search's candidate trainer so that each candidate is also scored on the unseen rows.

    Bench-only: the product never sees these rows; the accuracies go to CANDIDATES."""
    from pandacead_opacus import models
    from pandacead_opacus import search as search_mod

    from pandacead import preprocessing

    original = search_mod.run_search
    Z = preprocessing.transform(info.source["preprocessing"], U.raw_rows(data, unseen))
    y = data["y"][unseen]

    def run_search(job: Any, plan: Any, arrays: Any, *, train_candidate: Any, **kw: Any) -> Any:
        def scored(cj: Any, cp: Any, fit: Any, seed: int) -> Any:
            r = train_candidate(cj, cp, fit, seed)
            model, arch = models.load_model(r["model"])
            CANDIDATES.append(float(np.mean(models.predict(model, arch, Z) == y)))
            return r

        return original(job, plan, arrays, train_candidate=scored, **kw)

    search_mod.run_search = run_search
    return lambda: setattr(search_mod, "run_search", original)


def _run(info: Any, home: Path, job: Any, noise_seed: int) -> tuple[Any, Any]:
    from pandacead_opacus.trainer import OpacusTrainer

    from pandacead.trainers import TrainerContext

    # search_constant_work off: a search trains its K candidates, not all M. The released model
    # has the same law either way (the best of the first K, K capped at M and priced so); the
    # M − K extra candidates of constant work only hide K from the clock, at ~10× the compute.
    ctx = TrainerContext(datasets={info.name: info}, state_dir=str(home), accountant="rdp",
                         options={"home": str(home), "noise_seed": noise_seed, "search_constant_work": False})
    t = OpacusTrainer()
    plan = t.plan(job, ctx)
    return plan, t.train(job, plan, ctx, lambda e: None)


def best_of_k(info: Any, home: Path, data: Any, unseen: Any, seed: int, eps: float, k: int,
              space: dict[str, Any], fixed: dict[str, int]) -> float | None:
    """k separate plain jobs at ε/k over the same space; the best by accuracy on the unseen rows.

    That choice uses the evaluation rows themselves, which a buyer could not do: an optimistic
    upper bound of what k separately charged jobs give, so the comparison favours the baseline."""
    rng = np.random.default_rng(seed)
    best = None
    for i in range(k):
        lr_space = space["learning_rate"]
        lr = float(math.exp(rng.uniform(math.log(lr_space["low"]), math.log(lr_space["high"]))))
        ep = int(rng.choice(space.get("epochs") or [fixed["epochs"]]))
        bs = int(rng.choice(space.get("batch_size") or [fixed["batch_size"]]))
        job = _job(info, seed, eps / k, tag=f"k{i}", epochs=ep, batch_size=bs, learning_rate=lr)
        try:
            _, r = _run(info, home, job, 50_000 + 100 * seed + i)
        except Exception as exc:  # a refusal (ε/k too small for the schedule) counts as nothing
            print(f"  best-of-k job refused: {exc}", file=sys.stderr)
            continue
        acc = U.accuracy_of(r, data, unseen, info)
        best = acc if best is None else max(best, acc)
    return best


def measure(names: list[str], eps_list: list[float], seeds: int, mean: float) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    for name in names:
        data = U.LOADERS[name]()
        n = len(data["y"])
        cells: dict[str, list[float]] = {}
        t0 = time.monotonic()
        for seed in range(seeds):
            perm = np.random.default_rng(seed).permutation(n)
            n_unseen = int(round(n * U.UNSEEN_FRACTION))
            unseen, host = np.sort(perm[:n_unseen]), np.sort(perm[n_unseen:])
            with tempfile.TemporaryDirectory() as tmp:
                home = Path(tmp)
                info = U.register(home, name, data, host)
                for eps in eps_list:
                    job = _job(info, seed, eps, tag="d", defaulted=("epochs", "batch_size", "learning_rate"))
                    _, r = _run(info, home, job, 10_000 + seed)
                    cells.setdefault(f"default@{eps:g}", []).append(U.accuracy_of(r, data, unseen, info))
                    block: dict[str, Any] = {"candidates": {"distribution": "logarithmic", "mean": mean}}
                    if SPACE is not None:
                        block["space"] = SPACE
                    # The buyer leaves the hyperparameters out: the family defaults, and the space around them.
                    sj = _job(info, seed, eps, tag="s", search=block,
                              defaulted=("epochs", "batch_size", "learning_rate"))
                    # The search's secret differs per ε (as two jobs' would): not the same K and draws twice.
                    CANDIDATES.clear()
                    restore = _instrument(data, unseen, info)
                    try:
                        plan, r = _run(info, home, sj, 20_000 + 100 * seed + int(eps * 10))
                    finally:
                        restore()
                    if CANDIDATES:
                        cells.setdefault(f"cand_mean@{eps:g}", []).append(float(np.mean(CANDIDATES)))
                        cells.setdefault(f"oracle@{eps:g}", []).append(max(CANDIDATES))
                        cells.setdefault(f"k@{eps:g}", []).append(len(CANDIDATES))
                    space = plan.details["search"]["space"]
                    cells.setdefault("space", [json.dumps(space)])
                    fd = plan.details.get("family_defaults") or {}
                    fixed = {"epochs": fd.get("epochs", sj.epochs), "batch_size": fd.get("batch_size", sj.batch_size)}
                    cells.setdefault(f"search@{eps:g}", []).append(U.accuracy_of(r, data, unseen, info))
                    cells.setdefault(f"search_cost@{eps:g}", []).append(plan.epsilon)
                    cells.setdefault(f"search_vs_one@{eps:g}", []).append(
                        plan.details["search"]["search_epsilon"] / plan.details["search"]["base_epsilon"])
                    best = best_of_k(info, home, data, unseen, seed, eps, int(mean), space, fixed)
                    if best is not None:
                        cells.setdefault(f"bestofk@{eps:g}", []).append(best)
                    if GUESS:
                        # A buyer who knows nothing: the schema's generic values, set in the job.
                        gj = _job(info, seed, eps, tag="g", **GUESS)
                        _, r = _run(info, home, gj, 30_000 + seed)
                        cells.setdefault(f"guess@{eps:g}", []).append(U.accuracy_of(r, data, unseen, info))
                        wj = _job(info, seed, eps, tag="w", search={"candidates": {"distribution": "logarithmic",
                                                                                   "mean": mean},
                                                                    "space": SPACES["wide"]}, **GUESS)
                        _, r = _run(info, home, wj, 40_000 + 100 * seed + int(eps * 10))
                        cells.setdefault(f"wide@{eps:g}", []).append(U.accuracy_of(r, data, unseen, info))
            print(f"{name} seed {seed}: {time.monotonic() - t0:.0f}s", flush=True)
        out[name] = {"cells": cells, "seeds": seeds, "n": n, "seconds": round(time.monotonic() - t0, 1)}
    return out


def _ms(v: list[float] | None) -> str:
    if not v:
        return "–"
    return f"{np.mean(v):.3f} ± {np.std(v):.3f}"


def render(results: dict[str, Any], eps_list: list[float], mean: float) -> str:
    spaces = sorted({sp for r in results.values() for sp in r["cells"].get("space", [])})
    lines = [
        BEGIN,
        "## Private hyperparameter search (issue #18)",
        "",
        f"`bench/bench_tuning.py`: at the same total ε, accuracy on rows the host never saw (mean ± std over "
        f"seeds), a search with a logarithmic number of candidates (mean {mean:g}) over the space "
        f"{' / '.join(f'`{sp}`' for sp in spaces)} "
        f"({'the search’s default space around the family defaults' if SPACE is None else 'given in the job'}), "
        "against one job with the family defaults and against "
        f"the best of {int(mean)} separately charged jobs at ε/{int(mean)} each over the same space (what a buyer "
        "without `search` pays the same total for), that best picked by accuracy on the evaluation rows "
        "themselves — an optimistic bound no buyer could reach. `search ε / one run` is the search's price over "
        "the ε one of its candidates would cost alone.",
        "",
        "| dataset | ε | default run | search | best of k | search ε / one run | search's candidates: mean | "
        "oracle pick (upper bound of any selection) | mean K |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        c = r["cells"]
        for eps in eps_list:
            ratio = c.get(f"search_vs_one@{eps:g}")
            ks = c.get(f"k@{eps:g}")
            lines.append(
                f"| {name} | {eps:g} | {_ms(c.get(f'default@{eps:g}'))} | {_ms(c.get(f'search@{eps:g}'))} | "
                f"{_ms(c.get(f'bestofk@{eps:g}'))} | {np.mean(ratio):.2f}× | {_ms(c.get(f'cand_mean@{eps:g}'))} | "
                f"{_ms(c.get(f'oracle@{eps:g}'))} | {np.mean(ks) if ks else float('nan'):.1f} |" if ratio else "| – |")
    if any(c.get(f"guess@{eps:g}") for r in results.values() for c in [r["cells"]] for eps in eps_list):
        lines += [
            "",
            "Where tuning has something to find — a buyer who sets the schema's generic values "
            f"(epochs {GUESS['epochs']}, batch {GUESS['batch_size']}, learning rate {GUESS['learning_rate']:g}) "
            "against the same buyer's search over the `wide` space "
            f"(`{json.dumps(SPACES['wide'])}`), same total ε, same rows:",
            "",
            "| dataset | ε | a buyer's guess, one run | search over `wide` |",
            "|---|---|---|---|",
        ]
        for name, r in results.items():
            c = r["cells"]
            for eps in eps_list:
                if c.get(f"guess@{eps:g}"):
                    lines.append(f"| {name} | {eps:g} | {_ms(c.get(f'guess@{eps:g}'))} | {_ms(c.get(f'wide@{eps:g}'))} |")
    lines.append("")
    lines.append("; ".join(f"{name}: {r['seeds']} seeds, {r['seconds']:.0f} s" for name, r in results.items()) + ".")
    if READING.exists():  # the hand-written reading of the figures, kept across reruns
        lines += ["", READING.read_text().rstrip("\n")]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write(block: str) -> None:
    U.write_section(DOCS, BEGIN, END, block)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--eps", default="1,3")
    ap.add_argument("--mean", type=float, default=10.0)
    ap.add_argument("--only", default="breast_cancer")
    ap.add_argument("--space", choices=sorted(SPACES), default="default")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--from-json", type=Path, help="render these raw results (from --json) instead of measuring")
    args = ap.parse_args(argv)
    eps_list = [float(e) for e in args.eps.split(",")]
    global SPACE
    SPACE = SPACES[args.space]
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        results = measure(args.only.split(","), eps_list, args.seeds, args.mean)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    block = render(results, eps_list, args.mean)
    write(block)
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())

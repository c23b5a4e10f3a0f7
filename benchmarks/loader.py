"""Images per second delivered for AlexNet-style training batches, netdsl vs torchvision.

Each batch: 128 random 227x227 crops of 256x256 images, a random flip, PCA lighting
(std 0.1) and per-channel normalisation to float32, as netdsl's `augment crop(227),
flip, lighting(0.1)` makes them. Sources:

- a packed store made by ``netdsl pack FOLDER STORE --size 256`` (uint8 N x 3 x 256 x
  256 in ``.npy`` shards, read with ``pread``), opened as ``data "STORE"`` opens it
  (``load_dataset``);
- the image folder of JPEGs itself (ImageNet's layout: ``data "FOLDER"``), decoded with
  Pillow in the loader's workers, the shorter side resized to 256 and centre-cropped
  (what ``netdsl pack`` does);
- torchvision's ``ImageFolder`` + ``DataLoader`` on the same folder with the same
  transforms, run by another Python (``--torch-python``, a venv with torch and
  torchvision: they are not netdsl dependencies).

    python benchmarks/loader.py --torch-python /work/venv-tv/bin/python

``--memory 100000,400000`` instead measures the peak RSS of one training epoch from
stores of those sizes (``netdsl pack`` of an .npz of random 3x32x32 images, trained
through ``data "STORE"``); ``--e2e N`` trains an AlexNet-shaped net for one epoch from
N JPEGs packed with ``netdsl pack --size 72``; ``--smoke`` runs the speed and memory
modes at toy sizes (tests/test_loader_bench.py). The folders and stores are generated
under ``--dir`` and kept between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netdsl.train.loader import Job, Loader, Transform  # noqa: E402

SIZE, CROP, BATCH = 256, 227, 128
# ImageNet's RGB statistics on the [0, 1] scale (AlexNet's lighting: fb.resnet.torch's values)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
EIGVAL = np.array([0.2175, 0.0188, 0.0045])
EIGVEC = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140],
                   [-0.5836, -0.6948, 0.4203]])  # fmt: skip
AUGMENT = (
    {"kind": "crop", "size": CROP, "pad": 0},
    {"kind": "flip", "p": 0.5},
    {"kind": "lighting", "std": 0.1},
)


# ------------------------------------------------------------------ data


def make_folder(root: Path, n: int, classes: int = 10, seed: int = 0,
                sides: tuple[int, int] = (300, 500)) -> Path:  # fmt: skip
    """n JPEGs of 300-500 px sides (smooth random colour fields) in ImageNet's layout:
    ``root/jpeg/train/CLASS/*.JPEG``; returns ``root/jpeg``, an image folder."""
    from PIL import Image

    top = root / "jpeg"
    folder = top / "train"
    done = folder / ".complete"
    if done.exists() and done.read_text() == f"{n} {sides}":
        return top
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = rng.integers(sides[0], sides[1] + 1, 2)
        small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((int(w), int(h)), Image.BILINEAR)
        d = folder / f"class{i % classes:02d}"
        d.mkdir(parents=True, exist_ok=True)
        img.save(d / f"img{i:06d}.JPEG", quality=90)
    done.write_text(f"{n} {sides}")
    return top


def pack_store(src: Path, out: Path, size: int | None = None, quiet: bool = True) -> Path:
    """``netdsl pack SRC OUT [--size SIZE]`` (kept between runs: a store packed from the
    same source, generated alike, at the same size is reused); returns OUT."""
    from netdsl.train.pack import pack, summary_line
    from netdsl.train.store import is_store, read_manifest

    stamp = out.with_name(out.name + ".source")
    made = src / "train" / ".complete"  # what make_folder generated there, if it did
    key = f"{src.resolve()} {size} {made.read_text() if made.exists() else src.stat().st_mtime}"
    if is_store(out) and stamp.exists() and stamp.read_text() == key:
        return out
    r = pack(src, out, size=size, overwrite=True, workers=_cpus())
    if not quiet:
        print(f"# {summary_line(r)}")
    stamp.write_text(key)
    read_manifest(out)  # a store now, or a DataError naming what is wrong
    return out


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


# ------------------------------------------------------------------ measuring


def netdsl_rate(source, workers: int, batches: int, batch: int = BATCH) -> float:
    """Images/s the netdsl loader delivers (after one warm-up batch, which starts workers)."""
    t = Transform(MEAN, STD, (3, CROP, CROP), (3, SIZE, SIZE), "train", AUGMENT,
                  (EIGVAL, EIGVEC), seed=0)  # fmt: skip
    order = np.random.default_rng(0).permutation(len(source))
    n = min(batches + 1, len(source) // batch)
    if n < 2:
        raise SystemExit(f"{len(source)} images make fewer than 2 batches of {batch}")
    jobs = [Job(order[s * batch : (s + 1) * batch], (0, s), 0, batch) for s in range(n)]
    with Loader({"train": (source, t)}, batch, workers=workers) as loader:
        it = loader.run("train", jobs)
        next(it)
        t0 = time.perf_counter()
        count = sum(len(b) for b in it)
        return count / (time.perf_counter() - t0)


TORCH = r"""
import json, sys, time
import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms as T

folder, workers, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
eigval = torch.tensor([0.2175, 0.0188, 0.0045])
eigvec = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140],
                       [-0.5836, -0.6948, 0.4203]])

def lighting(x):  # AlexNet's PCA noise, on the [0, 1] tensor
    alpha = torch.normal(0.0, 0.1, (3,))
    return x + (eigvec @ (alpha * eigval))[:, None, None]

tf = T.Compose([T.Resize(256), T.CenterCrop(256), T.RandomCrop(227), T.RandomHorizontalFlip(),
                T.ToTensor(), T.Lambda(lighting),
                T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
torch.set_num_threads(1)
ds = datasets.ImageFolder(folder, tf)
dl = DataLoader(ds, batch_size=128, shuffle=True, num_workers=workers, drop_last=True)
it = iter(dl)
next(it)
t0 = time.perf_counter()
count = 0
for i, (x, y) in enumerate(it):
    count += len(x)
    if i + 1 >= batches:
        break
print(json.dumps({"rate": count / (time.perf_counter() - t0), "torch": torch.__version__}))
"""


def torch_rate(python: str, folder: Path, workers: int, batches: int) -> float:
    p = subprocess.run([python, "-c", TORCH, str(folder), str(workers), str(batches)],
                       capture_output=True, text=True, timeout=3600)  # fmt: skip
    if p.returncode:
        raise RuntimeError(f"torchvision run failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.splitlines()[-1])["rate"]


# ------------------------------------------------------------------ memory

MEMORY_NET = """
network memtiny
input image: 3x28x28
conv c1: 4 filters 5x5, stride 4, relu
fc   out: 10
loss cross_entropy

train {
  data "STORE"
  batch BATCH
  epochs 1
  optimizer sgd(lr=0.01, momentum=0.9)
  augment crop(28), flip
  normalize mean=0.5, std=0.25
  validate 1000
  seed 1
}
"""

# run in a fresh process per store: one epoch of `netdsl train` (fit_file, the function
# behind it) from the store, then the peak resident sizes of this process and of its
# loader workers
MEMORY_RUN = r"""
import resource, sys
sys.path.insert(0, sys.argv[1])
from netdsl.train import trainer

net, out, workers = sys.argv[2], sys.argv[3], int(sys.argv[4])
r = trainer.fit_file(net, out=out, quiet=True, workers=workers, overwrite=True)
# this process's own peak (VmHWM: ru_maxrss would carry over its parent's peak across exec)
status = open("/proc/self/status").read()
me = int(status.split("VmHWM:")[1].split()[0])
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest loader worker
print(f"{me} {kids} {r['train_loss']:.4f} {r['seconds']:.1f}")
"""


def make_npz_store(root: Path, n: int) -> Path:
    """n random 3x32x32 uint8 images and labels saved as an .npz, then packed into a
    store with ``netdsl pack`` (the .npz is removed afterwards: only the store is read)."""
    store = root / f"store{n}"
    npz = root / f"random{n}.npz"
    stamp = store.with_name(store.name + ".source")
    if not (stamp.exists() and stamp.read_text().startswith(f"{npz.resolve()} None ")):
        rng = np.random.default_rng(n)
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        np.savez(npz, x=x, y=rng.integers(0, 10, n))
        del x
        pack_store(npz, store)
        npz.unlink()
    return store


def memory(root: Path, sizes: list[int], workers: list[int], batch: int = 256) -> None:
    """Peak RSS (MiB) of one training epoch from stores of each size, in fresh processes."""
    root.mkdir(parents=True, exist_ok=True)
    repo = str(Path(__file__).resolve().parent.parent)
    stores = {n: make_npz_store(root, n) for n in sizes}
    print(f"# peak RSS, one epoch of memtiny (batch {batch}) from netdsl stores of random "
          f"3x32x32 uint8 images (`netdsl pack` of an .npz); load {_load()}")  # fmt: skip
    print("| images | store size | workers | trainer peak RSS | workers' peak RSS | "
          "train loss | epoch s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for w in workers:
        first = None
        for n in sizes:
            net = root / f"memtiny{n}.net"
            net.write_text(MEMORY_NET.replace("STORE", str(stores[n].resolve()))
                           .replace("BATCH", str(batch)))  # fmt: skip
            p = subprocess.run([sys.executable, "-c", MEMORY_RUN, repo, str(net),
                                str(root / f"run{n}_{w}"), str(w)], capture_output=True,
                               text=True, timeout=3600)  # fmt: skip
            if p.returncode:
                raise RuntimeError(p.stderr[-3000:])
            me, kids, loss, secs = p.stdout.split()[-4:]
            size = sum(f.stat().st_size for f in stores[n].glob("train-*.npy"))
            peak = int(me) / 1024
            grew = f" ({peak / first - 1:+.1%})" if first else ""
            first = first or peak
            kids_cell = f"{int(kids) / 1024:.0f} MiB" if w else "-"  # no workers: no children
            print(f"| {n:,} | {size / 2**20:.0f} MiB | {w} | {peak:.0f} MiB{grew} | "
                  f"{kids_cell} | {loss} | {secs} |")  # fmt: skip
    print(f"# load after: {_load()}")


# ------------------------------------------------------------------ end to end

E2E_NET = """
# AlexNet's shape at 64x64: conv/lrn/pool twice, three 3x3 convs, pool, two dropout fcs
network alexmini
input image: 3x64x64
conv  conv1: 32 filters 7x7, stride 2, relu
lrn   norm1: size 5, k 2, alpha 1e-4, beta 0.75
pool  pool1: max 3x3, stride 2, floor
conv  conv2: 48 filters 5x5, pad 2, relu
lrn   norm2: size 5, k 2, alpha 1e-4, beta 0.75
pool  pool2: max 3x3, stride 2, floor
conv  conv3: 64 filters 3x3, pad 1, relu
conv  conv4: 64 filters 3x3, pad 1, relu
conv  conv5: 48 filters 3x3, pad 1, relu
pool  pool5: max 3x3, stride 2, floor
fc    fc6: 256, relu
dropout drop6: 0.5
fc    fc7: 256, relu
dropout drop7: 0.5
fc    fc8: 10
loss  cross_entropy

train {
  data "STORE"
  batch BATCH
  epochs 1
  optimizer sgd(lr=0.02, momentum=0.9, weight_decay=5e-4)
  augment crop(64), flip, lighting(0.1)
  normalize mean=0.5, std=0.25
  test_crops 10
  validate VALIDATE
  seed 1
}
"""

E2E_RUN = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
import netdsl
from netdsl.backends import compile_network
from netdsl.train import trainer

net, out, workers, batch = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
data = trainer.prepare_data(netdsl.load(net))
cnet = compile_network(netdsl.load(net), batch=batch, seed=1)  # the run's initial weights
before = trainer.evaluate(cnet, data.val, crops=10)
t0 = time.perf_counter()
r = trainer.fit_file(net, out=out, quiet=True, workers=workers, overwrite=True)
print(f"RESULT {before['loss']:.4f} {before['top1_error']:.4f} {r['train_loss']:.4f} "
      f"{r['val_loss']:.4f} {r['val_err']:.4f} {r['seconds']:.1f} {time.perf_counter() - t0:.1f}")
"""


def make_class_folder(root: Path, n: int, classes: int = 10, seed: int = 1) -> Path:
    """n JPEGs (80-120 px) of `classes` kinds: a bright square whose place and colour
    say the class, on a noisy background, in ImageNet's layout; returns the image
    folder (``root/classes``, holding ``train/CLASS/*.JPEG``)."""
    from PIL import Image

    top = root / "classes"
    folder = top / "train"
    done = folder / ".complete"
    if done.exists() and int(done.read_text()) == n:
        return top
    rng = np.random.default_rng(seed)
    colours = rng.integers(60, 256, (classes, 3))
    for i in range(n):
        c = i % classes
        h, w = rng.integers(80, 121, 2)
        img = rng.integers(0, 120, (h, w, 3)).astype(np.uint8)
        side = min(h, w) // 3
        cy = int((c // 5 + 0.5) / 2 * h) - side // 2 + rng.integers(-4, 5)
        cx = int((c % 5 + 0.5) / 5 * w) - side // 2 + rng.integers(-4, 5)
        img[max(cy, 0) : cy + side, max(cx, 0) : cx + side] = colours[c]
        d = folder / f"class{c:02d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"img{i:06d}.JPEG", quality=90)
    done.write_text(str(n))
    return top


def end_to_end(root: Path, n: int, workers: int, batch: int = 64) -> dict[str, float]:
    """``netdsl pack --size 72`` a folder of n JPEGs and train the AlexNet-shaped net on
    the store for one epoch; print (and return) the validation loss before and after."""
    folder = make_class_folder(root, n)
    store = pack_store(folder, root / f"packed{n}", size=72)
    validate = min(320, n // 8)
    net = root / "alexmini.net"
    net.write_text(E2E_NET.replace("STORE", str(store.resolve())).replace("BATCH", str(batch))
                   .replace("VALIDATE", str(validate)))  # fmt: skip
    repo = str(Path(__file__).resolve().parent.parent)
    p = subprocess.run([sys.executable, "-c", E2E_RUN, repo, str(net), str(root / "alexmini-run"),
                        str(workers), str(batch)], capture_output=True, text=True,
                       timeout=3600)  # fmt: skip
    if p.returncode:
        raise RuntimeError(p.stderr[-3000:])
    vals = [line for line in p.stdout.splitlines() if line.startswith("RESULT")][-1].split()[1:]
    b_loss, b_err, tr_loss, v_loss, v_err, secs, wall = vals
    print(f"# alexmini, {n} JPEGs packed to 72x72 (`netdsl pack --size 72`: {store}), "
          f"{n - validate} train / {validate} validation, batch {batch}, crop 64, flip, "
          f"lighting, ten views, {workers} worker(s); load {_load()}")  # fmt: skip
    print(f"validation before: loss {b_loss} error {float(b_err):.1%}; after one epoch: "
          f"train loss {tr_loss}, validation loss {v_loss} error {float(v_err):.1%}; epoch "
          f"{secs} s (training), {wall} s with compiling and evaluation")  # fmt: skip
    return {"before": float(b_loss), "after": float(v_loss), "train": float(tr_loss)}


def _load() -> str:
    """The 1, 5 and 15 minute load averages (other processes share the cores)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ------------------------------------------------------------------ the speed table


def speed(root: Path, images: int, batches: int, workers: list[int], runs: int,
          torch_python: str | None, batch: int = BATCH,
          sides: tuple[int, int] = (300, 500)) -> list[dict[str, float]]:  # fmt: skip
    """The speed comparison: the generated JPEG folder read by netdsl (decoded in the
    loader's workers), the same folder packed by ``netdsl pack`` (read from the store's
    shards) and, with ``torch_python``, torchvision; returns the medians per worker count."""
    from netdsl.train.data import load_dataset

    folder = make_folder(root, images, sides=sides)
    store = pack_store(folder, root / "store", size=SIZE)
    store_src = load_dataset(str(store)).x_train
    folder_src = load_dataset(str(folder), image_size=SIZE).x_train
    print(f"# {len(folder_src)} JPEGs in {folder}; store {store} (`netdsl pack --size {SIZE}`);"
          f" batch {batch}, crop {CROP} of {SIZE}, flip, lighting, normalise; {batches} timed "
          f"batches; cpus {_cpus()}, load {_load()}")  # fmt: skip
    rows = []
    for w in workers:
        # the three alternate, `runs` times: a load that comes and goes hits all alike
        got: dict[str, list[float]] = {"store": [], "folder": [], "torch": []}
        for _ in range(runs):
            got["store"].append(netdsl_rate(store_src, w, batches, batch))
            got["folder"].append(netdsl_rate(folder_src, w, batches, batch))
            if torch_python:
                got["torch"].append(torch_rate(torch_python, folder / "train", w, batches))
        print(
            f"# {w} worker(s), each run: "
            + "; ".join(f"{k} {', '.join(f'{v:.0f}' for v in vs)}" for k, vs in got.items() if vs)
        )
        rows.append({"workers": w, **{k: float(np.median(v)) for k, v in got.items() if v}})
    print(f"# medians of {runs} run(s)")
    print("| workers | netdsl store img/s | netdsl JPEG folder img/s | torchvision JPEG folder "
          "img/s | store / torchvision | folder / torchvision |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in rows:
        tv = r.get("torch")
        cells = [f"{r['store']:.0f}", f"{r['folder']:.0f}", "-", "-", "-"]
        if tv:
            cells[2:] = [f"{tv:.0f}", f"{r['store'] / tv:.2f}x", f"{r['folder'] / tv:.2f}x"]
        print(f"| {r['workers']} | " + " | ".join(cells) + " |")
    print(f"# load after: {_load()}")
    return rows


def smoke(root: Path) -> int:
    """Every mode at toy sizes, no torchvision: that the script still runs against
    netdsl's current store, loader and trainer (tests/test_loader_bench.py)."""
    speed(root, images=32, batches=1, workers=[0, 1], runs=1, torch_python=None, batch=8,
          sides=(256, 280))  # fmt: skip
    memory(root, [1100, 1300], [0], batch=50)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="/tmp/netdsl-loader-bench", help="where data is made")
    ap.add_argument("--images", type=int, default=2000, help="JPEGs in the folder")
    ap.add_argument("--batches", type=int, default=8, help="timed batches per run")
    ap.add_argument("--workers", default="1,2", help="worker counts to measure")
    ap.add_argument("--runs", type=int, default=3, help="runs of each; medians are shown")
    ap.add_argument("--torch-python", help="a Python with torch and torchvision")
    ap.add_argument("--memory", metavar="N,N", help="instead: peak RSS of training from "
                    "stores of these sizes (e.g. 100000,400000)")  # fmt: skip
    ap.add_argument("--e2e", type=int, metavar="N", help="instead: train an AlexNet-shaped "
                    "net for one epoch on N packed JPEGs")  # fmt: skip
    ap.add_argument("--smoke", action="store_true", help="instead: every mode but --e2e at "
                    "toy sizes, without torchvision (a test that the script runs)")  # fmt: skip
    args = ap.parse_args(argv)
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    workers = [int(w) for w in args.workers.split(",")]
    if args.smoke:
        return smoke(root)
    if args.e2e:
        end_to_end(root, args.e2e, workers[0])
        return 0
    if args.memory:
        memory(root, [int(v) for v in args.memory.split(",")], workers)
        return 0
    speed(root, args.images, args.batches, workers, args.runs, args.torch_python)
    return 0


if __name__ == "__main__":
    sys.exit(main())

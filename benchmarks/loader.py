"""Images per second delivered for AlexNet-style training batches, netdsl vs torchvision.

Each batch: 128 random 227x227 crops of 256x256 images, a random flip, PCA lighting
(std 0.1) and per-channel normalisation to float32, as netdsl's `augment crop(227),
flip, lighting(0.1)` makes them. Sources:

- a packed store: uint8 N x 3 x 256 x 256 in memory-mapped shard files (``.npy``
  shards until netdsl's own store format is on main; ``--store PATH`` names one made
  by ``netdsl pack`` when it is: see ``open_store``);
- an image folder of JPEGs (ImageNet's layout), decoded with Pillow in the loader's
  workers, the shorter side resized to 256 and centre-cropped (as ``netdsl pack`` does);
- torchvision's ``ImageFolder`` + ``DataLoader`` on the same folder with the same
  transforms, run by another Python (``--torch-python``, a venv with torch and
  torchvision: they are not netdsl dependencies).

    python benchmarks/loader.py --torch-python /work/venv-tv/bin/python

The folder and shards are generated under ``--dir`` (kept between runs).
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


def make_folder(root: Path, n: int, classes: int = 10, seed: int = 0) -> Path:
    """n JPEGs of 300-500 px sides (smooth random colour fields), ImageNet's layout."""
    from PIL import Image

    folder = root / "jpeg" / "train"
    done = folder / ".complete"
    if done.exists() and int(done.read_text()) == n:
        return folder
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = rng.integers(300, 501, 2)
        small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((int(w), int(h)), Image.BILINEAR)
        d = folder / f"class{i % classes:02d}"
        d.mkdir(parents=True, exist_ok=True)
        img.save(d / f"img{i:06d}.JPEG", quality=90)
    done.write_text(str(n))
    return folder


def decode(path: Path, size: int = SIZE) -> np.ndarray:
    """One image file as 3 x size x size uint8: the shorter side resized, centre crop."""
    from PIL import Image

    SIZE = size  # noqa: N806 - the module's default, overridden

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = SIZE / min(w, h)
        im = im.resize((max(SIZE, round(w * s)), max(SIZE, round(h * s))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - SIZE) // 2, (h - SIZE) // 2
        im = im.crop((left, top, left + SIZE, top + SIZE))
        return np.asarray(im).transpose(2, 0, 1)


class FolderSource:
    """An image folder as an image source: files decoded when read (in the workers)."""

    def __init__(self, folder: Path) -> None:
        self.path = str(folder)
        self.files = sorted(p for p in folder.glob("*/*") if p.suffix == ".JPEG")
        self.shape = (len(self.files), 3, SIZE, SIZE)
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx):
        return np.stack([decode(self.files[int(i)]) for i in np.atleast_1d(idx)])


class ShardSource:
    """Memory-mapped .npy shards of uint8 N x 3 x 256 x 256 as one image source."""

    def __init__(self, shards: list[Path]) -> None:
        self.path = str(shards[0].parent)
        self.parts = [np.load(p, mmap_mode="r") for p in shards]
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        self.shape = (int(self.starts[-1]), 3, SIZE, SIZE)
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx):
        idx = np.atleast_1d(idx)
        shard = np.searchsorted(self.starts, idx, side="right") - 1
        out = np.empty((len(idx), 3, SIZE, SIZE), np.uint8)
        for s in np.unique(shard):
            m = shard == s
            out[m] = self.parts[s][idx[m] - self.starts[s]]
        return out


def pack_shards(folder: Path, root: Path, shard: int = 500) -> list[Path]:
    """The folder decoded once into .npy shards (what a packed store holds)."""
    out = root / "shards"
    src = FolderSource(folder)
    paths = [out / f"shard{i:04d}.npy" for i in range(0, len(src), shard)]
    if all(p.exists() for p in paths) and (out / ".complete").exists():
        return paths
    out.mkdir(parents=True, exist_ok=True)
    for p, start in zip(paths, range(0, len(src), shard), strict=True):
        np.save(p, src[np.arange(start, min(start + shard, len(src)))])
    (out / ".complete").write_text("")
    return paths


def open_store(path: str):
    """A store made by `netdsl pack` (its training split), when netdsl has one."""
    from netdsl.train.data import load_dataset

    return load_dataset(path).x_train


# ------------------------------------------------------------------ measuring


def netdsl_rate(source, workers: int, batches: int) -> float:
    """Images/s the netdsl loader delivers (after one warm-up batch, which starts workers)."""
    t = Transform(MEAN, STD, (3, CROP, CROP), (3, SIZE, SIZE), "train", AUGMENT,
                  (EIGVAL, EIGVEC), seed=0)  # fmt: skip
    order = np.random.default_rng(0).permutation(len(source))
    n = min(batches + 1, len(source) // BATCH)
    jobs = [Job(order[s * BATCH : (s + 1) * BATCH], (0, s), 0, BATCH) for s in range(n)]
    with Loader({"train": (source, t)}, BATCH, workers=workers) as loader:
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
  data "store"
  batch 256
  epochs 1
  optimizer sgd(lr=0.01, momentum=0.9)
  augment crop(28), flip
  normalize mean=0.5, std=0.25
  seed 1
}
"""

# run in a fresh process per store size: one epoch of the trainer from the memmapped
# store, then the peak resident sizes of this process and of its loader workers
MEMORY_RUN = r"""
import resource, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from netdsl.train import trainer
from netdsl.train.data import Dataset

store, net, out, workers = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])

def load_dataset(spec, base_dir=None):  # a packed store: images memory-mapped, never read whole
    x = np.load(f"{store}/x.npy", mmap_mode="r")
    y = np.load(f"{store}/y.npy")
    ds = Dataset(x, y, x[:1000], y[:1000], 10, "store")
    ds.fingerprint = "blake2b:" + store  # a store's own fingerprint: no pass over the images
    return ds

trainer.load_dataset = load_dataset
r = trainer.fit_file(net, out=out, quiet=True, workers=workers, overwrite=True)
# this process's own peak (VmHWM: ru_maxrss would carry over its parent's peak across exec)
status = open("/proc/self/status").read()
me = int(status.split("VmHWM:")[1].split()[0])
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest loader worker
print(f"{me} {kids} {r['train_loss']:.4f} {r['seconds']:.1f}")
"""


def make_store(root: Path, n: int) -> Path:
    """n random 3x32x32 uint8 images (and labels) as a memory-mappable .npy pair."""
    d = root / f"store{n}"
    if not (d / "y.npy").exists():
        d.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(n)
        with open(d / "x.npy", "wb") as f:  # written in chunks: this process stays small
            header = {"descr": "|u1", "fortran_order": False, "shape": (n, 3, 32, 32)}
            np.lib.format.write_array_header_1_0(f, header)
            for start in range(0, n, 20_000):
                stop = min(start + 20_000, n)
                f.write(rng.integers(0, 256, (stop - start, 3, 32, 32), dtype=np.uint8).data)
        np.save(d / "y.npy", rng.integers(0, 10, n))
    return d


def memory(root: Path, sizes: list[int], workers: list[int]) -> None:
    """Peak RSS (MiB) of one training epoch from stores of each size, in fresh processes."""
    net = root / "memtiny.net"
    root.mkdir(parents=True, exist_ok=True)
    net.write_text(MEMORY_NET)
    repo = str(Path(__file__).resolve().parent.parent)
    print(f"# peak RSS, one epoch of {net.name} from a memmapped 3x32x32 uint8 store; "
          f"load {_load()}")  # fmt: skip
    print("| images | store size | workers | trainer peak RSS | workers' peak RSS | "
          "train loss | epoch s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for w in workers:
        for n in sizes:
            d = make_store(root, n)
            p = subprocess.run([sys.executable, "-c", MEMORY_RUN, repo, str(d), str(net),
                                str(root / f"run{n}_{w}"), str(w)], capture_output=True,
                               text=True, timeout=3600)  # fmt: skip
            if p.returncode:
                raise RuntimeError(p.stderr[-3000:])
            me, kids, loss, secs = p.stdout.split()[-4:]
            print(f"| {n:,} | {n * 3072 / 2**20:.0f} MiB | {w} | {int(me) / 1024:.0f} MiB | "
                  f"{int(kids) / 1024:.0f} MiB | {loss} | {secs} |")  # fmt: skip
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
  data "store"
  batch 64
  epochs 1
  optimizer sgd(lr=0.02, momentum=0.9, weight_decay=5e-4)
  augment crop(64), flip, lighting(0.1)
  normalize mean=0.5, std=0.25
  test_crops 10
  validate 320
  seed 1
}
"""

E2E_RUN = r"""
import sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
import netdsl
from netdsl.backends import compile_network
from netdsl.train import trainer
from netdsl.train.data import Dataset

store, net, out, workers = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])

def load_dataset(spec, base_dir=None):  # the packed images, memory-mapped
    x = np.load(f"{store}/x.npy", mmap_mode="r")
    y = np.load(f"{store}/y.npy")
    ds = Dataset(x, y, x[:0], y[:0], 10, "packed")
    ds.fingerprint = "blake2b:" + store
    return ds

trainer.load_dataset = load_dataset
data = trainer.prepare_data(netdsl.load(net))
cnet = compile_network(netdsl.load(net), batch=64, seed=1)  # the run's initial weights
before = trainer.evaluate(cnet, data.val, crops=10)
t0 = time.perf_counter()
r = trainer.fit_file(net, out=out, quiet=True, workers=workers, overwrite=True)
print(f"RESULT {before['loss']:.4f} {before['top1_error']:.4f} {r['train_loss']:.4f} "
      f"{r['val_loss']:.4f} {r['val_err']:.4f} {r['seconds']:.1f} {time.perf_counter() - t0:.1f}")
"""


def make_class_folder(root: Path, n: int, classes: int = 10, seed: int = 1) -> Path:
    """n JPEGs (80-120 px) of `classes` kinds: a bright square whose place and colour
    say the class, on a noisy background, in ImageNet's folder layout."""
    from PIL import Image

    folder = root / "classes" / "train"
    done = folder / ".complete"
    if done.exists() and int(done.read_text()) == n:
        return folder
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
    return folder


def end_to_end(root: Path, n: int, workers: int) -> None:
    """Pack a JPEG folder to 72x72 (x.npy, memory-mapped) and train the AlexNet-shaped
    net on it for one epoch; print the validation loss before and after."""
    folder = make_class_folder(root, n)
    store = root / f"packed{n}"
    files = sorted(p for p in folder.glob("*/*") if p.suffix == ".JPEG")
    if not (store / "y.npy").exists():
        store.mkdir(parents=True, exist_ok=True)
        order = np.random.default_rng(0).permutation(len(files))  # classes mixed
        x = np.lib.format.open_memmap(store / "x.npy", "w+", np.uint8, (len(files), 3, 72, 72))
        for j, i in enumerate(order):
            x[j] = decode(files[i], 72)
        x.flush()
        del x
        np.save(store / "y.npy", np.array([int(files[i].parent.name[5:]) for i in order]))
    net = root / "alexmini.net"
    net.write_text(E2E_NET)
    repo = str(Path(__file__).resolve().parent.parent)
    p = subprocess.run([sys.executable, "-c", E2E_RUN, repo, str(store), str(net),
                        str(root / "alexmini-run"), str(workers)], capture_output=True,
                       text=True, timeout=3600)  # fmt: skip
    if p.returncode:
        raise RuntimeError(p.stderr[-3000:])
    vals = [line for line in p.stdout.splitlines() if line.startswith("RESULT")][-1].split()[1:]
    b_loss, b_err, tr_loss, v_loss, v_err, secs, wall = vals
    print(f"# alexmini, {len(files)} JPEGs packed to 72x72 ({store}/x.npy, memory-mapped), "
          f"{len(files) - 320} train / 320 validation, batch 64, crop 64, flip, lighting, ten "
          f"views, {workers} worker(s); load {_load()}")  # fmt: skip
    print(f"validation before: loss {b_loss} error {float(b_err):.1%}; after one epoch: "
          f"train loss {tr_loss}, validation loss {v_loss} error {float(v_err):.1%}; epoch "
          f"{secs} s (training), {wall} s with compiling and evaluation")  # fmt: skip


def _load() -> str:
    """The 1, 5 and 15 minute load averages (other processes share the cores)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="/tmp/netdsl-loader-bench", help="where data is made")
    ap.add_argument("--images", type=int, default=2000, help="JPEGs in the folder")
    ap.add_argument("--batches", type=int, default=8, help="timed batches per run")
    ap.add_argument("--workers", default="1,2", help="worker counts to measure")
    ap.add_argument("--runs", type=int, default=3, help="runs of each; medians are shown")
    ap.add_argument("--store", help="a store made by `netdsl pack` (default: .npy shards)")
    ap.add_argument("--torch-python", help="a Python with torch and torchvision")
    ap.add_argument("--memory", metavar="N,N", help="instead: peak RSS of training from "
                    "memmapped stores of these sizes (e.g. 100000,400000)")  # fmt: skip
    ap.add_argument("--e2e", type=int, metavar="N", help="instead: train an AlexNet-shaped "
                    "net for one epoch on N packed JPEGs")  # fmt: skip
    args = ap.parse_args(argv)
    root = Path(args.dir)
    if args.e2e:
        end_to_end(root, args.e2e, int(args.workers.split(",")[0]))
        return 0
    if args.memory:
        memory(root, [int(v) for v in args.memory.split(",")],
               [int(w) for w in args.workers.split(",")])  # fmt: skip
        return 0
    folder = make_folder(root, args.images)
    store = open_store(args.store) if args.store else ShardSource(pack_shards(folder, root))
    folder_src = FolderSource(folder)
    workers = [int(w) for w in args.workers.split(",")]
    where = args.store or store.path
    cpus = len(os.sched_getaffinity(0))
    print(f"# {len(folder_src)} JPEGs in {folder}; store {where}; batch {BATCH}, crop {CROP} "
          f"of {SIZE}, flip, lighting, normalise; {args.batches} timed batches; cpus {cpus}, "
          f"load {_load()}")  # fmt: skip
    rows = []
    for w in workers:
        # the three alternate, `--runs` times: a load that comes and goes hits all alike
        runs: dict[str, list[float]] = {"store": [], "folder": [], "torch": []}
        for _ in range(args.runs):
            runs["store"].append(netdsl_rate(store, w, args.batches))
            runs["folder"].append(netdsl_rate(folder_src, w, args.batches))
            if args.torch_python:
                runs["torch"].append(torch_rate(args.torch_python, folder, w, args.batches))
        print(
            f"# {w} worker(s), each run: "
            + "; ".join(f"{k} {', '.join(f'{v:.0f}' for v in vs)}" for k, vs in runs.items() if vs)
        )
        rows.append({"workers": w, **{k: float(np.median(v)) for k, v in runs.items() if v}})
    print(f"# medians of {args.runs} runs")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`netdsl pack SRC OUT`: turn a data set into a packed store (netdsl/train/store.py).

SRC is an image folder (train/CLASS/*.jpg, val/CLASS/*.jpg), an IDX folder, CIFAR-10
batches, an .npz (or ``mnist``). Image folders are decoded in worker processes (a
multiprocessing Pool, files in chunks, results in file order); files that cannot be
decoded are listed, skipped, counted in the summary and recorded in the manifest.

The store is built in a temporary folder beside OUT (``.OUT.packing-PID``) and renamed
to OUT at the end, its manifest written last, so a pack that is killed leaves no folder
that looks like a store; the next pack into OUT removes such a leftover and says so.
Ctrl-C stops the workers and removes the temporary folder (exit status 130).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from ..cli import path_arg, positive_int

DEFAULT_SHARD_MB = 256
CHUNK_FILES = 32  # files decoded per task sent to a worker


def add_command(sub) -> None:
    """Register `netdsl pack` on the CLI's subparsers."""
    p = sub.add_parser(
        "pack",
        help="pack an image folder, IDX files, CIFAR-10 batches or an .npz into a store "
        "that training reads from disk",
    )
    p.add_argument("src", metavar="SRC", type=path_arg,
                   help="an image folder (train/CLASS/*.jpg, val/CLASS/*.jpg), an IDX folder, "
                        "a CIFAR-10 batches folder, an .npz or mnist; with --verify: a "
                        "store")  # fmt: skip
    p.add_argument("out", metavar="OUT", type=path_arg, nargs="?",
                   help="the store folder to write")  # fmt: skip
    p.add_argument("--size", type=positive_int,
                   help="image folders: resize the shorter side to SIZE and cut the centre "
                        "SIZExSIZE square (default 256, or the images' own size when "
                        "smaller)")  # fmt: skip
    p.add_argument("--shard-size", type=positive_int, default=DEFAULT_SHARD_MB, metavar="MB",
                   help=f"megabytes per shard file (default {DEFAULT_SHARD_MB})")  # fmt: skip
    p.add_argument("--workers", type=positive_int,
                   help="decoding processes (default: the machine's CPU count)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT when it is a store already")  # fmt: skip
    p.add_argument("--verify", action="store_true",
                   help="check the store SRC: recompute its fingerprint from every "
                        "byte")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_pack)


def cmd_pack(args) -> int:
    from .store import verify_store

    if args.verify:
        if args.out is not None:
            print("netdsl pack: error: --verify takes one store: netdsl pack --verify STORE",
                  file=sys.stderr)  # fmt: skip
            return 2
        print(verify_store(args.src))
        return 0
    if args.out is None:
        print("netdsl pack: error: give the store folder to write: netdsl pack SRC OUT",
              file=sys.stderr)  # fmt: skip
        return 2
    r = pack(args.src, args.out, size=args.size, shard_mb=args.shard_size,
             workers=args.workers, overwrite=args.overwrite,
             progress=not args.quiet and sys.stderr.isatty())  # fmt: skip
    print(summary_line(r))
    for s in r["skipped"][:10]:
        print(f"  skipped {s['file']}: {s['why']}")
    if len(r["skipped"]) > 10:
        print(f"  ... and {len(r['skipped']) - 10} more (all listed in {r['out']}/manifest.json)")
    return 0


def summary_line(r: dict[str, Any]) -> str:
    """The one line `netdsl pack` prints at the end."""
    from .progress import format_duration

    counts = ", ".join(f"{k} {v:,}" for k, v in r["counts"].items())
    shape = "x".join(map(str, r["image_shape"]))
    line = (f"packed {sum(r['counts'].values()):,} images ({counts}) of {shape} into "
            f"{r['out']}: {r['bytes'] / 1e6:,.1f} MB in {r['shards']} shard(s), "
            f"{format_duration(r['seconds'])}")  # fmt: skip
    if r["skipped"]:
        line += (f"; skipped {len(r['skipped'])} file(s) that could not be decoded "
                 "(listed below and in the manifest)")  # fmt: skip
    return line


# ------------------------------------------------------------------ the work


def pack(src: str | os.PathLike, out: str | os.PathLike, *, size: int | None = None,
         shard_mb: int = DEFAULT_SHARD_MB, workers: int | None = None,
         overwrite: bool = False, progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Pack ``src`` into the store folder ``out``; returns what was done (counts, bytes,
    shards, skipped files, seconds). Raises DataError (naming the path) before any work
    when ``out`` exists (a store needs ``overwrite``; anything else is never replaced)."""
    from ..errors import DataError
    from .data import load_dataset
    from .images import is_image_folder, print_notes, scan_image_folder
    from .paths import show_path
    from .runinfo import now_iso, resolve_spec
    from .store import MANIFEST, is_store

    t0 = time.perf_counter()
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise DataError(f"{show_path(out)}: is a file, not a store folder")
        if not overwrite:
            raise DataError(f"{show_path(out)}: already exists; pass --overwrite to replace "
                            "the store, or choose another OUT")  # fmt: skip
        if not is_store(out) and any(out.iterdir()):
            raise DataError(f"{show_path(out)}: holds files but no {MANIFEST}: not a store, "
                            "so --overwrite does not replace it; choose another OUT")  # fmt: skip
    if not out.parent.is_dir():
        raise DataError(f"{show_path(out.parent)}: no such folder to write the store into")
    _clear_leftovers(out)
    spec = str(src)
    path = Path(src)
    folder = None
    if path.is_dir() and is_image_folder(path):
        folder = scan_image_folder(path, size=size)
        print_notes(folder.notes)
        shape = (folder.channels, folder.size, folder.size)
        source_desc = os.path.abspath(path)
    else:
        ds = load_dataset(spec)
        if size is not None:
            print(f"note: --size applies to image folders; {spec} keeps its "
                  f"{'x'.join(map(str, ds.image_shape[1:]))} images", file=sys.stderr)  # fmt: skip
        shape = ds.image_shape
        source_desc = resolve_spec(spec, None)
    tmp = out.parent / f".{out.name}.packing-{os.getpid()}"
    tmp.mkdir()
    try:
        shard_images = max(1, shard_mb * (1 << 20) // max(1, shape[0] * shape[1] * shape[2]))
        from .store import StoreWriter

        writer = StoreWriter(tmp, shape, shard_images)
        bar = _Bar(progress)
        if folder is not None:
            skipped = _pack_folder(folder, writer, workers, bar)
            names, classes, name = list(folder.class_names), len(folder.class_names), path.name
        else:
            skipped = []
            _pack_arrays(ds, writer, bar)
            names, classes, name = None, ds.num_classes, ds.name
        bar.done()
        counts = {s: e["count"] for s, e in writer.splits.items()}
        if counts.get("train", 0) == 0:
            raise DataError(f"{show_path(src)}: no training image could be decoded")
        writer.drop_empty(["test"])
        counts = {s: e["count"] for s, e in writer.splits.items()}
        manifest = _manifest(writer, name, source_desc, names, classes, skipped, folder)
        manifest["created"] = now_iso()
        from .store import store_fingerprint

        manifest["fingerprint"] = store_fingerprint(tmp, manifest)
        _write_manifest(tmp / MANIFEST, manifest)  # last: only now does tmp look complete
        _swap_in(tmp, out)
    except BaseException:  # Ctrl-C and errors alike: no partial store stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    total = sum(sh["bytes"] for e in manifest["splits"].values() for sh in e["shards"])
    return {
        "out": show_path(out),
        "counts": counts,
        "image_shape": list(shape),
        "bytes": total,
        "shards": sum(len(e["shards"]) for e in manifest["splits"].values()),
        "skipped": skipped,
        "seconds": time.perf_counter() - t0,
        "fingerprint": manifest["fingerprint"],
    }


def _clear_leftovers(out: Path) -> None:
    """Remove the temporary folders of packs into ``out`` whose process is gone (killed);
    refuse when another pack into ``out`` is still running."""
    from ..errors import DataError
    from .paths import show_path

    for p in sorted(out.parent.glob(f".{out.name}.packing-*")):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and _alive(int(pid)) and int(pid) != os.getpid():
            raise DataError(f"{show_path(p)}: another pack into {show_path(out)} is running "
                            f"(process {pid}); wait for it or stop it")  # fmt: skip
        shutil.rmtree(p, ignore_errors=True)
        print(f"note: removed {show_path(p)}, the unfinished store of a pack that was "
              "stopped", file=sys.stderr)  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename the finished store to ``out``; an old store there is moved aside first and
    removed after, so ``out`` is always either the old store or the new one."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    import json

    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(manifest, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _manifest(writer, name, source, names, classes, skipped, folder) -> dict[str, Any]:
    from .. import __version__
    from .store import FORMAT, VERSION

    stats = writer.sums.stats()
    m: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "name": name,
        "source": source,
        "netdsl": __version__,
        "image_shape": list(writer.image_shape),
        "classes": int(classes),
        "class_names": names,
        "splits": writer.splits,
        "stats": stats.to_json() if stats is not None else None,
        "skipped": skipped,
    }
    if folder is not None:
        m["preprocess"] = {"resize_shorter_side": folder.size, "center_crop": folder.size,
                           "channels": folder.channels, "test_folder": folder.test_dir}  # fmt: skip
    return m


def _pack_arrays(ds, writer, bar: _Bar, chunk: int = 1024) -> None:
    import numpy as np

    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        writer.begin(split)
        bar.start(split, len(y))
        for s in range(0, len(y), chunk):
            part = np.asarray(x[s : s + chunk])
            if part.dtype != np.uint8:  # float images in [0, 1]: stored as bytes
                part = np.clip(np.rint(part * 255.0), 0, 255).astype(np.uint8)
            writer.add(part, y[s : s + chunk])
            bar.advance(len(part))
        writer.end()


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us


def _pack_folder(folder, writer, workers: int | None, bar: _Bar) -> list[dict[str, str]]:
    """Decode every file of the folder into the writer; returns the files skipped."""
    import multiprocessing

    workers = workers or _cpus()
    skipped: list[dict[str, str]] = []
    for split in ("train", "test"):
        if split not in folder.splits:
            continue
        files, labels = folder.splits[split]
        tasks = [(str(folder.root), files[i : i + CHUNK_FILES], labels[i : i + CHUNK_FILES],
                  folder.size, folder.channels, split == "train")
                 for i in range(0, len(files), CHUNK_FILES)]  # fmt: skip
        writer.begin(split)
        bar.start(split, len(files))
        if workers == 1:
            results = map(decode_chunk, tasks)
            _consume(results, writer, bar, skipped)
        else:
            ctx = multiprocessing.get_context("spawn" if sys.platform == "win32" else None)
            pool = ctx.Pool(min(workers, len(tasks)), initializer=_ignore_sigint)
            try:
                _consume(pool.imap(decode_chunk, tasks), writer, bar, skipped)
                pool.close()
            except BaseException:
                pool.terminate()
                raise
            finally:
                pool.join()
        writer.end()
    return skipped


def _consume(results, writer, bar: _Bar, skipped: list[dict[str, str]]) -> None:
    for images, labels, sums, bad in results:
        if len(images):
            writer.add(images, labels, sums)
        skipped += bad
        bar.advance(len(images) + len(bad))


def decode_chunk(task) -> tuple[Any, Any, Any, list[dict[str, str]]]:
    """Decode a chunk of files (in a worker): (images, labels, pixel sums or None,
    [{"file", "why"}] for each file that could not be decoded)."""
    import numpy as np

    from ..errors import DataError
    from .images import decode_file
    from .store import PixelSums

    root, files, labels, size, channels, with_sums = task
    out = np.empty((len(files), channels, size, size), np.uint8)
    keep = np.zeros(len(files), bool)
    bad = []
    for k, f in enumerate(files):
        try:
            out[k] = decode_file(Path(root) / f, size, channels)
            keep[k] = True
        except DataError as e:
            why = str(e).split(": ", 1)[-1]
            bad.append({"file": f, "why": why})
    images = out[keep]
    sums = None
    if with_sums:
        sums = PixelSums(channels)
        sums.add(images)
    return images, np.asarray(labels)[keep], sums, bad


class _Bar:
    """A one-line progress display on a terminal (stderr): images done, rate and ETA."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.split, self.total, self.done_n = "", 0, 0
        self.t0 = self.last = time.perf_counter()

    def start(self, split: str, total: int) -> None:
        self.split, self.total, self.done_n = split, total, 0
        self.t0 = time.perf_counter()
        self._draw(force=True)

    def advance(self, n: int) -> None:
        self.done_n += n
        self._draw()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        from .progress import format_duration

        now = time.perf_counter()
        if not force and now - self.last < 0.1 and self.done_n < self.total:
            return
        self.last = now
        rate = self.done_n / max(now - self.t0, 1e-9)
        eta = (self.total - self.done_n) / rate if rate > 0 else 0.0
        frac = self.done_n / max(self.total, 1)
        width = 24
        fill = "#" * int(frac * width)
        line = (f"\rpack {self.split} [{fill:<{width}}] {self.done_n:,}/{self.total:,} images  "
                f"{rate:,.0f}/s  ETA {format_duration(eta)}")  # fmt: skip
        cols = shutil.get_terminal_size((100, 20)).columns
        sys.stderr.write(line[: cols - 1] + "\x1b[K")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _cpus() -> int:
    """The CPUs this process may run on (a container's share, not the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1

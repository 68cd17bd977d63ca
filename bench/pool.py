"""The image pool's tiers, measured: ``python -m bench.pool``.

Fills one pool per tier with ``--n`` CIFAR-size uint8 images (default 1M, 3.07 GB each), then times
drawing KD batches from it: ``sample(batch)`` as the KD loop calls it (shuffle position, gather,
copy to the device, decode to float), device-synchronised, median over ``--batches`` draws
after 3 warm-up draws. Tiers:

* ``device``: the whole pool on the training device (the default; one gather there);
* ``host``: ``--pool_device_gb 0``: the pool in host memory (pinned when CUDA is present),
  each batch gathered on the host and copied over;
* ``disk``: ``--pool_device_gb 0 --pool_host_gb 0``: a memory-mapped file, each batch read
  with sorted indices and copied over.

On a CPU-only machine ``device`` and ``host`` are both host memory; the disk figures are with a
warm page cache whenever the file fits in free memory (the file was just written), so they
bound the cost of the map, not of a cold disk.

    python -m bench.pool                      # 1M images, about 2 minutes on 2 CPU cores
    python -m bench.pool --n 100000 --json run/bench/pool.json
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import torch

from bench import save_json
from datafree.pool import ImagePool
from engine.utils import library_versions, resolve_device, synchronize

TIER_SETTINGS = {"device": {}, "host": {"device_bytes": 0}, "disk": {"device_bytes": 0, "host_bytes": 0}}


def fill(pool: ImagePool, n: int, shape, chunk: int = 20000) -> float:
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for i in range(0, n, chunk):
        pool.add(torch.randint(0, 256, (min(chunk, n - i),) + tuple(shape), dtype=torch.uint8, generator=g))
    synchronize(pool.device)
    return time.perf_counter() - t0


def time_sampling(pool: ImagePool, batch: int, batches: int) -> float:
    for _ in range(3):
        pool.sample(batch)
    times = []
    for _ in range(batches):
        synchronize(pool.device)
        t0 = time.perf_counter()
        pool.sample(batch)
        synchronize(pool.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="images per pool")
    ap.add_argument("--size", type=int, default=32, help="image side (3 channels)")
    ap.add_argument("--batch", type=int, default=256, help="KD batch size")
    ap.add_argument("--batches", type=int, default=50, help="timed draws per tier")
    ap.add_argument("--tiers", nargs="+", default=list(TIER_SETTINGS), choices=list(TIER_SETTINGS))
    ap.add_argument("--spill_dir", default=None, help="folder of the disk tier's file (default: a temporary folder)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    shape = (3, args.size, args.size)
    spill = args.spill_dir or tempfile.mkdtemp(prefix="bench_pool_")
    rows = []
    print(f"pool of {args.n:,} uint8 images {shape}, KD batch {args.batch}, device {device}")
    print(f"{'tier':<8} {'fill (s)':>9} {'device MB':>10} {'host MB':>9} {'disk MB':>9} {'ms / batch':>11}")
    try:
        for tier in args.tiers:
            pool = ImagePool(device, seed=0, spill_dir=spill, **TIER_SETTINGS[tier])
            fill_s = fill(pool, args.n, shape)
            ms = 1000 * time_sampling(pool, args.batch, args.batches)
            mem = {k: v / 2**20 for k, v in pool.memory_bytes().items()}
            rows.append({"tier": tier, "images": len(pool), "held": pool.tier_sizes(), "fill_s": fill_s,
                         "memory_mb": mem, "sample_ms_per_batch": ms})
            print(f"{tier:<8} {fill_s:>9.1f} {mem['device']:>10.0f} {mem['host']:>9.0f} {mem['disk']:>9.0f} {ms:>11.2f}")
            del pool
    finally:
        if args.spill_dir is None:
            shutil.rmtree(spill, ignore_errors=True)
    out = {"n": args.n, "shape": shape, "batch": args.batch, "device": str(device), "rows": rows,
           "versions": library_versions(),
           "note": "allocated bytes per tier (buffers grow geometrically, so up to 2x the images' size); "
                   "disk timings with whatever page cache the machine had"}
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()

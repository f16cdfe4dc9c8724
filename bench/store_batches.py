"""Reader throughput for training batches of store neighbours vs random batches (band-6, LibriSpeech-shaped).

The training loader batches store neighbours (kdstore.distill.samplers.StoreOrderBatchSampler), so a batch is one
contiguous slice per array.   python bench/store_batches.py
"""
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import store as B

from kdstore.store import StoreReader

durations = B.sample_durations(1.0, 0)
teacher = B.SyntheticTeacher(seed=0)
root = Path(tempfile.mkdtemp())
group, part = B.new_part(root / "b6.zarr", 6, None)
for i, d in enumerate(durations):
    dense = teacher.lattice(i, float(d))
    part.add_utterance(B.utterance_key(i, d), **B.store_rows(dense, 6, B.occupancy_of(dense)))
part.close(); B.commit(group, 6, float(durations.sum()) / 3600)
for backend in ("zarr", "tensorstore"):
    r = StoreReader(str(root / "b6.zarr"), backend=backend); n = len(r)
    order = sorted(range(n), key=lambda i: (int(r.part_of[i]), int(r.index_in_part[i])))
    for mode in ("random", "store neighbours"):
        random.seed(0); t = time.perf_counter(); done = 0
        while time.perf_counter() - t < 3.0:
            if mode == "random": idx = random.sample(range(n), 16)
            else:
                s0 = random.randrange(0, n - 16); idx = order[s0:s0 + 16]
            r.read_batch([r.keys[i] for i in idx], dense=False); done += 16
        print(f"{backend:12s} {mode:17s} {done / (time.perf_counter() - t):8.0f} utt/s  ({n} utts, {durations.sum()/3600:.2f} h)", flush=True)

"""The order of training examples in one epoch: a seeded shuffle, optionally grouped by length.

`epoch_order` returns every example index once; consecutive slices of `batch_size` are the global
batches (the last one may be short), so a run that resumes mid-epoch finds the same batches again.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import mix_seed

MEGA_BATCHES = 50  # batches per length-sorted mega-batch (as transformers' LengthGroupedSampler)


def epoch_order(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                group_by_length: bool = False) -> list[int]:
    """The example order of `epoch`: a permutation seeded by (seed, epoch), optionally length-grouped.

    Length grouping (like the `group_by_length` of transformers' Trainer): the shuffled examples are cut
    into mega-batches of up to 50 batches, each sorted by length (longest first) and cut into batches; the
    full batches are shuffled, the longest is put first (memory errors show at once) and a short last
    batch stays last. Batches hold examples of similar length, so dynamic padding wastes little.
    """
    gen = torch.Generator().manual_seed(mix_seed(seed, epoch))
    perm = torch.randperm(len(lengths), generator=gen).tolist()
    if not group_by_length:
        return perm
    n_mega = max(1, min(MEGA_BATCHES, len(perm) // (batch_size * 4)))
    mega = n_mega * batch_size
    ordered = []
    for start in range(0, len(perm), mega):
        chunk = perm[start:start + mega]
        ordered.extend(sorted(chunk, key=lambda i: -int(lengths[i])))  # stable: ties keep the shuffled order
    batches = [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]
    tail = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    shuffled = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
    if shuffled:
        longest = max(range(len(shuffled)), key=lambda b: int(lengths[shuffled[b]].max()))
        shuffled[0], shuffled[longest] = shuffled[longest], shuffled[0]
    return [i for batch in shuffled + tail for i in batch]

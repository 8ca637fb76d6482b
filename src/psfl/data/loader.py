"""Per-client tensors and a fast batch iterator for training loops (no DataLoader: the
data are already preprocessed tensors, so a batch is one ``index_select``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from psfl.data.partition import Partition
from psfl.data.preprocess import PreparedData
from psfl.utils.errors import PsflError


@dataclass(eq=False)
class ClientData:
    """One client's local data in model space (tensors owned by the client)."""

    cid: int
    x: Tensor  # (N_k, C, H, W) local training images
    y: Tensor  # (N_k,) int64
    x_test: Tensor  # (T_k, C, H, W) local test images
    y_test: Tensor  # (T_k,)

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _take(t: Tensor, idx: np.ndarray) -> Tensor:
    return t.index_select(0, torch.as_tensor(idx, dtype=torch.long, device=t.device))


def client_datasets(prepared: PreparedData, partition: Partition,
                    test_indices: list[np.ndarray] | None = None) -> list[ClientData]:
    """Gather every client's local train/test samples once (one ``index_select`` each).

    ``test_indices`` (one array per client, into the *test* split; see
    :func:`psfl.data.local_test_from_test_split`) replaces the held-out training
    samples as local test sets."""
    if test_indices is None:
        return [
            ClientData(k, _take(prepared.x_train, tr), _take(prepared.y_train, tr),
                       _take(prepared.x_train, te), _take(prepared.y_train, te))
            for k, (tr, te) in enumerate(zip(partition.train_indices, partition.test_indices))
        ]
    if len(test_indices) != partition.num_clients:
        raise ValueError(f"{len(test_indices)} local test sets for {partition.num_clients} clients")
    return [
        ClientData(k, _take(prepared.x_train, tr), _take(prepared.y_train, tr),
                   _take(prepared.x_test, te), _take(prepared.y_test, te))
        for k, (tr, te) in enumerate(zip(partition.train_indices, test_indices))
    ]


def iterate_batches(x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator | None = None,
                    shuffle: bool = True, drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of ``(x_batch, y_batch)``: a permutation drawn from ``generator`` (CPU) when
    ``shuffle``, else contiguous slices (views). Every sample appears once per epoch; the last
    short batch is dropped only with ``drop_last``."""
    if batch_size < 1:
        raise PsflError(f"batch_size must be >= 1, got {batch_size}")
    n = int(x.shape[0])
    if int(y.shape[0]) != n:
        raise ValueError(f"x has {n} samples but y has {int(y.shape[0])}")
    stop = n - n % batch_size if drop_last else n
    if not shuffle:
        for i in range(0, stop, batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]
        return
    if generator is None:
        raise ValueError("iterate_batches(shuffle=True) needs a seeded torch.Generator")
    perm = torch.randperm(n, generator=generator).to(x.device)
    for i in range(0, stop, batch_size):
        idx = perm[i:i + batch_size]
        yield x.index_select(0, idx), y.index_select(0, idx.to(y.device))

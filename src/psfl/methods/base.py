"""The method interface and the environment every method runs in.

A method is server logic + client logic + codecs. Everything that crosses the network
is ``bytes``: the server's broadcast and each client's upload. The in-process runner
and the Flower engine call the same methods:

    server.broadcast(rnd, snrs_db) -> (payload, metrics)        downlink bytes
    client.client_update(cid, state, rnd, payload, snr_db, g)   -> ClientResult (upload bytes)
    server.aggregate(rnd, uploads)                              decodes the uploads' bytes

Client state (a personalised mentor, optimiser state, error-feedback residuals) is a
plain dict of tensors held by the runner, never a model object per client.
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from psfl.config import RunConfig
from psfl.registry import Registry


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integer parts (run seed, round, client, purpose)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def make_generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def clone_state(state: dict[str, Any]) -> dict[str, Any]:
    """Detached deep copy of a (possibly nested) state of tensors."""
    if isinstance(state, Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: clone_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(clone_state(v) for v in state)
    return copy.deepcopy(state)


@dataclass
class Upload:
    cid: int
    payload: bytes
    num_samples: int  # N_k, the FedAvg weight (Eq. 10)


@dataclass
class ClientResult:
    payload: bytes
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class FederatedEnv:
    """Everything a method needs, built once from the config (shared by all runners)."""

    cfg: RunConfig
    clients: list[Any]  # psfl.data.ClientData per client
    volumes: list[int]  # N_k
    evaluator: nn.Module  # frozen classifier scoring reconstructions
    img_size: int
    in_chans: int
    num_classes: int
    test_x: Tensor  # global test subset, model input space
    test_y: Tensor
    input: Any  # ResolvedInput (for de-normalising)
    class_counts: np.ndarray | None = None
    _pool: dict[str, nn.Module] = field(default_factory=dict)

    def model(self, preset: str) -> nn.Module:
        """One model object per architecture, reused by every client (seeded init)."""
        if preset not in self._pool:
            from psfl.models import create_model

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(self.cfg.seed, 0xA11, *map(ord, preset)))
                self._pool[preset] = create_model(preset, img_size=self.img_size, in_chans=self.in_chans)
        return self._pool[preset]

    def fresh_state(self, preset: str, *seed_parts: int) -> dict[str, Tensor]:
        """Initial weights of ``preset`` drawn under a seed derived from ``seed_parts``."""
        from psfl.models import create_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.cfg.seed, *seed_parts))
            m = create_model(preset, img_size=self.img_size, in_chans=self.in_chans)
        return {k: v.detach() for k, v in m.state_dict().items()}

    def preset(self, tier_or_name: str) -> str:
        """'M'/'L'/'H'/'CSC' -> '{family}-M' etc.; full names pass through."""
        if "-" in tier_or_name:
            return tier_or_name
        return f"{self.cfg.model.family}-{tier_or_name}"


def local_batches(x: Tensor, y: Tensor, batch_size: int, local_steps: int, local_epochs: int,
                  generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """G local epochs (Algorithm 1) when ``local_epochs`` > 0, else exactly
    ``local_steps`` steps cycling over reshuffled epochs."""
    from psfl.data import iterate_batches

    if local_epochs > 0:
        for _ in range(local_epochs):
            yield from iterate_batches(x, y, batch_size, generator, shuffle=True)
        return
    done = 0
    while done < local_steps:
        for xb, yb in iterate_batches(x, y, batch_size, generator, shuffle=True):
            yield xb, yb
            done += 1
            if done >= local_steps:
                return


OPTIMIZERS: Registry[type[torch.optim.Optimizer]] = Registry("optimizer")
OPTIMIZERS.register("sgd")(torch.optim.SGD)
OPTIMIZERS.register("adam")(torch.optim.Adam)
OPTIMIZERS.register("adamw")(torch.optim.AdamW)


def make_optimizer(name: str, params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    cls = OPTIMIZERS.get(name)
    kw: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if cls is torch.optim.SGD:
        kw["momentum"] = momentum
    return cls(params, **kw)


def clipped_step(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    """Clip the optimiser's gradients to ``max_norm`` (if > 0), then step."""
    if max_norm > 0:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()


class FederatedMethod(ABC):
    """Server + client logic of one method. Subclasses register in :data:`METHODS`."""

    name: str = ""

    def __init__(self, env: FederatedEnv, options: dict[str, Any] | None = None) -> None:
        self.env = env
        self.cfg = env.cfg
        self.options = dict(options or {})

    # ---------------------------------------------------------------- server side
    @abstractmethod
    def init_server(self) -> None: ...

    @abstractmethod
    def broadcast(self, rnd: int, snrs_db: np.ndarray) -> tuple[bytes, dict[str, float]]:
        """Serialized global model for round ``rnd`` (+ server metrics, e.g. zeta)."""

    @abstractmethod
    def aggregate(self, rnd: int, uploads: list[Upload]) -> dict[str, float]:
        """Decode the uploads from their bytes and update the global model."""

    @abstractmethod
    def global_model(self) -> nn.Module:
        """A model loaded with the current global weights (for evaluation)."""

    @abstractmethod
    def server_state(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_server_state(self, state: dict[str, Any]) -> None: ...

    # ---------------------------------------------------------------- client side
    @abstractmethod
    def init_client(self, cid: int) -> dict[str, Any]: ...

    @abstractmethod
    def client_update(self, cid: int, state: dict[str, Any], rnd: int, payload: bytes,
                      snr_db: float, generator: torch.Generator) -> ClientResult:
        """Local training from the broadcast; mutates ``state``; returns the upload."""

    def participants(self, rnd: int, num_clients: int) -> list[int]:
        """Clients that train and upload in round ``rnd`` (all by default)."""
        return list(range(num_clients))


METHODS: Registry[type[FederatedMethod]] = Registry("method")


def build_env(cfg: RunConfig, progress: bool = True) -> FederatedEnv:
    """Data, partition, evaluator and the global test subset for a run (deterministic)."""
    from psfl import data as D
    from psfl.evaluate import load_evaluator
    from psfl.models import MODELS

    ds = D.load_dataset(cfg.data.dataset, source=cfg.data.source, data_dir=cfg.data.data_dir)
    student_preset = cfg.model.student or f"{cfg.model.family}-CSC"
    spec = D.INPUT_PRESETS.get(MODELS.get(student_preset).input_preset)
    prepared = D.prepare(ds, spec)
    part = D.make_partition(
        ds.y_train, num_classes=ds.num_classes, num_clients=cfg.data.num_clients,
        scheme=cfg.data.scheme, alpha=cfg.data.alpha, sizes=cfg.data.sizes,
        min_size=cfg.data.min_client_size, local_test_fraction=cfg.data.local_test_fraction,
        seed=cfg.seed,
    )
    clients = D.client_datasets(prepared, part)
    if cfg.data.local_eval_samples > 0:  # a fixed seeded subset of each local test split
        for c in clients:
            n = c.x_test.shape[0]
            if n > cfg.data.local_eval_samples:
                keep = torch.randperm(n, generator=make_generator(cfg.seed, 0x10C, c.cid))
                keep = keep[: cfg.data.local_eval_samples].sort().values
                c.x_test, c.y_test = c.x_test[keep], c.y_test[keep]
    evaluator = load_evaluator(
        dataset=cfg.data.dataset, source=cfg.data.source, data_dir=cfg.data.data_dir,
        input_preset=spec.name, arch=cfg.evaluator.arch, epochs=cfg.evaluator.epochs,
        checkpoint=cfg.evaluator.checkpoint or None, cache_dir=cfg.evaluator.cache_dir or None,
        train_if_missing=True, progress=progress, seed=cfg.seed,
    )
    evaluator.eval()
    for p in evaluator.parameters():
        p.requires_grad_(False)
    n_test = prepared.x_test.shape[0]
    k = n_test if cfg.data.eval_samples <= 0 else min(cfg.data.eval_samples, n_test)
    idx = torch.randperm(n_test, generator=make_generator(cfg.seed, 0x7E57))[:k].sort().values
    x_test, y_test = prepared.x_test[idx], prepared.y_test[idx]
    return FederatedEnv(
        cfg=cfg, clients=clients, volumes=[int(c.x.shape[0]) for c in clients], evaluator=evaluator,
        img_size=prepared.input.size, in_chans=prepared.input.channels, num_classes=ds.num_classes,
        test_x=x_test, test_y=y_test, input=prepared.input, class_counts=part.class_counts,
    )

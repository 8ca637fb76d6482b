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
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from psfl.config import RunConfig, channel_kwargs
from psfl.utils.errors import DivergenceError
from psfl.models.checkpoints import state_digest
from psfl.training.optim import make_optimizer  # noqa: F401  (re-exported for methods)
from psfl.utils.registry import Registry


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


@dataclass(frozen=True)
class ClientShards:
    """The clients' data: one ``psfl.data.ClientData`` each (local training images, and
    local test images drawn from the test split) and N_k, the FedAvg weights."""

    clients: list[Any]
    volumes: list[int]  # N_k
    class_counts: np.ndarray | None = None  # (K, classes) of the partition


@dataclass(frozen=True)
class Evaluators:
    """The frozen classifiers and what scores a model: ``loss_classifier`` sits inside the
    task loss (Eqs. 15/16); ``scorer``, trained independently, alone scores accuracy; the
    global test subset (test split only) and the MSE weight of the task loss."""

    loss_classifier: nn.Module
    scorer: nn.Module
    test_x: Tensor  # global test subset, model input space
    test_y: Tensor
    input: Any  # ResolvedInput (for de-normalising)
    num_classes: int
    mse_scale: float = 1.0  # weight of MSE(m, m_hat) in model space (train.mse_weight / mse_space)

    def task_terms(self, out: Any, x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Eqs. 15/16 for one model output with the loss classifier and MSE weight."""
        from psfl.fl.pld import task_terms

        return task_terms(out, x, y, self.loss_classifier, self.mse_scale)


class ModelFactory:
    """Models by preset: one object per architecture, reused by every client (seeded
    init, the configured channel installed, on ``device``), and seeded initial states."""

    def __init__(self, seed: int, family: str, img_size: int, in_chans: int, channel: nn.Module,
                 device: torch.device, bandwidth_ratio: float | None = None) -> None:
        self.seed, self.family, self.img_size, self.in_chans = seed, family, img_size, in_chans
        self.channel, self.device = channel, device
        self.bandwidth_ratio = bandwidth_ratio  # k/n of every model (None: each preset's own c)
        self._pool: dict[str, nn.Module] = {}

    def model(self, preset: str) -> nn.Module:
        if preset not in self._pool:
            from psfl.models import create_model

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(self.seed, 0xA11, *map(ord, preset)))
                m = create_model(preset, img_size=self.img_size, in_chans=self.in_chans,
                                 bandwidth_ratio=self.bandwidth_ratio)
            m.channel = self.channel
            self._pool[preset] = m.to(self.device, memory_format=m.memory_format)
        return self._pool[preset]

    def fresh_state(self, preset: str, *seed_parts: int) -> dict[str, Tensor]:
        """Initial weights of ``preset`` drawn under a seed derived from ``seed_parts`` (CPU
        tensors: server-side states stay on the CPU; models load them onto their device)."""
        from psfl.models import create_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, *seed_parts))
            m = create_model(preset, img_size=self.img_size, in_chans=self.in_chans,
                             bandwidth_ratio=self.bandwidth_ratio)
        return {k: v.detach() for k, v in m.state_dict().items()}

    def preset(self, tier_or_name: str) -> str:
        """'M'/'L'/'H'/'CSC' -> '{family}-M' etc.; full names pass through."""
        return tier_or_name if "-" in tier_or_name else f"{self.family}-{tier_or_name}"

    def models(self) -> dict[str, nn.Module]:
        """The models built so far, by preset."""
        return dict(self._pool)


@dataclass(frozen=True)
class FederatedEnv:
    """What a run's methods share, built once from the config by :func:`build_env` and
    never reassigned: the clients' data, the evaluators, the model factory, the seed
    they were drawn with, and the provenance record. A method's own settings come with
    its config (``FederatedMethod(env, options, cfg)``)."""

    data: ClientShards
    evaluators: Evaluators
    models: ModelFactory
    seed: int
    cfg: RunConfig  # the config the environment was built from (data, evaluators, models)
    provenance: dict[str, Any] = field(default_factory=dict)  # data, partition, evaluators, baselines

    def local_accuracy(self, model: nn.Module, cid: int, rnd: int, snr_db: float) -> float:
        """Scorer accuracy of ``model``'s reconstructions of client ``cid``'s local test
        images at ``snr_db`` (the seeded channel draw depends on round and client only)."""
        data = self.data.clients[cid]
        g = make_generator(self.seed, 0xE7A, rnd, cid)
        return accuracy_at(model, self.evaluators.scorer, data.x_test, data.y_test, snr_db, g)


class _Scored(nn.Module):
    """model -> reconstruction -> classifier logits, so an SC model can be scored by
    :func:`psfl.evaluate.classifier_accuracy` (one accuracy loop in the code base)."""

    def __init__(self, model: nn.Module, classifier: nn.Module, snr_db: float, generator: torch.Generator):
        super().__init__()
        self.model, self.classifier, self.snr_db, self.generator = model, classifier, snr_db, generator
        self.train(model.training)  # classifier_accuracy restores this mode afterwards

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.model(x, self.snr_db, generator=self.generator).x_hat)


def accuracy_at(model: nn.Module, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, snr_db: float,
                generator: torch.Generator, batch_size: int = 256) -> float:
    """``classifier`` accuracy on ``model``'s reconstructions of ``x`` at ``snr_db``."""
    from psfl.evaluate import classifier_accuracy

    return classifier_accuracy(_Scored(model, classifier, snr_db, generator), x, y, batch_size)


def check_finite(value: float, rnd: int, cid: int | None, quantity: str) -> float:
    """``value`` if finite, else :class:`DivergenceError` naming round, client, quantity."""
    if not math.isfinite(value):
        raise DivergenceError(rnd, cid, quantity, value)
    return value


def private_upload(cfg: RunConfig, local: dict[str, Tensor], start: dict[str, Tensor], model: nn.Module,
                   rnd: int, cid: int, mask: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """``local`` as the client may upload it under ``cfg.privacy`` (unchanged when off):
    clipped and noised update (:func:`psfl.fl.privacy.privatize`), noise drawn from its
    own seeded generator (round, client)."""
    p = cfg.privacy
    if p.clip <= 0:
        return local
    from psfl.fl.privacy import privatize, running_var_keys

    return privatize(local, start, p.clip, p.noise_multiplier, make_generator(cfg.seed, rnd, cid, 0xD9),
                     mask, running_var_keys(model))


def check_state_finite(state: dict[str, Tensor], rnd: int, cid: int | None, quantity: str) -> None:
    """Every floating tensor of ``state`` finite, else :class:`DivergenceError` naming the
    first bad tensor."""
    for k, v in state.items():
        if isinstance(v, Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise DivergenceError(rnd, cid, f"{quantity} {k}")


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




@dataclass
class MethodOptions:
    """Typed options of a method (``method_options.<name>`` in the config). Subclass it
    as a dataclass; :meth:`check` validates values (``where`` names the table)."""

    def check(self, where: str) -> None:
        pass


class FederatedMethod(ABC):
    """Server + client logic of one method. Subclasses register in :data:`METHODS` and
    declare their options as a dataclass ``Options``."""

    name: str = ""
    Options: type[MethodOptions] = MethodOptions
    uploads_updates: bool = False  # decode_upload gives a model update (else a model state)
    supports_privacy: bool = False  # its client_update applies private_upload (config [privacy])
    robust_aggregation: bool = False  # its server combines states with server.aggregation
    # its aggregate() is Eq. 10's weighted mean of decode_upload states, so it can run under
    # secure aggregation (server.secure_aggregation): decode_broadcast / decode_own_upload
    # give the clients' updates, apply_mean takes the mean that is all the server learns
    secure_aggregation: bool = False

    @classmethod
    def unused_fields(cls, cfg: RunConfig) -> list[str]:
        """Dotted config fields this method never reads under ``cfg`` (a non-default value
        there is rejected by ``RunConfig.validate`` instead of silently ignored)."""
        return []

    def __init__(self, env: FederatedEnv, options: MethodOptions | None = None, cfg: RunConfig | None = None) -> None:
        self.env = env
        self.cfg = cfg if cfg is not None else env.cfg
        self.options = options if options is not None else self.Options()
        if not isinstance(self.options, self.Options):
            raise TypeError(f"{type(self).__name__} takes {self.Options.__name__}, got {type(self.options).__name__}")

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

    def decode_upload(self, payload: bytes) -> dict[str, Tensor] | None:
        """An upload as the server aggregates it (a state, or an update when
        ``uploads_updates``), so that the runner can screen it before :meth:`aggregate`
        (decodable, right shapes, finite, plausible norm); raises on a malformed payload.
        None: this method does not expose its decoding (its uploads are not screened)."""
        return None

    def decode_broadcast(self, payload: bytes) -> dict[str, Tensor]:
        """Secure aggregation, either side: the state every client starts this round from,
        in :meth:`decode_upload`'s entries, from the broadcast bytes alone."""
        raise NotImplementedError(f"{self.name} does not support secure aggregation")

    def decode_own_upload(self, broadcast: bytes, upload: bytes) -> dict[str, Tensor]:
        """Secure aggregation, client side: what the server would decode from this
        client's ``upload`` (:meth:`decode_upload`), from the bytes alone."""
        raise NotImplementedError(f"{self.name} does not support secure aggregation")

    def apply_mean(self, rnd: int, mean: dict[str, Tensor]) -> dict[str, float]:
        """Secure aggregation, server side: the global update from the weighted mean
        (Eq. 10) of the clients' decoded uploads, the only thing the server learns."""
        raise NotImplementedError(f"{self.name} does not support secure aggregation")

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

    def round_metrics(self, clients: list[dict[str, Any]]) -> dict[str, float]:
        """Round-level metrics from the clients' metrics (the runner adds them to the
        round's record as they are named here)."""
        return {}

    def model_presets(self) -> list[str]:
        """The presets of the SC models this method trains or sends (recorded with their
        k/n in provenance.json); default: every model built so far."""
        return sorted(self.env.models.models())

    def participants(self, rnd: int, num_clients: int) -> list[int]:
        """Clients that train and upload in round ``rnd`` (all by default)."""
        return list(range(num_clients))


METHODS: Registry[type[FederatedMethod]] = Registry("method")


def _frozen(clf: nn.Module) -> nn.Module:
    clf.eval()
    for p in clf.parameters():
        p.requires_grad_(False)
    return clf


def run_dataset(cfg: RunConfig) -> Any:
    """The dataset a run trains and scores on: ``data.dataset`` from its source, seen
    through the validation view when ``data.validation_samples`` > 0 (its fingerprint is
    the one a run records)."""
    from psfl import data as D

    d = cfg.data
    ds = D.load_dataset(d.dataset, source=d.source, data_dir=d.data_dir)
    if d.validation_samples > 0:  # tuning: held-out training images stand in for the test split
        ds = D.validation_view(ds, d.validation_samples)
    return ds


def global_test_subset(n_test: int, eval_samples: int, seed: int) -> Tensor:
    """The (sorted) indices of the test images a run scores its global model on: all
    ``n_test`` (``eval_samples`` <= 0) or a subset of ``eval_samples`` drawn from the run's seed."""
    k = n_test if eval_samples <= 0 else min(eval_samples, n_test)
    return torch.randperm(n_test, generator=make_generator(seed, 0x7E57))[:k].sort().values


def global_accuracy_baselines(cfg: RunConfig) -> tuple[dict[str, float], int]:
    """The accuracy baselines (``psfl.evaluate.baselines.accuracy_baselines``) of the
    global test subset a run of ``cfg`` scores, and its size, from the run's data alone
    (what :func:`build_env` records in ``provenance["accuracy_baselines"]``)."""
    from psfl.evaluate.baselines import accuracy_baselines

    ds = run_dataset(cfg)
    idx = global_test_subset(int(ds.y_test.shape[0]), cfg.data.eval_samples, cfg.seed)
    return accuracy_baselines(np.asarray(ds.y_test)[idx.numpy()], int(ds.num_classes)), int(idx.numel())


def build_env(cfg: RunConfig, progress: bool = True, device: str | torch.device = "cpu") -> FederatedEnv:
    """Data, partition, the two frozen classifiers, the channel, the global test subset
    and the trivial baselines for a run (deterministic). ``device``: where models,
    classifiers and client data live (``psfl.utils.device.resolve_device``); every random draw
    stays on CPU generators, so a seed gives the same draws on every device."""
    from dataclasses import asdict

    from psfl import data as D
    from psfl.channel import create_channel
    from psfl.evaluate import load_evaluator
    from psfl.evaluate.baselines import accuracy_baselines, baselines_of, statistics_of
    from psfl.models import MODELS
    from psfl.training.losses import mse_scale_for

    from psfl.utils.device import resolve_device

    dev = resolve_device(device)
    d = cfg.data
    ds = run_dataset(cfg)
    student_preset = cfg.model.student or f"{cfg.model.family}-CSC"
    spec = D.INPUT_PRESETS.get(MODELS.get(student_preset).input_preset)
    prepared = D.prepare(ds, spec)
    part = D.make_partition(
        ds.y_train, num_classes=ds.num_classes, num_clients=d.num_clients, scheme=d.scheme, alpha=d.alpha,
        sizes=d.sizes, min_size=d.min_client_size, local_test_fraction=d.local_test_fraction, seed=cfg.seed,
    )
    # Local test images come from the test split (same class counts as the client's
    # held-out share of its partition): no image that trained a client or either
    # classifier ever scores anything.
    local_test = D.local_test_from_test_split(part, ds.y_train, ds.y_test, seed=derive_seed(cfg.seed, 0x10C))
    if d.local_eval_samples > 0:  # a fixed seeded subset of each local test set
        for k, idx in enumerate(local_test):
            if len(idx) > d.local_eval_samples:
                keep = torch.randperm(len(idx), generator=make_generator(cfg.seed, 0x10C, k))
                local_test[k] = np.sort(idx[keep[: d.local_eval_samples].numpy()])
    clients = D.client_datasets(prepared, part, test_indices=local_test)
    for c in clients:
        c.x, c.y, c.x_test, c.y_test = (t.to(dev) for t in (c.x, c.y, c.x_test, c.y_test))
    ev = cfg.evaluator
    common = dict(dataset=d.dataset, source=d.source, data_dir=d.data_dir, input_preset=spec.name,
                  cache_dir=ev.cache_dir or None, train_if_missing=True, progress=progress, dataset_obj=ds,
                  device=dev)
    loss_clf = _frozen(load_evaluator(arch=ev.arch, epochs=ev.epochs, seed=ev.seed,
                                      checkpoint=ev.checkpoint or None, **common))
    scorer = _frozen(load_evaluator(arch=ev.score_arch, epochs=ev.score_epochs, seed=ev.score_seed,
                                    checkpoint=ev.score_checkpoint or None, **common))
    idx = global_test_subset(prepared.x_test.shape[0], d.eval_samples, cfg.seed)
    x_test, y_test = prepared.x_test[idx], prepared.y_test[idx]
    res = prepared.input
    var = statistics_of(prepared).variance
    mse_scale = mse_scale_for(prepared, cfg.train.mse_weight, cfg.train.mse_space)
    channel = create_channel(cfg.channel.name, **channel_kwargs(cfg.channel))

    def clf_record(clf: Any, which: str) -> dict[str, Any]:
        info = getattr(clf, "info", None)
        return {"role": which, "weights_blake2b": state_digest(clf.state_dict()),
                **({k: v for k, v in asdict(info).items()} if info is not None else {"info": "user checkpoint"})}

    provenance = {
        "data": {"dataset": d.dataset, "source": ds.source, "data_dir": d.data_dir, "fingerprint": ds.fingerprint(),
                 "train_images": int(ds.x_train.shape[0]), "test_images": int(ds.y_test.shape[0]),
                 "scored_on": "validation (held-out training images)" if d.validation_samples > 0 else "test split"},
        "partition": {"fingerprint": D.partition_fingerprint(part, local_test), "volumes": part.sizes.tolist()},
        "evaluators": {"loss_classifier": clf_record(loss_clf, "inside the task loss (Eqs. 15/16)"),
                       "scorer": clf_record(scorer, "independent: headline accuracy")},
        "mse_scale": mse_scale, "pixel_variance": var,
        "baselines": baselines_of(prepared, idx),
        "accuracy_baselines": accuracy_baselines(y_test.cpu().numpy(), int(ds.num_classes)),
        "global_test_images": int(idx.numel()),
    }
    return FederatedEnv(
        data=ClientShards(clients, [int(c.x.shape[0]) for c in clients], part.class_counts),
        evaluators=Evaluators(loss_clf, scorer, x_test, y_test, res, ds.num_classes, mse_scale),
        models=ModelFactory(cfg.seed, cfg.model.family, res.size, res.channels, channel, dev, cfg.model.ratio()),
        seed=cfg.seed, cfg=cfg, provenance=provenance,
    )

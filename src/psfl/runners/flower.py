"""The Flower engine (flwr >= 1.42, Message API): the same methods, rounds and run folder
as the in-process runner, with the clients on Flower SuperNodes.

Only translation lives here; every algorithmic step is the method's own call:

* **ServerApp** (:func:`make_server_app`): :func:`psfl.runners.inprocess.run_federated`
  with a Flower client executor. Per round the method's ``broadcast`` payload goes to
  each participating node in a ``train`` message; the replies' upload bytes and metrics
  come back into the same loop (energy from the bytes, ``aggregate``, evaluation,
  ``metrics.jsonl``, checkpoint of the server state).
* **ClientApp** (:func:`make_client_app`): rebuilds the run's environment from the config
  sent with the message (deterministic, cached per process) and calls the method's
  ``init_client`` / ``client_update`` for its client id.

Messages (``ConfigRecord`` "psfl"): server -> node: ``config`` (the resolved run config
as TOML), ``round``, ``cid``, ``snr_db``, ``payload`` (bytes), ``first`` (the client has
not trained before: a node without its state may start it fresh), ``state_key`` (names
the client's state on the node, :func:`state_key`); node -> server:
``payload`` (bytes), ``metrics`` (JSON), ``seconds``. A ``query`` message asks a node for
its client id: ``partition-id`` of its node config (``flwr run`` simulation sets it;
a deployed SuperNode gets ``--node-config "partition-id=3"``).

``psfl run --engine flower`` runs :func:`run_simulation`; ``flwr run .`` (a SuperLink,
deployed or local) runs the app objects of :mod:`psfl.runners.flower_app`, which build
the :class:`ServerRun` from Flower's run config.

Client state (mentor weights and optimiser state, error-feedback residuals, synced
copies) stays on the node: in Flower's ``context.state`` (kept for the run by the
simulation engine and by a SuperNode process), and, when the node config names a
``state-dir``, in ``<state-dir>/<state key>/client<cid>.pt`` after every round, from where a
restarted node process (or a resumed run) reloads it. The data shard is rebuilt from the config on the
node (a node config ``data-dir`` points at that node's copy of the data).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from psfl.config import RunConfig, dump_config, load_config
from psfl.utils.errors import PsflError
from psfl.utils.fileio import atomic_path

if TYPE_CHECKING:
    import torch

# torch is imported where a tensor is made, not here: a deployed SuperNode starts one
# ClientApp process per message, and of a SecAgg+ round's four messages only the collect
# stage trains (the others, and the query, answered without torch: 3-4 s less each on a
# busy core)
RECORD = "psfl"


def _flwr():
    try:
        import flwr  # noqa: F401
        from flwr.app import ConfigRecord, Context, Message, RecordDict
        from flwr.clientapp import ClientApp
        from flwr.serverapp import Grid, ServerApp
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise PsflError("the Flower engine needs flwr: pip install 'psfl[flower]'") from None
    return ConfigRecord, Context, Message, RecordDict, ClientApp, Grid, ServerApp


# --------------------------------------------------------------------------- client side
_ENVS: dict[tuple[str, str], Any] = {}  # (config digest, device) -> (cfg, env, method): per node process


def _client_side(config_text: str, data_dir: str | None, device: str):
    from psfl.methods import METHODS, build_env, options_for

    key = (hashlib.sha256(config_text.encode()).hexdigest(), f"{data_dir}|{device}")
    if key not in _ENVS:
        _ENVS.clear()  # one run per node process at a time
        import torch

        cfg = _config_from_text(config_text, data_dir)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        env = build_env(cfg, progress=False, device=device)
        _ENVS[key] = (cfg, env, METHODS.get(cfg.method)(env, options_for(cfg), cfg))
    return _ENVS[key]


def _config_from_text(text: str, data_dir: str | None) -> RunConfig:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(text)
    try:
        return load_config(f.name, [f"data.data_dir={data_dir}"] if data_dir else [])
    finally:
        Path(f.name).unlink(missing_ok=True)


STATE_DIR_ENV = "PSFL_NODE_STATE_DIR"  # the simulation's virtual nodes: <run dir>/nodes


def run_tag(cfg: RunConfig) -> str:
    """Names a run's node states: its config without ``rounds`` (a resumed run may extend it)."""
    from dataclasses import replace

    return hashlib.sha256(dump_config(replace(cfg, rounds=1)).encode()).hexdigest()[:16]


def state_key(cfg: RunConfig, run_dir: Path) -> str:
    """Names a run's node states on a node that serves many runs (a deployed SuperNode's
    ``state-dir``): the config without ``rounds`` and the server's run folder, so that a
    resumed run finds its states and a run of the same config into another folder
    starts fresh."""
    where = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:8]
    return f"{run_tag(cfg)}-{where}"


def _state_path(node_config: dict[str, Any], key: str, cid: int) -> Path | None:
    root = node_config.get("state-dir") or os.environ.get(STATE_DIR_ENV)
    if not root:
        return None
    return Path(str(root)) / key / f"client{cid}.pt"


def _to_bytes(obj: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _from_bytes(b: bytes) -> Any:
    import torch

    return torch.load(io.BytesIO(b), weights_only=False, map_location="cpu")


def _load_client_state(context, method, cid: int, rnd: int, path: Path | None, first: bool) -> Any:
    """The client's state before round ``rnd``: from the context, else from the node's
    state dir, else fresh when this is the client's ``first`` round (an error
    otherwise: its mentor and optimiser state are lost). Both keep the state before the
    client's last round too, so a server that resumes the round it crashed in finds the
    state that round started from; a state from beyond ``rnd`` is refused."""
    rec = context.state.get(f"{RECORD}-client{cid}")
    saved = _from_bytes(rec["blob"]) if rec is not None else None
    if saved is None and path is not None and path.is_file():
        saved = _from_bytes(path.read_bytes())
    if saved is None:
        if not first:
            raise PsflError(f"client {cid}: its state from earlier rounds is not on this node (context empty"
                            + (f", {path} missing)" if path else "; give the node a state-dir to survive restarts)"))
        return method.init_client(cid)
    if saved["round"] <= rnd:  # trained last before this round (or skipped rounds since)
        return saved["state"]
    if saved["prev_round"] <= rnd and saved["last_trained"] == rnd:  # this round again (server resumed)
        return saved["prev"]
    raise PsflError(f"client {cid}: the node's state is from after round {rnd} (round {saved['round']}); "
                    "it belongs to another run or a later round")


def _save_client_state(context, before: Any, state: Any, cid: int, rnd: int, path: Path | None) -> None:
    ConfigRecord = _flwr()[0]
    blob = _to_bytes({"round": rnd + 1, "state": state, "prev_round": rnd, "prev": before, "last_trained": rnd})
    context.state[f"{RECORD}-client{cid}"] = ConfigRecord({"blob": blob})
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(blob)


def _partition_id(context) -> int:
    pid = context.node_config.get("partition-id")
    if pid is None:
        raise PsflError("this SuperNode has no partition-id in its node config "
                        "(start it with --node-config \"partition-id=<client id>\")")
    return int(pid)


def _handle_query(msg, context):
    ConfigRecord, _, Message, RecordDict = _flwr()[:4]
    return Message(RecordDict({RECORD: ConfigRecord({"cid": _partition_id(context)})}), reply_to=msg)


def _train_one(c, context):
    """One round of the client a ``train`` message (its psfl fields ``c``) is for: its
    state from the node, the method's ``client_update``, its state saved back. Returns
    (cfg, env, method, ClientResult, seconds)."""
    from psfl.methods.base import make_generator

    text, rnd, cid, snr = str(c["config"]), int(c["round"]), int(c["cid"]), float(c["snr_db"])
    if cid != _partition_id(context):
        raise PsflError(f"message for client {cid} reached the node of client {_partition_id(context)}")
    data_dir = context.node_config.get("data-dir")
    cfg, env, method = _client_side(text, str(data_dir) if data_dir else None,
                                    str(context.node_config.get("device", "cpu")))
    path = _state_path(context.node_config, str(c["state_key"]) if "state_key" in c else run_tag(cfg), cid)
    state = _load_client_state(context, method, cid, rnd, path, bool(c["first"]))
    before = _from_bytes(_to_bytes(state))  # a deep copy: the state this round starts from
    t0 = time.perf_counter()
    res = method.client_update(cid, state, rnd, bytes(c["payload"]), snr, make_generator(cfg.seed, rnd, cid, 0xC11))
    secs = time.perf_counter() - t0
    _save_client_state(context, before, state, cid, rnd, path)
    return cfg, env, method, res, secs


def _handle_train(msg, context):
    ConfigRecord, _, Message, RecordDict = _flwr()[:4]
    if SECAGG_FITINS in msg.content.config_records:  # SecAgg+'s collect stage (secaggplus_mod called us)
        return _handle_secure_train(msg, context)
    *_, res, secs = _train_one(msg.content[RECORD], context)
    reply = ConfigRecord({"payload": res.payload, "metrics": json.dumps(res.metrics), "seconds": secs})
    return Message(RecordDict({RECORD: reply}), reply_to=msg)


# --------------------------------------------------------------------------- secure aggregation
# server.secure_aggregation: each round runs Flower's SecAgg+ workflow (flwr.server.workflow.
# SecAggPlusWorkflow, four message stages: setup, share keys, collect masked vectors, unmask)
# and the nodes answer through Flower's secaggplus_mod. In the collect stage the ClientApp
# trains as usual, then hands SecAgg+ the client's update: the float entries of what the
# server would decode from its upload minus what it received (method.decode_own_upload /
# decode_broadcast), weighted by its data volume N_k. The server learns only the weighted
# mean of the updates (Eq. 10) and adds it to the broadcast state (method.apply_mean).
SECAGG_FITINS = "fitins.config"  # where flwr's compat layer puts FitIns.config in a message


def _float_keys(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in state.items() if v.is_floating_point()]


def _secagg_mod(msg, context, call_next):
    """Flower's ``secaggplus_mod`` for SecAgg+ messages, other messages pass. SecAgg+
    rounds stochastically with numpy's global generator: it is seeded per (seed, round,
    client) here first, so a run is reproducible."""
    import numpy as np
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    if SECAGG_FITINS in msg.content.config_records:
        from psfl.methods.base import derive_seed

        c = msg.content.config_records[SECAGG_FITINS]
        np.random.seed(derive_seed(int(c["seed"]), int(c["round"]), int(c["cid"]), 0x5EC) % 2**32)
    return secaggplus_mod(msg, context, call_next)


def _handle_secure_train(msg, context):
    import numpy as np
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common.recorddict_compat import fitres_to_recorddict

    Message = _flwr()[2]
    c = msg.content.config_records[SECAGG_FITINS]
    cfg, env, method, res, secs = _train_one(c, context)
    cid, down = int(c["cid"]), bytes(c["payload"])
    start, up = method.decode_broadcast(down), method.decode_own_upload(down, res.payload)
    keys = _float_keys(start)
    if sorted(keys) != sorted(_float_keys(up)):
        raise PsflError(f"client {cid}: its upload's entries differ from the broadcast's")
    update = [(up[k].double() - start[k].double()).cpu().numpy() for k in keys]
    worst = max((float(np.abs(u).max()) for u in update if u.size), default=0.0)
    if not math.isfinite(worst) or worst > cfg.server.secagg_clip:
        raise PsflError(f"client {cid}: an update entry of {worst:.4g} exceeds server.secagg_clip = "
                        f"{cfg.server.secagg_clip:g} (SecAgg+ would clip it)")
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update), int(env.data.volumes[cid]),
                    {"metrics": json.dumps(res.metrics), "seconds": secs, "cid": cid})
    return Message(fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


def make_client_app():
    """The psfl ClientApp: ``query`` (which client am I) and ``train`` (one round; SecAgg+
    messages go through Flower's ``secaggplus_mod``)."""
    ClientApp = _flwr()[4]
    app = ClientApp()
    app.query()(_handle_query)
    app.train(mods=[_secagg_mod])(_handle_train)
    return app


# --------------------------------------------------------------------------- server side
def _wait_for_nodes(grid, k: int, timeout_s: float) -> list[int]:
    t0 = time.time()
    while len(nodes := list(grid.get_node_ids())) < k:
        if time.time() - t0 > timeout_s:
            raise PsflError(f"only {len(nodes)} of {k} Flower nodes connected within {timeout_s:.0f} s")
        time.sleep(0.2)
    return nodes


RAY_NICENESS_ENV = "RAY_worker_niceness"  # read by Ray's raylet when the simulation starts it

NODE_START_S = 180.0  # the first query, and the first round this server sends, wait this long at least:
# a node starts (imports torch) before it answers the query and builds its client (data shard, models,
# evaluators) in its first round, which takes far longer than a round's training on a busy machine


class _RoundTimeout:
    """The wait for a round's replies: ``timeout_s``, except for the first round this
    server sends (its nodes build their clients in it), which waits ``NODE_START_S`` at
    least. A node that answers no round at all therefore costs the first round
    ``NODE_START_S``, as it costs the query."""

    def __init__(self, timeout_s: float):
        self.timeout_s, self.sent = timeout_s, False

    def next(self) -> float:
        first, self.sent = not self.sent, True
        return max(self.timeout_s, NODE_START_S) if first else self.timeout_s


def flower_executor(grid, cfg: RunConfig, timeout_s: float = 600.0, key: str | None = None) -> Callable:
    """A :data:`psfl.runners.inprocess.ClientExecutor` over a Flower grid: one ``train``
    message per participating client, to the node that holds it (``key`` names the
    clients' states on the nodes, :func:`state_key`; default :func:`run_tag`)."""
    ConfigRecord, _, Message, RecordDict = _flwr()[:4]
    from psfl.methods.base import ClientResult
    from psfl.runners.inprocess import ClientFailure

    text = dump_config(cfg)
    nodes = _wait_for_nodes(grid, cfg.data.num_clients, timeout_s)
    wait_s = max(timeout_s, NODE_START_S)
    replies = list(grid.send_and_receive([Message(RecordDict({RECORD: ConfigRecord({})}), dst_node_id=n,
                                                  message_type="query") for n in nodes], timeout=wait_s))
    if len(replies) < len(nodes):
        raise PsflError(f"{len(nodes) - len(replies)} of {len(nodes)} Flower nodes did not say their client id "
                        f"within {wait_s:.0f} s (nodes that never started, or starved of CPU)")
    node_of: dict[int, int] = {}
    for r in replies:
        if r.has_error():
            raise PsflError(f"Flower node {r.metadata.src_node_id} did not say its client id: {r.error.reason}")
        node_of[int(r.content[RECORD]["cid"])] = r.metadata.src_node_id
    missing = sorted(set(range(cfg.data.num_clients)) - set(node_of))
    if missing:
        raise PsflError(f"no Flower node holds client(s) {missing} (partition-id of the node configs)")

    waits = _RoundTimeout(timeout_s)
    if cfg.server.secure_aggregation:
        return lambda method: _secure_round(grid, cfg, method, node_of, text, key or run_tag(cfg), waits)

    def bind(method):
        def run(rnd: int, payload: bytes, cids: list[int], snrs):
            wait_s = waits.next()
            k = cfg.data.num_clients
            seen = {c for r in range(rnd) for c in method.participants(r, k)}  # deterministic per method
            msgs = [Message(RecordDict({RECORD: ConfigRecord({
                "config": text, "round": rnd, "cid": cid, "snr_db": float(snrs[cid]), "payload": payload,
                "first": cid not in seen, "state_key": key or run_tag(cfg)})}), dst_node_id=node_of[cid], message_type="train") for cid in cids]
            out, answered = [], set()
            for r in grid.send_and_receive(msgs, timeout=wait_s):
                cid = next((k for k, v in node_of.items() if v == r.metadata.src_node_id), None)
                if cid is None or cid in answered:
                    continue  # not a node of this run, or a duplicate reply
                answered.add(cid)
                if r.has_error():  # the ClientApp raised (or the node failed): the round goes on without it
                    out.append((cid, ClientFailure(f"node {r.metadata.src_node_id} failed: {r.error.reason}"), 0.0))
                    continue
                try:
                    c = r.content[RECORD]
                    res = ClientResult(bytes(c["payload"]), json.loads(str(c["metrics"])))
                    secs = float(c["seconds"])
                except Exception as e:  # a malformed reply is a failed client, not a crashed server
                    out.append((cid, ClientFailure(f"malformed reply: {type(e).__name__}: {e}"), 0.0))
                    continue
                out.append((cid, res, secs))
            out += [(cid, ClientFailure(f"no reply within {wait_s:g} s"), 0.0) for cid in cids if cid not in answered]
            return out
        return run
    return bind


class _SecAggGrid:
    """The grid as SecAgg+ uses it, keeping per node the bytes that node sent in the
    protocol's records (public keys, encrypted shares, masked vector, key shares)."""

    def __init__(self, grid, sent: dict[int, list[bytes]]):
        self._grid, self.sent, self.errors = grid, sent, {}

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *a, **kw):
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

        replies = list(self._grid.send_and_receive(messages, *a, **kw))
        for r in replies:
            if r.has_error():
                self.errors.setdefault(r.metadata.src_node_id, r.error.reason)
                continue
            if RECORD_KEY_CONFIGS not in r.content.config_records:
                continue
            for v in r.content.config_records[RECORD_KEY_CONFIGS].values():
                self.sent.setdefault(r.metadata.src_node_id, []).extend(
                    b for b in (v if isinstance(v, list) else [v]) if isinstance(b, bytes))
        return replies


def _secure_round(grid, cfg: RunConfig, method, node_of: dict[int, int], text: str, key: str,
                  waits: _RoundTimeout):
    """One round under Flower's SecAgg+ workflow: yields each answering client's
    ClientResult (payload: the bytes it sent in the protocol; metrics: its own) and one
    :class:`psfl.runners.inprocess.SecureAggregate` with the weighted mean of the
    decoded uploads, which the server only learns as a sum."""
    import numpy as np
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
    from flwr.common import FitIns, Parameters, parameters_to_ndarrays
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import Strategy
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

    from psfl.methods.base import ClientResult
    from psfl.runners.inprocess import ClientFailure, SecureAggregate

    sv, cid_of = cfg.server, {v: k for k, v in node_of.items()}

    class RoundStrategy(Strategy):  # what SecAgg+ asks of a strategy: the FitIns, then the result
        def __init__(self, ins: dict[int, FitIns]):
            self.ins, self.out = ins, None

        def configure_fit(self, server_round, parameters, client_manager):
            return [(GridClientProxy(node_of[c], grid, 0), fi) for c, fi in self.ins.items()]

        def aggregate_fit(self, server_round, results, failures):
            self.out = results
            return None, {}

        def initialize_parameters(self, client_manager):
            return None

        def configure_evaluate(self, server_round, parameters, client_manager):
            return []

        def aggregate_evaluate(self, server_round, results, failures):
            return None, {}

        def evaluate(self, server_round, parameters):
            return None

    def run(rnd: int, payload: bytes, cids: list[int], snrs):
        k = cfg.data.num_clients
        seen = {c for r in range(rnd) for c in method.participants(r, k)}
        ins = {cid: FitIns(Parameters([], "numpy.ndarray"), {
            "config": text, "seed": cfg.seed, "round": rnd, "cid": cid, "snr_db": float(snrs[cid]),
            "payload": payload, "first": cid not in seen, "state_key": key}) for cid in cids}
        strategy, sent = RoundStrategy(ins), {}
        spy = _SecAggGrid(grid, sent)
        state = RecordDict({MAIN_CONFIGS_RECORD: ConfigRecord({Key.CURRENT_ROUND: rnd + 1}),
                            MAIN_PARAMS_RECORD: ArrayRecord()})
        context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=state, run_config={}),
                                strategy=strategy)
        SecAggPlusWorkflow(sv.secagg_shares, sv.secagg_threshold, clipping_range=sv.secagg_clip,
                           max_weight=float(max(method.env.data.volumes[c] for c in cids)),
                           timeout=waits.next())(spy, context)
        out, answered = [], set()
        for proxy, fitres in strategy.out or []:
            cid = cid_of[proxy.node_id]
            answered.add(cid)
            m = fitres.metrics
            out.append((cid, ClientResult(b"".join(sent.get(proxy.node_id, [])), json.loads(str(m["metrics"]))),
                        float(m["seconds"])))
        if strategy.out:
            start = method.decode_broadcast(payload)
            mean_update = parameters_to_ndarrays(strategy.out[0][1].parameters)  # the unmasked weighted mean
            keys = _float_keys(start)
            mean = {kk: (start[kk].double() + torch.from_numpy(np.asarray(u, dtype=np.float64)).reshape(
                start[kk].shape)).to(start[kk].dtype) for kk, u in zip(keys, mean_update, strict=True)}
            out.append((-1, SecureAggregate(mean, sorted(answered)), 0.0))
        halted = "no SecAgg+ result: too few clients answered for the protocol to finish (see the log)"
        out += [(cid, ClientFailure(spy.errors.get(node_of[cid], halted)), 0.0) for cid in cids if cid not in answered]
        return out
    return run


@dataclass(frozen=True)
class ServerRun:
    """What one ServerApp run does: run ``cfg`` into ``run_dir`` (``resume``: continue
    it), evaluating on ``device``; ``timeout_s`` bounds the wait for the nodes and for
    each round's replies (the first round, in which the nodes build their clients, waits
    ``NODE_START_S`` at least)."""
    cfg: RunConfig
    run_dir: Path
    resume: bool = False
    device: str = "cpu"
    timeout_s: float = 600.0
    command: list[str] | None = None  # recorded in provenance.json (default: this process's argv)
    strict: bool = True  # False: a comparison run sharing another method's config (psfl compare)


def make_server_app(setup: ServerRun | Callable[[Any], ServerRun], progress: bool = False,
                    result: dict | None = None):
    """A ServerApp that runs ``setup`` (``result["records"]`` gets the records). ``setup``
    is fixed (``psfl run --engine flower``) or made from the Flower ``Context`` when the
    run starts (``flwr run``: the run config, see :mod:`psfl.runners.flower_app`)."""
    ServerApp = _flwr()[6]
    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        from psfl.runners.inprocess import run_federated  # here: a node importing the app never needs it

        run = setup if isinstance(setup, ServerRun) else setup(context)
        out = run_federated(run.cfg, run.run_dir, resume=run.resume, progress=progress, command=run.command,
                            device=run.device, strict=run.strict,
                            executor=flower_executor(grid, run.cfg, run.timeout_s, state_key(run.cfg, run.run_dir)))
        if result is not None:
            result["records"] = out.records

    return app


def run_simulation(cfg: RunConfig, run_dir: Path, resume: bool = False, progress: bool = False,
                   command: list[str] | None = None, device: str = "cpu", num_cpus: float = 1.0,
                   num_gpus: float = 0.0, timeout_s: float = 600.0, client_app: Any = None,
                   strict: bool = True):
    """``psfl run --engine flower``: Flower's simulation engine on this machine, one
    virtual SuperNode per client (``partition-id`` = client id). The nodes keep their
    client states in ``<run_dir>/nodes/``, so ``resume`` continues where the run stopped.
    ``timeout_s`` bounds each round's wait for replies (a client that does not answer in
    time is recorded as failed; the server's first round waits ``NODE_START_S`` at least,
    as its nodes build their clients in it); ``client_app`` replaces psfl's ClientApp (one that adds
    mods, say); ``strict=False``: the config is another method's (``psfl compare``)."""
    import logging

    from flwr.simulation import run_simulation as flwr_run_simulation

    from psfl.runners.inprocess import RunResult

    result: dict[str, Any] = {}
    server = make_server_app(ServerRun(cfg, Path(run_dir), resume, device, timeout_s, command, strict), progress,
                             result)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    # Ray starts its workers (here: the simulated clients, i.e. all of the run's training) at
    # nice 15, so anything else on the machine starves them: beside two training processes on
    # 2 cores a 3-client tiny run took 411 s, at the driver's priority 53 s. A user's own
    # RAY_worker_niceness wins.
    os.environ.setdefault(RAY_NICENESS_ENV, "0")
    os.environ[STATE_DIR_ENV] = str(Path(run_dir).resolve() / "nodes")  # inherited by the simulated nodes
    flwr_run_simulation(server, client_app or make_client_app(), num_supernodes=cfg.data.num_clients,
                        backend_config={"client_resources": {"num_cpus": num_cpus, "num_gpus": num_gpus}})
    if "records" not in result:
        raise PsflError("the Flower simulation ended without finishing the run (see the log above)")
    return RunResult(Path(run_dir), result["records"])

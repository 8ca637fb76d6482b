"""psfl on a deployed Flower federation (flwr >= 1.42) on this machine: a real
``flower-superlink``, two ``flower-supernode`` processes (``partition-id`` 0 and 1, each
with its own state dir, the bundled Fashion-MNIST sample) and ``flwr run .`` from the
repository root, which reads the app from ``pyproject.toml`` ``[tool.flwr.app]`` and the
connection from ``$FLWR_HOME/config.toml`` (a temporary FLWR_HOME: nothing is written to
the real home).

1. insecure (plain HTTP, ``make test-all``): two rounds of tiny PSFL with secure
   aggregation end in the run folder (the second round starts from each node's state);
2. TLS (a CA and a server certificate for 127.0.0.1/localhost, made here) with SuperNode
   authentication: the two nodes' EC public keys are registered with
   ``flwr supernode register``, the nodes sign with their private keys, a node with an
   unregistered key is refused (it exits with an error), a run config with an unknown key
   is refused, and one round with secure aggregation runs (``flwr run`` of a folder with the
   FAB's files only, see :func:`lean_app`; each SecAgg+ round is four
   message exchanges of a few seconds each: Flower's nodes and ServerApp poll every 3 s,
   and every exchange starts a ClientApp process; only the training one imports torch).

Every process started here (and its children: Flower's SuperExec, ServerApp and
ClientApp processes) is stopped when a test ends, and its ports are free again.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

flwr = pytest.importorskip("flwr", reason="the flower extra is not installed")

from test_runner import tiny_overrides  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONNECTION = "psfl-test"
START_TIMEOUT_S = 120.0  # a SuperLink or SuperNode comes up (or is refused), a flwr command ends, within this
RUN_TIMEOUT_S = 360.0  # `flwr run --stream` of two tiny rounds ends within this (60-100 s measured on 2 busy cores)

pytestmark = [
    # one Flower federation at a time, on one worker (make test: --dist loadgroup; tests/conftest.py)
    pytest.mark.xdist_group("flower"),
    pytest.mark.skipif(os.name != "posix" or not Path("/proc").is_dir(), reason="needs POSIX process groups and /proc"),
    pytest.mark.skipif(not all((BIN / exe).is_file() for exe in ("flwr", "flower-superlink", "flower-supernode",
                                                                  "flower-superexec")),
                       reason="flwr's executables are not next to this Python"),
]


# --------------------------------------------------------------------------- processes
def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that are free now (bound together, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_is_free(port: int) -> bool:
    """No process listens on ``port`` (connections in TIME_WAIT do not count: servers bind
    with SO_REUSEADDR, as here)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids of every live process (from /proc)."""
    out: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if fields[0] != "Z":
            out.setdefault(int(fields[1]), []).append(int(d.name))
    return out


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Flower starts its SuperExec in a new session:
    a process group does not reach it)."""
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def started_with_home(home: Path) -> list[int]:
    """Live processes whose environment has ``FLWR_HOME=home``: everything a test started,
    also a child that outlived its parent (and was re-parented away from the tree)."""
    tag, out = f"FLWR_HOME={home}".encode(), []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and tag in (d / "environ").read_bytes().split(b"\0"):
                out.append(int(d.name))
        except OSError:
            continue
    return [pid for pid in out if pid != os.getpid() and alive(pid)]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


class Federation:
    """The Flower processes of one test, their logs and their FLWR_HOME."""

    def __init__(self, root: Path):
        self.root = root
        self.home = root / "flwr-home"
        self.home.mkdir()
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: list[int] = []
        env = {k: v for k, v in os.environ.items() if k != "PSFL_NODE_STATE_DIR"}
        self.env = {**env, "FLWR_HOME": str(self.home), "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
                    "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1",
                    "OMP_NUM_THREADS": "1"}

    def take_ports(self, n: int) -> list[int]:
        ports = free_ports(n)
        self.ports += ports
        return ports

    def start(self, name: str, *args: str) -> subprocess.Popen:
        """Start ``args`` (a flwr executable and its flags) in its own session, logging to ``<name>.log``."""
        with open(self.root / f"{name}.log", "wb") as log:
            proc = subprocess.Popen([str(BIN / args[0]), *args[1:]], cwd=self.root, env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def wait_for(self, what: str, ok: Callable[[], bool], timeout_s: float = START_TIMEOUT_S,
                 logs: tuple[str, ...] = ()) -> None:
        """Poll ``ok`` until true; fail naming ``what`` (with the logs' tails) after ``timeout_s``."""
        t0 = time.monotonic()
        while not ok():
            if time.monotonic() - t0 > timeout_s:
                tails = "\n".join(f"--- {n}.log\n{self.log(n)[-3000:]}" for n in logs)
                pytest.fail(f"{what}: not within {timeout_s:.0f} s\n{tails}")
            time.sleep(0.2)

    def wait_for_log(self, name: str, pattern: str, timeout_s: float = START_TIMEOUT_S) -> None:
        proc = self.procs[name]

        def seen() -> bool:
            if re.search(pattern, self.log(name)):
                return True
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with code {proc.returncode} before logging {pattern!r}:\n"
                            f"{self.log(name)[-3000:]}")
            return False
        self.wait_for(f"{name} logs {pattern!r}", seen, timeout_s, (name,))

    def flwr(self, *args: str, timeout_s: float = START_TIMEOUT_S, expect_failure: bool = False) -> str:
        """The ``flwr`` CLI from the repository root; its output, or a failure naming the
        command (when it fails, or with ``expect_failure`` when it does not)."""
        cmd = [str(BIN / "flwr"), *args]
        try:
            res = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"{' '.join(args)}: no end within {timeout_s:.0f} s\n{(e.stdout or b'')[-3000:]!r}\n"
                        + "\n".join(f"--- {n}.log\n{self.log(n)[-3000:]}" for n in self.procs))
        out = res.stdout + res.stderr
        if (res.returncode != 0) != expect_failure:
            pytest.fail(f"flwr {' '.join(args)} exited with code {res.returncode}:\n{out[-5000:]}")
        return out

    def write_connection(self, address: str, insecure: bool, root_certificates: Path | None = None) -> None:
        """``$FLWR_HOME/config.toml``: the SuperLink connection ``flwr`` uses (the default one)."""
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]", f'address = "{address}"']
        lines += ["insecure = true"] if insecure else [f'root-certificates = "{root_certificates}"']
        (self.home / "config.toml").write_text("\n".join(lines) + "\n")

    def stop(self) -> None:
        """SIGTERM to every process started here and to everything below it, then SIGKILL
        to what is left after 15 s; then wait (bounded) for the ports to be free."""
        pids = [p.pid for p in self.procs.values() if p.poll() is None]
        pids += [d for p in self.procs.values() for d in descendants(p.pid)]
        pids = sorted(set(pids) | set(started_with_home(self.home)))
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        t0 = time.monotonic()
        while any(alive(pid) for pid in pids) and time.monotonic() - t0 < 15:
            time.sleep(0.2)
        for pid in pids:
            if alive(pid):
                _signal(pid, signal.SIGKILL)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        t0 = time.monotonic()
        while not all(map(port_is_free, self.ports)) and time.monotonic() - t0 < 15:
            time.sleep(0.2)
        stuck = [pid for pid in pids if alive(pid)]
        busy = [port for port in self.ports if not port_is_free(port)]
        assert not stuck and not busy, f"left running: pids {stuck}, ports in use {busy}"


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture
def federation(tmp_path):
    fed = Federation(tmp_path)
    try:
        yield fed
    finally:
        fed.stop()


# --------------------------------------------------------------------------- the run
def start_supernode(fed: Federation, cid: int, superlink: str, port: int, *security: str,
                    name: str | None = None) -> subprocess.Popen:
    name = name or f"node{cid}"
    state_dir = fed.root / f"{name}-state"
    return fed.start(name, "flower-supernode", *security, "--superlink", superlink,
                     "--port", str(port), "--node-config", f"partition-id={cid} state-dir='{state_dir}'")


def lean_app(fed: Federation) -> str:
    """A folder holding what the FAB of ``flwr run .`` holds (``pyproject.toml`` and its
    ``fab-include`` files), for ``flwr run <folder>``: the same app, without the walk
    over the repository's other files (flwr 1.42 visits every file under the app folder,
    the virtual environment's 44,000 included, before it filters: 10 s a command on a
    busy AMD core)."""
    import shutil
    import tomllib

    app = fed.root / "app"
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["fab-include"]
    for path in {p for pattern in patterns for p in REPO.glob(pattern)} | {REPO / "pyproject.toml"}:
        (app / path.relative_to(REPO)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, app / path.relative_to(REPO))
    return str(app)


def run_tiny_psfl(fed: Federation, cache_dir: Path, extra: str = "", rounds: int = 2, app: str = ".") -> Path:
    """``flwr run <app>`` (default: the repository root) of ``rounds`` tiny PSFL rounds on
    the two nodes (``extra``: the run config's ``set``); the run folder, after checking
    that Flower says the run completed."""
    import tomllib

    from flwr.common.config import flatten_dict

    out = fed.root / "run"
    declared = flatten_dict(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    overrides = dict(o.split("=", 1) for o in tiny_overrides(cache_dir, rounds=rounds))
    overrides["data.num_clients"] = "2"
    # the app's declared keys as run-config keys, the others through its `set`
    sets = [f"{k}={v}" for k, v in overrides.items() if k not in declared] + ([extra] if extra else [])
    run_config = " ".join(f"{k}={v}" for k, v in overrides.items() if k in declared)
    run_config += f" out='{out}' timeout-s=300.0"
    run_config += f" set='{'; '.join(sets)}'" if sets else ""
    text = fed.flwr("run", app, CONNECTION, "--stream", "--run-config", run_config, timeout_s=RUN_TIMEOUT_S)
    started = re.search(r"Successfully started run (\d+)", text)
    assert started, text[-3000:]
    status = json.loads(fed.flwr("ls", CONNECTION, "--run-id", started.group(1), "--format", "json"))
    assert status["runs"][0]["status"] == "finished:completed", (status, text[-3000:])
    fed.run_log = text
    return out


def check_rounds_two_clients(fed: Federation, run_dir: Path, rounds: int) -> None:
    """metrics.jsonl: rounds 0 .. rounds - 1, clients 0 and 1 each round, finite losses;
    and each node kept its own client's state in its state dir."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["round"] for r in records] == list(range(rounds))
    for r in records:
        assert sorted(c["cid"] for c in r["clients"]) == [0, 1]
        assert math.isfinite(r["global"]["loss"])
        losses = [v for c in r["clients"] for k, v in c.items() if k.endswith(("_total", "_task", "_ce"))]
        assert losses and all(math.isfinite(v) for v in losses)
    for cid in (0, 1):
        assert [p.name for p in (fed.root / f"node{cid}-state").glob("*/client*.pt")] == [f"client{cid}.pt"]


@pytest.mark.slow  # `make test` runs the TLS deployment below (one round), which checks the rest of this
def test_flwr_run_on_a_local_deployment(federation, cache):
    fed = federation
    link, *nodes = fed.take_ports(3)
    fed.start("superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link),
              "--disable-runtime-dependency-installation")
    fed.wait_for_log("superlink", r"Uvicorn running on http://127\.0\.0\.1")
    fed.write_connection(f"127.0.0.1:{link}", insecure=True)
    for cid, port in enumerate(nodes):
        start_supernode(fed, cid, f"127.0.0.1:{link}", port, "--insecure")
    # while the nodes start: a run-config key the app does not declare is refused by the
    # SuperLink (flwr 1.42 names the key in the SuperLink's log only; the CLI gets code 15)
    refused = fed.flwr("run", ".", CONNECTION, "--run-config", "roundz=2", expect_failure=True)
    assert "Invalid run configuration" in refused, refused
    assert "Key 'roundz' is not present" in fed.log("superlink")
    for cid in range(2):
        fed.wait_for_log(f"node{cid}", r"SuperNode ID: \d+")
    # with secure aggregation (SecAgg+ across the SuperLink: the server learns only the sum)
    run_dir = run_tiny_psfl(fed, cache, "server.secure_aggregation=true", rounds=2)
    check_rounds_two_clients(fed, run_dir, rounds=2)
    assert "secure_aggregation = true" in (run_dir / "config.toml").read_text()
    assert fed.run_log.count("Secure aggregation completed") == 2, fed.run_log[-3000:]  # the ServerApp's log


# --------------------------------------------------------------------------- TLS and node auth
def make_pki(root: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and localhost signed by it, and EC
    (P-384) key pairs in OpenSSH format for node0, node1 and a rogue node."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    root.mkdir()
    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject: str, key, issuer: x509.Name, signer, ca: bool) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                             x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                critical=False)
        return b.sign(signer, hashes.SHA256())

    pem, openssh = serialization.Encoding.PEM, serialization.Encoding.OpenSSH
    ca_key, server_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "psfl test CA")])
    ca = cert("psfl test CA", ca_key, ca_name, ca_key, ca=True)
    files = {"ca": root / "ca.pem", "cert": root / "server.pem", "key": root / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(pem))
    files["cert"].write_bytes(cert("localhost", server_key, ca_name, ca_key, ca=False).public_bytes(pem))
    files["key"].write_bytes(server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    for name in ("node0", "node1", "rogue"):
        key = ec.generate_private_key(ec.SECP384R1())
        files[f"{name}.key"] = root / f"{name}.key"
        files[f"{name}.pub"] = root / f"{name}.pub"
        files[f"{name}.key"].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.OpenSSH,
                                                           serialization.NoEncryption()))
        files[f"{name}.pub"].write_bytes(key.public_key().public_bytes(openssh, serialization.PublicFormat.OpenSSH))
    for path in files.values():
        path.chmod(0o600)
    return files


def test_flwr_run_with_tls_supernode_auth_and_secure_aggregation(federation, cache):
    fed = federation
    pki = make_pki(fed.root / "pki")
    link, *nodes = fed.take_ports(4)
    app = lean_app(fed)  # the slow test above runs `flwr run .` from the repository root
    fed.start("superlink", "flower-superlink", "--ssl-ca-certfile", str(pki["ca"]), "--ssl-certfile",
              str(pki["cert"]), "--ssl-keyfile", str(pki["key"]), "--enable-supernode-auth",
              "--host", "127.0.0.1", "--port", str(link), "--disable-runtime-dependency-installation")
    fed.wait_for_log("superlink", r"Uvicorn running on https://127\.0\.0\.1")
    fed.write_connection(f"127.0.0.1:{link}", insecure=False, root_certificates=pki["ca"])
    for cid in range(2):
        assert "registered successfully" in fed.flwr("supernode", "register", str(pki[f"node{cid}.pub"]), CONNECTION)
    tls = ("--root-certificates", str(pki["ca"]))
    for cid in range(2):
        start_supernode(fed, cid, f"127.0.0.1:{link}", nodes[cid], *tls, "--auth-supernode-private-key",
                        str(pki[f"node{cid}.key"]))
    # beside them, a node whose key was never registered (checked below)
    rogue = start_supernode(fed, 1, f"127.0.0.1:{link}", nodes[2], *tls, "--auth-supernode-private-key",
                            str(pki["rogue.key"]), name="rogue")
    # while the nodes start: a run-config key the app does not declare is refused by the
    # SuperLink (flwr 1.42 names the key in the SuperLink's log only; the CLI gets code 15)
    refused = fed.flwr("run", app, CONNECTION, "--run-config", "roundz=2", expect_failure=True)
    assert "Invalid run configuration" in refused, refused
    assert "Key 'roundz' is not present" in fed.log("superlink")
    for cid in range(2):
        fed.wait_for_log(f"node{cid}", r"SuperNode ID: \d+")

    # the unregistered node: the SuperLink refuses to activate it, and it exits
    fed.wait_for("the rogue SuperNode exits", lambda: rogue.poll() is not None, logs=("rogue", "superlink"))
    assert rogue.returncode != 0
    assert "Failed to activate SuperNode" in fed.log("rogue")
    assert "SuperNode ID" not in fed.log("rogue")
    assert "No SuperNode found with the given public key" in fed.log("superlink")

    # with secure aggregation (SecAgg+ across the SuperLink: the server learns only the sum)
    run_dir = run_tiny_psfl(fed, cache, "server.secure_aggregation=true", rounds=1, app=app)
    check_rounds_two_clients(fed, run_dir, rounds=1)
    assert "secure_aggregation = true" in (run_dir / "config.toml").read_text()
    assert fed.run_log.count("Secure aggregation completed") == 1, fed.run_log[-3000:]  # the ServerApp's log

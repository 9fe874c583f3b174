"""Several nodes: the check before a multi-node launch, the launch, and the per-process watch that ends a run
whose rank was lost (README "Several nodes"; `bash run.sh <stage> nodes`, slurm/mini_qwen.sbatch).

Run as (the same command on every node, only NODE_RANK differs):
    NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash run.sh pt nodes --config recipe.yaml   # node 0, at 10.0.0.1
    NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash run.sh pt nodes --config recipe.yaml   # node 1
    sbatch --nodes 2 slurm/mini_qwen.sbatch pt --config recipe.yaml                        # SLURM sets the three

Environment: NNODES, NODE_RANK (0 .. NNODES-1), MASTER_ADDR (node 0's address as the other nodes reach it),
MASTER_PORT (29500), GPUS_PER_NODE (default: the GPUs `nvidia-smi -L` lists, else 1), LAUNCHER (accelerate,
the default, or torchrun), NODES_WAIT (seconds the nodes wait for each other here, default 600),
ACCELERATE_CONFIG (default accelerate_config_nodes.yaml).

Before any launcher starts (no torch import: seconds, not minutes), the nodes check in with node 0 on
MASTER_PORT: NODE_RANK is within range and taken once, MASTER_ADDR resolves, is node 0's own address, and
is reachable from every node within NODES_WAIT, and every node runs the same stage, flags, recipe and
launcher. Each problem is one message on every node instead of a rendezvous that hangs until its timeout.
Node 0 then closes the port, and its launcher opens the same port for the real rendezvous, so no second
port has to be open between the nodes. Flags and data are compared once more inside the stage, after the
process group exists (run_config.check_processes_agree), which also covers launches that skip this check.

During training every process beats a heartbeat into the process group's store (RankWatch): when one is
lost (killed, out of memory, its node gone), the others stop within --lost_rank_timeout seconds with one
message naming it, instead of a NCCL or gloo timeout much later.
"""

import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mini_qwen import stages
from mini_qwen.errors import MiniQwenError, run_main

LAUNCHERS = ("accelerate", "torchrun")


@dataclass
class NodeSpec:
    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int
    gpus_per_node: int
    launcher: str
    wait: float
    accelerate_config: str


def _int_env(env, name: str, default=None, low: int = 0, high: int | None = None, what: str = "") -> int:
    raw = env.get(name, "")
    if raw == "" and default is not None:
        return default
    if raw == "":
        raise MiniQwenError(f"{name} is not set: {what}.")
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        bounds = f"{low} .. {high}" if high is not None else f"at least {low}"
        raise MiniQwenError(f"{name}={raw} is not allowed: {what} ({bounds}).")
    return value


def gpus_here() -> int:
    """GPUs on this node as `nvidia-smi -L` lists them (1 where there is none: one CPU process)."""
    if not shutil.which("nvidia-smi"):
        return 1
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 1
    return max(1, sum(1 for line in out.splitlines() if line.startswith("GPU ")))


def node_spec(env=None) -> NodeSpec:
    """This node's settings from the environment, each checked with one message naming the variable."""
    env = os.environ if env is None else env
    nnodes = _int_env(env, "NNODES", low=1, what="the number of nodes (machines) in the run, e.g. NNODES=2")
    node_rank = _int_env(env, "NODE_RANK", low=0, what="this node's rank, 0 on the head node, 1 .. NNODES-1 on "
                                                        "the others")
    if node_rank >= nnodes:
        raise MiniQwenError(f"NODE_RANK={node_rank} is not a node of this run: with NNODES={nnodes} the ranks are "
                            f"0 .. {nnodes - 1} (0 on the node at MASTER_ADDR). Fix NODE_RANK on this node, or "
                            f"NNODES on every node.")
    master_addr = env.get("MASTER_ADDR", "").strip()
    if not master_addr:
        if nnodes > 1:
            raise MiniQwenError("MASTER_ADDR is not set: give every node the address of node 0 (NODE_RANK=0) as "
                                "the others reach it, e.g. MASTER_ADDR=10.0.0.1 (`hostname -I` on node 0).")
        master_addr = "127.0.0.1"
    launcher = env.get("LAUNCHER", "accelerate")
    if launcher not in LAUNCHERS:
        raise MiniQwenError(f"LAUNCHER={launcher} is not one of {', '.join(LAUNCHERS)}.")
    gpus = env.get("GPUS_PER_NODE", "")
    return NodeSpec(
        nnodes=nnodes, node_rank=node_rank, master_addr=master_addr,
        master_port=_int_env(env, "MASTER_PORT", 29500, low=1, high=65535, what="node 0's rendezvous port"),
        gpus_per_node=_int_env(env, "GPUS_PER_NODE", low=1, what="processes (GPUs) on each node") if gpus
        else gpus_here(),
        launcher=launcher,
        wait=float(_int_env(env, "NODES_WAIT", 600, low=1, what="seconds the nodes wait for each other")),
        accelerate_config=env.get("ACCELERATE_CONFIG", "accelerate_config_nodes.yaml"))


def resolve(addr: str) -> list[str]:
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(addr, None, type=socket.SOCK_STREAM)})
    except socket.gaierror as err:
        raise MiniQwenError(f"MASTER_ADDR={addr} does not resolve on this node ({socket.gethostname()}): "
                            f"{err.strerror}. Use node 0's IP address, or a host name every node can resolve.") \
            from None


def is_local_address(ip: str) -> bool:
    """Whether this machine owns `ip` (binding to an address of another machine fails)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((ip, 0))
            return True
        except OSError:
            return False


# --------------------------------------------------------------------------- the check-in with node 0

def _recipe_digest(argv: list[str]) -> str | None:
    if "--config" not in argv:
        return None
    i = argv.index("--config")
    path = Path(argv[i + 1]) if i + 1 < len(argv) else None
    if path is None or not path.is_file():
        return None  # the stage reports a missing recipe itself
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def flag_map(argv: list[str]) -> dict[str, str]:
    """{--flag: value} of a command line (`--x y`, `--x=y`, a bare `--x` is "true")."""
    out, i = {}, 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if not word.startswith("--"):
            out.setdefault("(bare words)", "")
            out["(bare words)"] += f" {word}"
            continue
        name, equals, value = word.partition("=")
        if not equals:
            value = "true"
            if i < len(argv) and not argv[i].startswith("--"):
                value, i = argv[i], i + 1
        out[name] = value
    return out


def checkin_info(spec: NodeSpec, stage: str, argv: list[str]) -> dict:
    return {"node_rank": spec.node_rank, "host": socket.gethostname(), "stage": stage, "argv": argv,
            "recipe": _recipe_digest(argv), "nnodes": spec.nnodes, "gpus_per_node": spec.gpus_per_node,
            "launcher": spec.launcher}


def differences(head: dict, other: dict) -> list[str]:
    """What node `other` runs differently from node 0 (empty: the same run)."""
    out = []
    for key, what in (("stage", "stage"), ("nnodes", "NNODES"), ("gpus_per_node", "GPUS_PER_NODE"),
                      ("launcher", "LAUNCHER")):
        if head[key] != other[key]:
            out.append(f"{what} {other[key]} (node 0: {head[key]})")
    mine, theirs = flag_map(head["argv"]), flag_map(other["argv"])
    for flag in sorted(set(mine) | set(theirs)):
        if mine.get(flag) != theirs.get(flag):
            here = "not given" if flag not in theirs else theirs[flag]
            there = "not given" if flag not in mine else mine[flag]
            out.append(f"{flag} {here} (node 0: {there})")
    if head["recipe"] != other["recipe"] and not out:
        out.append(f"the recipe {mine.get('--config')} has other contents than node 0's")
    return out


def _send(conn: socket.socket, message: dict) -> None:
    conn.sendall((json.dumps(message) + "\n").encode())


def _receive(conn: socket.socket, timeout: float) -> dict | None:
    conn.settimeout(timeout)
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def head_checkin(spec: NodeSpec, info: dict, log=print) -> None:
    """Node 0: wait for the NNODES-1 others on MASTER_PORT, compare, answer each ("ok" or the problem)."""
    ips = resolve(spec.master_addr)
    if not any(is_local_address(ip) for ip in ips):
        raise MiniQwenError(f"NODE_RANK=0 runs on {socket.gethostname()}, but MASTER_ADDR={spec.master_addr} "
                            f"({', '.join(ips)}) is not an address of this machine: the other nodes would look for "
                            f"node 0 there. Start NODE_RANK=0 on {spec.master_addr}, or set MASTER_ADDR to this "
                            f"machine's address on every node.")
    server = socket.socket(socket.AF_INET6 if ":" in ips[0] else socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("", spec.master_port))
    except OSError as err:
        server.close()
        raise MiniQwenError(f"node 0 cannot listen on MASTER_PORT={spec.master_port} ({err.strerror}): another "
                            f"node 0 or an earlier run still holds it (`ss -ltnp | grep {spec.master_port}`), or "
                            f"pick another MASTER_PORT on every node.") from None
    server.listen(spec.nnodes + 8)
    server.settimeout(1.0)
    log(f"nodes: node 0 of {spec.nnodes} on {info['host']}: waiting up to {spec.wait:.0f}s (NODES_WAIT) for "
        f"{spec.nnodes - 1} more node(s) at {spec.master_addr}:{spec.master_port}", flush=True)
    deadline = time.monotonic() + spec.wait
    joined: dict[int, tuple[socket.socket, dict]] = {}
    extra: list[socket.socket] = []
    problem = None
    try:
        while len(joined) < spec.nnodes - 1 and problem is None and time.monotonic() < deadline:
            try:
                conn, address = server.accept()
            except TimeoutError:
                continue
            other = _receive(conn, 10.0)
            if other is None or "node_rank" not in other:
                conn.close()  # not one of ours (a port scanner, a stale client)
                continue
            rank = other["node_rank"]
            if rank == 0 or rank in joined:
                first = info if rank == 0 else joined[rank][1]
                problem = (f"NODE_RANK={rank} was given to two nodes, {first['host']} and {other['host']} "
                           f"({address[0]}): give each node its own rank 0 .. {spec.nnodes - 1}")
                extra.append(conn)
                continue
            joined[rank] = (conn, other)
            differs = differences(info, other)
            if differs:
                problem = (f"node {rank} ({other['host']}) runs another configuration than node 0 "
                           f"({info['host']}): " + "; ".join(differs[:5])
                           + ". Start every node with the same command (only NODE_RANK differs)")
            else:
                log(f"nodes: node {rank} checked in from {other['host']} ({address[0]})", flush=True)
        server.close()  # before the launcher needs the same port
        if problem is None and len(joined) < spec.nnodes - 1:
            missing = [r for r in range(1, spec.nnodes) if r not in joined]
            problem = (f"node(s) {', '.join(map(str, missing))} did not check in with node 0 within {spec.wait:.0f}s "
                       f"(NODES_WAIT): start `bash run.sh {info['stage']} nodes ...` on them with NODE_RANK set, "
                       f"MASTER_ADDR={spec.master_addr} and MASTER_PORT={spec.master_port}, and check that they "
                       f"can reach this address and port (firewall, NCCL_SOCKET_IFNAME in README)")
        for conn in [c for c, _ in joined.values()] + extra:
            try:
                _send(conn, {"error": problem} if problem else {"ok": True})
                _receive(conn, 5.0)  # the other side closes first: no TIME_WAIT left on MASTER_PORT here
            except OSError:
                pass
            conn.close()
    finally:
        server.close()
    if problem:
        raise MiniQwenError(problem + ".")
    log(f"nodes: all {spec.nnodes} nodes checked in and run the same stage and flags", flush=True)


def node_checkin(spec: NodeSpec, info: dict, log=print) -> None:
    """Node 1 .. NNODES-1: reach node 0 (retrying until NODES_WAIT), send our settings, get its verdict."""
    resolve(spec.master_addr)
    where = f"{spec.master_addr}:{spec.master_port}"
    deadline = time.monotonic() + spec.wait
    log(f"nodes: node {spec.node_rank} of {spec.nnodes} on {info['host']}: checking in with node 0 at {where}",
        flush=True)
    while True:
        try:
            conn = socket.create_connection((spec.master_addr, spec.master_port), timeout=5)
            break
        except OSError as err:
            if time.monotonic() > deadline:
                reason = err.strerror or str(err) or type(err).__name__
                raise MiniQwenError(
                    f"cannot reach node 0 at {where} from node {spec.node_rank} ({info['host']}) within "
                    f"{spec.wait:.0f}s (NODES_WAIT): {reason}. Is node 0 started (NODE_RANK=0 on the machine at "
                    f"MASTER_ADDR)? Is MASTER_ADDR node 0's address as this node reaches it (`hostname -I` on "
                    f"node 0)? Is port {spec.master_port} open between the nodes?") from None
            time.sleep(1.0)
    with conn:
        _send(conn, info)
        answer = _receive(conn, spec.wait + 60)
    if answer is None:
        raise MiniQwenError(f"something at {where} answered that is not node 0's check-in (an earlier run's "
                            f"rendezvous still running there?). Stop it, or use another MASTER_PORT on every node.")
    if "error" in answer:
        raise MiniQwenError(f"node 0 stopped the launch: {answer['error']}")
    log(f"nodes: node 0 accepted node {spec.node_rank}", flush=True)


# --------------------------------------------------------------------------- the launcher

def launcher_command(spec: NodeSpec, stage: str, argv: list[str], python: str = sys.executable) -> list[str]:
    """The accelerate or torchrun command of this node: NNODES machines x GPUS_PER_NODE processes, ZeRO-2."""
    script = stages.stage(stage).script_file
    if spec.launcher == "torchrun":
        deepspeed = [] if any(a.split("=")[0] == "--deepspeed" for a in argv) else ["--deepspeed", "ds_zero2.json"]
        return [python, "-m", "torch.distributed.run", "--nnodes", str(spec.nnodes), "--node_rank",
                str(spec.node_rank), "--nproc_per_node", str(spec.gpus_per_node), "--rdzv_endpoint",
                f"{spec.master_addr}:{spec.master_port}", script, *deepspeed, *argv]
    return [python, "-m", "accelerate.commands.launch", "--config_file", spec.accelerate_config,
            "--num_machines", str(spec.nnodes), "--machine_rank", str(spec.node_rank),
            "--main_process_ip", spec.master_addr, "--main_process_port", str(spec.master_port),
            "--num_processes", str(spec.nnodes * spec.gpus_per_node),
            "--deepspeed_multinode_launcher", "standard",  # one launcher per node, as here; not pdsh over ssh
            script, *argv]


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in stages.BY_NAME:
        raise MiniQwenError(f"usage: bash run.sh {{{'|'.join(stages.names())}}} nodes [stage flags...] with NNODES, "
                            f"NODE_RANK and MASTER_ADDR set (see README, \"Several nodes\").")
    stage, stage_argv = argv[0], argv[1:]
    spec = node_spec()
    info = checkin_info(spec, stage, stage_argv)
    if spec.nnodes > 1:
        (head_checkin if spec.node_rank == 0 else node_checkin)(spec, info)
    command = launcher_command(spec, stage, stage_argv)
    print(f"nodes: node {spec.node_rank}/{spec.nnodes}, head {spec.master_addr}:{spec.master_port}, "
          f"{spec.gpus_per_node} process(es) here: {shlex.join(command)}", flush=True)
    os.execv(command[0], command)  # run.sh started us in the repository folder, where the scripts are


if __name__ == "__main__":
    run_main(main)


# --------------------------------------------------------------------------- during training: a lost rank ends the run

EXIT_LOST_RANK = 3


class RankWatch:
    """A daemon thread in every process of a multi-process run: it beats a counter in a store on node 0
    (MASTER_ADDR:MASTER_PORT, the rendezvous store the launcher opened) every `interval` seconds. Process 0
    watches every counter, the others watch process 0's; a counter that stands still for `timeout` seconds
    is a lost process (killed, out of memory, its node gone). The first to see it writes one message into
    the store, prints it and leaves; every other process reads it within `interval` and leaves too, instead
    of hanging in a collective until NCCL's or gloo's timeout. A process that dies while its collective
    fails at once (gloo notices a closed socket) gets the same message from `lost_message_after`."""

    PREFIX = "mini_qwen/watch/"

    def __init__(self, timeout: float, interval: float = 2.0, output_dir: str | None = None, log=print):
        self.timeout, self.interval, self.output_dir, self.log = timeout, interval, output_dir, log
        self.store = self.thread = None
        self.rank = self.world = 0
        self.seen: dict[int, tuple[int, float]] = {}  # rank -> (last count, when it last moved)
        import threading

        self.stopped = threading.Event()

    def start(self) -> bool:
        import threading
        from datetime import timedelta

        import torch.distributed as dist

        if self.timeout <= 0 or not dist.is_initialized() or dist.get_world_size() < 2:
            return False
        try:
            self.attach(dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                      timeout=timedelta(seconds=60), wait_for_workers=False),
                        dist.get_rank(), dist.get_world_size())
        except (KeyError, ValueError, RuntimeError) as err:  # no launcher store: the collectives' own timeout rules
            self.log(f"nodes: no heartbeat watch ({err}); a lost process ends the run at --ddp_timeout only")
            self.store = None
            return False
        self.thread = threading.Thread(target=self._run, name="mini_qwen rank watch", daemon=True)
        self.thread.start()
        return True

    def attach(self, store, rank: int, world: int) -> None:
        """Use `store` (a torch.distributed Store, shared by all processes) as process `rank` of `world`."""
        import torch.distributed as dist

        self.store, self.rank, self.world = dist.PrefixStore(self.PREFIX, store), rank, world
        self.store.set(f"who/{rank}", json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                  "node": os.environ.get("GROUP_RANK", "?")}))
        self.store.add(f"beat/{rank}", 1)

    def stop(self) -> None:
        self.stopped.set()

    def who(self, rank: int) -> str:
        try:
            info = json.loads(self.store.get(f"who/{rank}"))
            return f"process {rank} (node {info['node']}, host {info['host']}, pid {info['pid']})"
        except Exception:  # noqa: BLE001 (the store may be gone with node 0)
            return f"process {rank}"

    def _counts(self, ranks) -> dict[int, int]:
        return {r: self.store.add(f"beat/{r}", 0) for r in ranks}

    def _lost(self) -> list[int]:
        now = time.monotonic()
        for rank, count in self._counts(range(self.world) if self.rank == 0 else [0]).items():
            if rank not in self.seen or self.seen[rank][0] != count:
                self.seen[rank] = (count, now)
        return [r for r, (_, moved) in self.seen.items() if r != self.rank and now - moved > self.timeout]

    def message(self, lost: list[int], how: str) -> str:
        from mini_qwen.checkpoint import complete_checkpoints

        found = complete_checkpoints(self.output_dir) if self.output_dir else []
        last = f"the last complete checkpoint is {found[0]}" if found else "no complete checkpoint yet"
        return (f"lost {', '.join(self.who(r) for r in lost)}: {how}. The run stops on every node; {last}. "
                f"Find why in that process's output (killed, out of memory, its node down), then start every node "
                f"again with --resume_from_checkpoint auto.")

    def _leave(self, message: str) -> None:
        self.log(f"\nerror: {message}", file=sys.stderr, flush=True)
        os._exit(EXIT_LOST_RANK)  # the main thread may sit in a collective that never returns

    def _run(self) -> None:
        failures = 0
        while not self.stopped.wait(self.interval):
            try:
                self.store.add(f"beat/{self.rank}", 1)
                if self.store.check(["lost"]):
                    self._leave(self.store.get("lost").decode())
                lost = self._lost()
                failures = 0
            except Exception as err:  # noqa: BLE001 (the store itself is unreachable)
                failures += 1
                if failures * self.interval < min(self.timeout, 30):
                    continue
                self._leave(f"lost contact with node 0's rendezvous store at {os.environ.get('MASTER_ADDR')}:"
                            f"{os.environ.get('MASTER_PORT')} ({type(err).__name__}): node 0 or its launcher is "
                            f"gone. Start every node again with --resume_from_checkpoint auto")
            if lost:
                self._leave(self._announce(self.message(lost, f"its heartbeat stopped more than "
                                                              f"{self.timeout:.0f}s ago (--lost_rank_timeout)")))

    def lost_message_after(self, err: BaseException) -> str | None:
        """The message for a collective that failed (`err`), naming the process whose heartbeat stopped; None
        when every process is still beating (then the error is not a lost process and is raised as it is)."""
        if self.store is None:
            return None
        try:
            if self.store.check(["lost"]):
                return self.store.get("lost").decode()
            before = self._counts(range(self.world))
            time.sleep(3 * self.interval)
            after = self._counts(range(self.world))
        except Exception:  # noqa: BLE001 (node 0's store is gone: node 0 is the lost one)
            return self.message([0], f"its rendezvous store stopped answering after {type(err).__name__}")
        lost = [r for r in range(self.world) if r != self.rank and before[r] == after[r]]
        if not lost:
            return None
        reason = re.sub(r"^\[[^\]]*\]\s*", "", " ".join(str(err).split())).split(". ")[0][:200]  # gloo's first line
        return self._announce(self.message(lost, f"a collective failed on process {self.rank} ({reason}) and its "
                                                 f"heartbeat has stopped"))

    def _announce(self, message: str) -> str:
        """Tell every process (they read it within `interval`): one message for the whole run."""
        try:
            self.store.set("lost", message)
        except Exception:  # noqa: BLE001 (node 0's store may be gone too)
            pass
        return message

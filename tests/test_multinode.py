"""Several nodes, on one machine: two launchers on 127.0.0.1 as nodes 0 and 1 (one CPU process each, gloo,
DeepSpeed ZeRO-2), started the ways users start them (slurm/mini_qwen.sbatch under a stand-in srun/scontrol,
`bash run.sh pt nodes` with accelerate and with torchrun); the checks before the launch (mini_qwen/nodes.py),
a lost rank, resume, and what makes a multi-process checkpoint complete.

The launches are the slow part (each process imports torch, transformers and DeepSpeed; DeepSpeed's first
run on a machine also compiles an op, ~1 min); the checks before a launch need no torch and take a second.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT

from mini_qwen.checkpoint import checkpoint_problem

STAND_IN = REPO_ROOT / "tests" / "slurm_standin"
TINY = ["--config", "demo/pt.yaml", "--model_preset", "tiny", "--gradient_accumulation_steps", "1",
        "--logging_steps", "1", "--learning_rate", "1e-3", "--warmup_steps", "0", "--seed", "0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nodes_env(port: int, **extra) -> dict:
    env = dict(os.environ, PYTHON=sys.executable, NNODES="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               GPUS_PER_NODE="1", NODES_WAIT="120", ACCELERATE_CONFIG="accelerate_config_cpu.yaml")
    return {**env, **{k: str(v) for k, v in extra.items()}}


def start(command: list[str], env: dict, log: Path, cwd=REPO_ROOT) -> subprocess.Popen:
    """A node's command in its own process group (so a test can end the whole tree), output in `log`."""
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def finish(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)


def checkin(stage_args: list[str], **env) -> subprocess.Popen:
    """`python -m mini_qwen.nodes pt ...`, the check run.sh's nodes mode does before it starts a launcher."""
    return subprocess.Popen([sys.executable, "-m", "mini_qwen.nodes", "pt", *stage_args], cwd=REPO_ROOT,
                            env=nodes_env(env.pop("port", free_port()), **env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def outputs(procs) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        out.append((p.returncode, stdout + stderr))
    return out


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


def logged_losses(output_dir: Path) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [e["loss"] for e in state["log_history"] if "loss" in e]


def worker_pid(port: int, rank: int) -> int | None:
    """The training process of `rank` in the run whose rendezvous is on `port` (not its launcher)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        script = [c for c in cmd[1:3] if not c.startswith(b"-")]  # `python -u mini_qwen_pt.py`, not `python -m ...`
        if (f"RANK={rank}".encode() in env and f"MASTER_PORT={port}".encode() in env
                and script and script[0].endswith(b"mini_qwen_pt.py")):
            return int(proc.name)
    return None


# --------------------------------------------------------------------------- before the launch: one message each

def test_a_wrong_node_rank_is_one_message():
    for rank, expected in (("2", "NODE_RANK=2 is not a node of this run: with NNODES=2 the ranks are 0 .. 1"),
                           ("one", "NODE_RANK=one is not allowed: this node's rank")):
        (rc, text), = outputs([checkin(TINY, NODE_RANK=rank)])
        assert rc == 2 and len(error_lines(text)) == 1, text
        assert expected in error_lines(text)[0] and "Traceback" not in text


def test_a_head_address_that_cannot_be_reached_is_one_message_in_bounded_time():
    t0 = time.monotonic()
    port = free_port()  # nothing listens there: node 0 never started
    (rc, text), = outputs([checkin(TINY, NODE_RANK=1, NODES_WAIT=2, port=port)])
    assert rc == 2 and time.monotonic() - t0 < 60, text
    assert f"cannot reach node 0 at 127.0.0.1:{port} from node 1" in text and "within 2s (NODES_WAIT)" in text
    (rc, text), = outputs([checkin(TINY, NODE_RANK=1, MASTER_ADDR="no-such-node.invalid")])
    assert rc == 2 and "MASTER_ADDR=no-such-node.invalid does not resolve on this node" in text
    (rc, text), = outputs([checkin(TINY, NODE_RANK=0, MASTER_ADDR="192.0.2.1")])  # TEST-NET: never this machine
    assert rc == 2 and "MASTER_ADDR=192.0.2.1 (192.0.2.1) is not an address of this machine" in text
    assert "Traceback" not in text


def test_nodes_with_different_flags_stop_before_any_launcher():
    port = free_port()
    head = checkin(TINY, NODE_RANK=0, port=port)
    other = checkin([*TINY[:-4], "--learning_rate", "2e-3", *TINY[-2:]], NODE_RANK=1, port=port)
    (rc0, text0), (rc1, text1) = outputs([head, other])
    assert rc0 == rc1 == 2, (text0, text1)
    assert "node 1 (" in text0 and "runs another configuration than node 0" in text0
    assert "--learning_rate 2e-3 (node 0: 1e-3)" in text0 and "--learning_rate 2e-3 (node 0: 1e-3)" in text1
    assert "error: node 0 stopped the launch:" in text1
    assert "accelerate" not in text0 + text1  # no launcher was started


def test_a_node_rank_given_twice_is_one_message():
    port = free_port()
    procs = [checkin(TINY, NODE_RANK=0, NNODES=3, port=port)]
    time.sleep(0.5)
    procs += [checkin(TINY, NODE_RANK=1, NNODES=3, port=port) for _ in range(2)]
    results = outputs(procs)
    assert [rc for rc, _ in results] == [2, 2, 2], results
    assert all("NODE_RANK=1 was given to two nodes" in text for _, text in results)


# --------------------------------------------------------------------------- complete checkpoints of several processes

def _checkpoint(folder: Path, ranks=(0, 1), shards=(0, 1)):
    from safetensors.torch import save_file

    (folder / "global_step2").mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    for r in ranks:
        torch.save({"r": r}, folder / f"rng_state_{r}.pth")
    for r in shards:
        torch.save({"r": r}, folder / "global_step2" / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
    (folder / "trainer_state.json").write_text("{}")
    return folder


def test_a_checkpoint_is_complete_only_with_every_process_files(tmp_path):
    assert checkpoint_problem(_checkpoint(tmp_path / "a")) is None
    problem = checkpoint_problem(_checkpoint(tmp_path / "b", shards=(0,), ranks=(0, 1)))
    assert "DeepSpeed optimizer shards of process(es) [1] missing (of 2)" in problem
    assert "RNG states" in checkpoint_problem(_checkpoint(tmp_path / "c", ranks=(0, 2), shards=(0, 1, 2)))
    cut = _checkpoint(tmp_path / "d")
    shard = cut / "global_step2" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:40])
    assert "truncated files ['global_step2/zero_pp_rank_1_mp_rank_00_optim_states.pt']" in checkpoint_problem(cut)


def test_trainer_writes_the_completeness_mark_after_the_rng_state():
    """LongRunMixin puts its barrier in `_save_rng_state`; that only helps while transformers (5.24) writes
    trainer_state.json after it in `_save_checkpoint`. If this fails after an upgrade, move the barrier."""
    import inspect

    from transformers import Trainer

    source = inspect.getsource(Trainer._save_checkpoint)
    assert source.index("self._save_rng_state(output_dir)") < source.index("TRAINER_STATE_NAME")


def test_processes_that_run_different_data_are_named():
    from mini_qwen.run_config import _what_decides, disagreements

    def config(size, lr):
        return {"arguments": {"data_dir": "/data/pt", "learning_rate": lr, "local_rank": 3},
                "data_files": [{"path": "/data/pt/a/x.parquet", "bytes": size}], "git": {"commit": "abc"},
                "versions": {"torch": "2.13.0"}}

    same = disagreements(_what_decides(config(10, 1e-3)), _what_decides(config(10, 1e-3)))
    assert same == []
    differ = disagreements(_what_decides(config(10, 1e-3)), _what_decides(config(12, 2e-3)))
    assert differ == ["--learning_rate 0.002 (process 0: 0.001)",
                      "data file a/x.parquet: 12 bytes (process 0: 10 bytes)"]


def test_a_process_whose_heartbeat_stops_is_named(tmp_path):
    """RankWatch on a real store (as node 0's launcher hosts it): a process that stops beating (hung, frozen or
    dead) counts as lost after the timeout, and the message names it and the last complete checkpoint."""
    from datetime import timedelta

    import torch.distributed as dist

    from mini_qwen.nodes import RankWatch

    server = dist.TCPStore("127.0.0.1", free_port(), is_master=True, timeout=timedelta(seconds=10),
                           wait_for_workers=False)
    (tmp_path / "run").mkdir()
    _checkpoint(tmp_path / "run" / "checkpoint-4")
    head, other = RankWatch(timeout=0.5, output_dir=str(tmp_path / "run")), RankWatch(timeout=0.5)
    head.attach(server, 0, 2)
    other.attach(server, 1, 2)
    assert head._lost() == []
    for _ in range(3):  # process 1 stops; process 0 keeps beating
        time.sleep(0.25)
        head.store.add("beat/0", 1)
    assert head._lost() == [1]
    message = head.message([1], "its heartbeat stopped")
    assert message.startswith(f"lost process 1 (node ?, host {socket.gethostname()}, pid {os.getpid()}): its "
                              f"heartbeat stopped. The run stops on every node; the last complete checkpoint is "
                              f"{tmp_path / 'run' / 'checkpoint-4'}")
    # after a failed collective: whoever is still beating is not named; the one that stopped is, and every
    # process then reads the same message from the store
    head.interval = 0.05
    assert "lost process 1" in head.lost_message_after(RuntimeError("[x.cc:1] Connection closed by peer. More"))
    assert other.store.get("lost").decode().startswith("lost process 1")


# --------------------------------------------------------------------------- two nodes on 127.0.0.1

@pytest.mark.slow
def test_two_nodes_lose_a_rank_then_resume_to_the_single_process_loss(tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    args = [*TINY, "--per_device_train_batch_size", "2", "--max_steps", "8", "--save_steps", "2",
            "--lost_rank_timeout", "60", "--output_dir", str(run), "--cache_dir", str(cache)]
    # 1. SLURM: the sbatch script, under a stand-in srun (one task per node, SLURM_NODEID per task) and scontrol
    port = free_port()
    slurm_env = nodes_env(port, PATH=f"{STAND_IN}:{os.environ['PATH']}", SLURM_SUBMIT_DIR=REPO_ROOT, SLURM_NNODES=2,
                          SLURM_JOB_NODELIST="127.0.0.[1-2]", SLURM_JOB_ID=7, SRUN_LOG_DIR=tmp_path)
    for name in ("NNODES", "MASTER_ADDR"):  # the script derives these from SLURM's variables
        slurm_env.pop(name)
    job = start(["bash", "slurm/mini_qwen.sbatch", "pt", *args], slurm_env, tmp_path / "sbatch.log")
    deadline = time.monotonic() + 900
    while not (run / "checkpoint-2" / "trainer_state.json").is_file():
        assert job.poll() is None and time.monotonic() < deadline, (tmp_path / "sbatch.log").read_text() + \
            (tmp_path / "task0.log").read_text()[-3000:]
        time.sleep(0.2)
    # 2. node 1's training process dies (SIGKILL: no handler runs); the whole run must end, naming it
    victim = worker_pid(port, rank=1)
    assert victim, "rank 1's training process not found"
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    assert finish([job], timeout=300) != [0]
    ended_after = time.monotonic() - killed
    head, node1 = (tmp_path / "task0.log").read_text(), (tmp_path / "task1.log").read_text()
    assert "head 127.0.0.1:" in (tmp_path / "sbatch.log").read_text()
    assert f"nodes: node 0 of 2 on {socket.gethostname()}: waiting" in head and f"127.0.0.1:{port}" in head
    assert f"nodes: node 1 of 2 on {socket.gethostname()}: checking in with node 0 at 127.0.0.1:{port}" in node1
    assert "launch: process 0/2" in head and "launch: process 1/2" in node1
    assert f"error: lost process 1 (node 1, host {socket.gethostname()}, pid {victim})" in head, head[-3000:]
    assert "start every node again with --resume_from_checkpoint auto" in head
    assert ended_after < 180, ended_after
    # every process wrote its part of checkpoint-2 before it counted as complete
    step2 = run / "checkpoint-2"
    assert checkpoint_problem(step2) is None
    assert {p.name for p in step2.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert len(list(step2.glob("global_step2/zero_pp_rank_*_optim_states.pt"))) == 2

    # 3. both nodes again, now with torchrun (--deepspeed ds_zero2.json), from the last complete checkpoint
    port = free_port()
    resumed = [start(["bash", "run.sh", "pt", "nodes", *args, "--resume_from_checkpoint", "auto"],
                     nodes_env(port, LAUNCHER="torchrun", NODE_RANK=rank), tmp_path / f"resume{rank}.log")
               for rank in (0, 1)]
    assert finish(resumed, timeout=600) == [0, 0], (tmp_path / "resume0.log").read_text()[-3000:]
    log = (tmp_path / "resume0.log").read_text()
    assert "torch.distributed.run --nnodes 2 --node_rank 0" in log
    assert f"resume: continuing from {run}/checkpoint-" in log

    # 4. the same 8 steps in one process with the same global batch
    single = subprocess.run(["bash", "run.sh", "pt", "single", *TINY, "--per_device_train_batch_size", "4",
                             "--max_steps", "8", "--save_strategy", "no", "--output_dir", str(tmp_path / "single"),
                             "--cache_dir", str(cache)], cwd=REPO_ROOT, env=dict(os.environ, PYTHON=sys.executable),
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    one, two = logged_losses(tmp_path / "single"), logged_losses(run)
    assert len(one) == len(two) == 8
    for a, b in zip(one, two):  # the tolerance tests/test_multiprocess.py uses for 1 vs 2 processes
        assert abs(a - b) < 0.02 * abs(a), (one, two)


@pytest.mark.slow
def test_nodes_with_different_data_stop_before_training(tmp_path):
    """Node 1 has its own copy of the repository whose data differs (one file lost rows): the same flags pass the
    check-in, then the processes compare what they found and stop, naming the file, before any training."""
    import pyarrow.parquet as pq

    copy = tmp_path / "node1"
    copy.mkdir()
    for entry in REPO_ROOT.iterdir():
        if entry.name not in ("mini_data", ".git", "results", "logs"):
            (copy / entry.name).symlink_to(entry)
    pt_files = sorted((REPO_ROOT / "mini_data" / "pt").rglob("*.parquet"))
    for f in pt_files:
        target = copy / f.relative_to(REPO_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        table = pq.read_table(f)
        pq.write_table(table.slice(1) if f == pt_files[0] else table, target)
    args = [*TINY, "--per_device_train_batch_size", "2", "--max_steps", "2", "--save_strategy", "no",
            "--output_dir", str(tmp_path / "run"), "--cache_dir", str(tmp_path / "cache")]
    port = free_port()
    procs = [start(["bash", "run.sh", "pt", "nodes", *args], nodes_env(port, NODE_RANK=0), tmp_path / "node0.log"),
             start(["bash", str(copy / "run.sh"), "pt", "nodes", *args], nodes_env(port, NODE_RANK=1),
                   tmp_path / "node1.log", cwd=copy)]
    assert finish(procs, timeout=600) != [0, 0]
    text = (tmp_path / "node0.log").read_text()
    changed = pt_files[0].relative_to(REPO_ROOT / "mini_data" / "pt")
    assert "nodes: all 2 nodes checked in" in text
    assert (f"does not run what process 0 (node 0, host {socket.gethostname()}) runs: data file {changed}: "
            f"{(copy / pt_files[0].relative_to(REPO_ROOT)).stat().st_size} bytes (process 0: "
            f"{pt_files[0].stat().st_size} bytes)") in text, text[-3000:]
    assert "error: process 1 (node 1," in text
    assert not (tmp_path / "run" / "trainer_state.json").exists() and "'loss'" not in text  # nothing trained

"""`torchrun --nproc-per-node 2 -m rlvfast.train` on the CPU (gloo, FSDP2, DCP) against one process.

A micro model (1 layer, hidden 32) and a parity reward (varied rewards from a random model).
One 3-step run at world size 2 (`two_ranks`, shared) is checked against one process: the first
step's loss, grad norm and rollout metrics, and the weights after it (its step-1 checkpoint,
DCP, read back in one process), fp32 within 1e-5 relative; resuming its step-2 checkpoint at
world size 2 and in one process gives its step 3 again; a rank killed mid-run ends the job
(torchrun names it) and the last checkpoint resumes; a peer that hangs ends a collective with
the timeout, naming the rank; a rank's rollouts are those of its problems in one process.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from rlvfast.cli import UserError
from rlvfast.models import load_model
from rlvfast.sampler import Sampler, SamplingParams, format_prompt
from rlvfast.train import checkpoint as ckpt
from rlvfast.train import distributed
from rlvfast.train import loop as train_mod
from rlvfast.train.config import TrainConfig
from rlvfast.train.rollouts import problems_for_step, step_seed
from rlvfast.tasks.synthetic import make_problems

ROOT = Path(__file__).resolve().parents[2]
REWARD_MODULE = '''
def parity(prompts, completions, completion_ids, **columns):
    """1 when the sampled ids sum to an even number: varied rewards even from a random model."""
    return [float(sum(ids) % 2 == 0) for ids in completion_ids]
'''
# micro_batch 5: two micro-batches in one process, one per rank at world size 2; under FSDP2 too: the
# reference model (kl_coef), two optimizer steps per batch (ppo_epochs), activation checkpointing
OPTIONS = dict(steps=3, prompts_per_step=2, group_size=4, max_new_tokens=8, micro_batch=5, eval_problems=0,
               verify_prompt="\nOK?\n", checkpoint_every=1, keep_last=5, lr=1e-2, warmup=0, lr_schedule="constant",
               compare=False, seed=1, dist_timeout=60, kl_coef=0.05, ppo_epochs=2, gradient_checkpointing=True)
# what a step computes from its rollouts: equal at world sizes 1 and 2 up to float rounding
COMPARED = ("loss", "loss/policy", "loss/verifier", "kl", "grad_norm", "reward", "reward_std", "num_train_tokens",
            "completions/mean_length", "entropy", "verifier/accuracy", "clip_ratio")


def module_on_path(tmp_path_factory, name: str, source: str):
    """A fixture's body: a folder holding `name`.py (`source`), on sys.path while the fixture lives."""
    folder = tmp_path_factory.mktemp("reward")
    (folder / f"{name}.py").write_text(source)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    yield from module_on_path(tmp_path_factory, "rlvfast_dist_rewards", REWARD_MODULE)


def config(micro_dir, out, **overrides) -> TrainConfig:
    return TrainConfig(**{**OPTIONS, "model": str(micro_dir), "out": str(out),
                          "reward": "rlvfast_dist_rewards:parity", **overrides})


def argv(cfg: TrainConfig) -> list[str]:
    """The command line of `cfg`'s options that differ from the defaults."""
    default, args = TrainConfig(), []
    for name, value in cfg.to_dict().items():
        if value == getattr(default, name):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args.append(f"{flag}={value}")
    return args


def torchrun(cfg: TrainConfig, reward_dir: Path, nproc: int = 2, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(reward_dir)]), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                             "-m", "rlvfast.train", *argv(cfg)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_step(got: dict, want: dict) -> None:
    for key in COMPARED:
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key


def quiet(*args):
    pass


@pytest.fixture(scope="module")
def two_ranks(micro_dir, reward_dir, tmp_path_factory):
    """A 3-step run at world size 2, a checkpoint after every step."""
    out = tmp_path_factory.mktemp("ws2") / "run"
    finish(torchrun(config(micro_dir, out), reward_dir))
    return out


def sharded_weights(path: Path) -> dict[str, torch.Tensor]:
    """The model weights of a sharded checkpoint, read in one process (no process group)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(path / ckpt.SHARDED, path.parent / "full.pt")
    return torch.load(path.parent / "full.pt", weights_only=False)["model"]


def test_a_step_at_world_size_2_equals_one_process(two_ranks, micro_dir, reward_dir, tmp_path):
    one = tmp_path / "one"
    train_mod.train(config(micro_dir, one, steps=1), log=quiet)
    assert_same_step(metrics(two_ranks)[0], metrics(one)[0])
    from safetensors.torch import load_file

    want = load_file(one / "final" / "model.safetensors")
    got = sharded_weights(two_ranks / "checkpoints" / "step-000001")
    assert want.keys() <= got.keys()
    start = load_file(micro_dir / "model.safetensors")
    for name, tensor in want.items():
        # per tensor: Adam's first step is lr * g / (|g| + eps), so an element whose gradient is
        # near eps moves by a few 1e-7 more or less when g changes in its 7th digit (k_proj: 6e-7)
        assert float((got[name] - tensor).norm()) <= 1e-5 * float(tensor.norm()), name
        assert float((tensor - start[name]).abs().min()) > 1e-3, name  # the step moved every weight


def test_final_is_one_hugging_face_directory(two_ranks):
    model, _ = load_model(two_ranks / "final", device=torch.device("cpu"))
    full = sharded_weights(two_ranks / "checkpoints" / "step-000003")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, full[name]), name
    assert json.loads((two_ranks / "final" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert len(metrics(two_ranks)) == 3 and (two_ranks / "summary.json").is_file()


def interrupted_copy(run: Path, dest: Path) -> Path:
    """`run` as if it had stopped after its step-2 checkpoint."""
    shutil.copytree(run, dest)
    shutil.rmtree(dest / "checkpoints" / "step-000003")
    ckpt.write_marker(dest, "step-000002")
    return dest


def test_resume_at_world_size_2_and_1_continues_the_run(two_ranks, micro_dir, reward_dir, tmp_path):
    again = interrupted_copy(two_ranks, tmp_path / "ws2")
    proc = torchrun(config(micro_dir, again, resume=True), reward_dir)
    alone = interrupted_copy(two_ranks, tmp_path / "ws1")
    train_mod.train(config(micro_dir, alone, resume=True), log=quiet)  # DCP reshards onto one rank
    finish(proc)
    want = metrics(two_ranks)
    for out in (again, alone):
        got = metrics(out)
        assert [m["step"] for m in got] == [1, 2, 3]
        assert got[:2] == want[:2]
        assert_same_step(got[2], want[2])
    assert ckpt.is_sharded(ckpt.latest_checkpoint(alone))  # still a sharded run


def test_resume_a_one_process_checkpoint_at_world_size_2(micro_dir, reward_dir, tmp_path):
    one = tmp_path / "one"
    train_mod.train(config(micro_dir, one, steps=2), log=quiet)
    uninterrupted = tmp_path / "uninterrupted"
    train_mod.train(config(micro_dir, uninterrupted, steps=3), log=quiet)
    finish(torchrun(config(micro_dir, one, resume=True), reward_dir))
    assert ckpt.is_sharded(ckpt.latest_checkpoint(one))
    assert_same_step(metrics(one)[2], metrics(uninterrupted)[2])


def rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the worker with RANK=rank below `parent` (torchrun's agent)."""
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(child)
    return None


def test_a_killed_rank_ends_the_job_and_the_last_checkpoint_resumes(micro_dir, reward_dir, tmp_path):
    out = tmp_path / "run"
    proc = torchrun(config(micro_dir, out, steps=1000, keep_last=2), reward_dir)
    deadline = time.monotonic() + 180
    while not (out / ckpt.MARKER).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    pid = rank_pid(proc.pid, 1)
    assert pid is not None and proc.poll() is None, "no checkpoint was written"
    os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - start < OPTIONS["dist_timeout"]  # ended, not waiting out the timeout
    assert "rank      : 1 (local_rank: 1)" in output and "(SIGKILL)" in output, output[-3000:]  # torchrun names it
    step = ckpt.load_trainer_state(ckpt.latest_checkpoint(out))["step"]
    train_mod.train(config(micro_dir, out, steps=step + 1, resume=True), log=quiet)
    assert metrics(out)[-1]["step"] == step + 1


HANG = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    import torch
    from rlvfast.train import distributed
    # both ranks start the group together: under load one may take longer than the 3 s timeout
    # to import torch, which would end the rendezvous, not the collective this test is about
    ready = Path(sys.argv[1])
    (ready / os.environ["RANK"]).touch()
    while len(list(ready.iterdir())) < 2:
        time.sleep(0.05)
    world = distributed.init(torch.device("cpu"), 3)
    if world.rank == 1:
        time.sleep(30)
        sys.exit(0)
    try:
        world.sum([1.0], "summing the loss")
    except distributed.DistributedError as e:  # what the trainer does: `train`'s finally, then `_main`
        print("ERROR", e)
        distributed.destroy()
        distributed.abandon(1)
    sys.exit(3)  # abandon returned: no collective failed
''')


def test_a_hung_peer_ends_a_collective_with_the_timeout(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(HANG)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1", "WORLD_SIZE": "2"}
    with socket_port() as port:
        env["MASTER_PORT"] = str(port)
    ready = tmp_path / "ready"
    ready.mkdir()
    procs = [subprocess.Popen([sys.executable, str(script), str(ready)], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    try:
        out, _ = procs[0].communicate(timeout=60)
    finally:
        procs[1].kill()
        procs[1].wait()
    assert procs[0].returncode == 1, out
    assert "ERROR rank 0 of 2: summing the loss failed" in out and "--dist-timeout 3 s" in out, out


UNEVEN = textwrap.dedent('''
    import sys
    from pathlib import Path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from rlvfast.train import distributed
    world = distributed.init(torch.device("cpu"), 20)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    distributed.shard(model, "fp32")
    with torch.no_grad(), distributed.full_weights(model):  # ranks decode different lengths: 1 and 3 forwards
        for _ in range(1 + 2 * world.rank):
            logits = model(torch.tensor([[1, 2, 3]])).logits
    world.barrier("after the forwards")
    (Path(sys.argv[1]) / f"rank{world.rank}").write_text(repr(logits.sum().item()))
    distributed.destroy()
''')


def test_forwards_inside_full_weights_need_no_collective(tmp_path):
    """HF's trunk (a model the Sampler's fast trunk does not support) samples by calling the FSDP2
    units' forwards: inside `full_weights` they must not reshard, or a rank's next forward would
    all-gather with peers that decode fewer steps (it hung until the timeout)."""
    script = tmp_path / "uneven.py"
    script.write_text(UNEVEN)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    logits = [float((tmp_path / f"rank{rank}").read_text()) for rank in (0, 1)]
    assert logits[0] == logits[1] != 0.0  # the same full weights on both ranks


class socket_port:
    """A free TCP port (closed again before the processes bind it)."""

    def __enter__(self) -> int:
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()


def test_a_rank_samples_what_one_process_samples_of_its_problems(micro_dir):
    model, tokenizer = load_model(micro_dir, device=torch.device("cpu"))
    sampler = Sampler(model, tokenizer, verify_prompt="\nOK?\n")
    batch = problems_for_step(make_problems(200, "train", seed=0), step=5, num=4, seed=1)
    params = SamplingParams(n=3, max_tokens=8, seed=step_seed(1, 5))

    def completions(problems):
        outputs = sampler.generate([format_prompt(tokenizer, p.problem) for p in problems], params, score=False)
        return [c for o in outputs for c in o.completions]

    whole = completions(batch)
    for size in (2, 4):
        shares = [distributed.local_slice(distributed.World(rank, size), batch) for rank in range(size)]
        assert [first for _, first in shares] == [rank * 4 // size for rank in range(size)]
        got = [c for share, _ in shares for c in completions(share)]
        assert [c.token_ids for c in got] == [c.token_ids for c in whole]  # the same samples
        for c, w in zip(got, whole):  # log-probs: another batch shape rounds the 7th digit differently
            torch.testing.assert_close(c.logprobs, w.logprobs, rtol=1e-5, atol=1e-6)


def test_prompts_per_step_must_divide_over_the_ranks():
    with pytest.raises(UserError, match="--prompts-per-step 3 is not a multiple of the world size 2"):
        distributed.check_divides(distributed.World(0, 2), 3)
    distributed.check_divides(distributed.World(0, 2), 4)


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean", "constant"])
def test_a_ranks_loss_weights_are_those_of_its_samples_in_one_process(loss_agg):
    from types import SimpleNamespace

    from rlvfast.train.rollouts import WholeBatch, to_samples

    cfg = TrainConfig(group_size=2, loss_agg=loss_agg, verifier_agg="balanced")
    lengths, rewards = [3, 5, 2, 7, 4, 1, 6, 2], [1.0, 0.0, None, 1.0, 0.0, 0.0, 1.0, 1.0]  # 4 groups of 2
    completions = [SimpleNamespace(token_ids=list(range(n)), logprobs=torch.zeros(n)) for n in lengths]
    outputs = [SimpleNamespace(prompt_token_ids=[9, g], completions=completions[2 * g:2 * g + 2]) for g in range(4)]
    whole = to_samples(outputs, rewards, cfg, yes_id=1, no_id=2)
    for rank in (0, 1):  # world size 2: two groups each
        share = to_samples(outputs[2 * rank:2 * rank + 2], rewards[4 * rank:4 * rank + 4], cfg, 1, 2,
                           WholeBatch(rewards, lengths, 4 * rank))
        assert share == whole[4 * rank:4 * rank + 4]
    alone = to_samples(outputs[2:], rewards[4:], cfg, 1, 2)  # normalized over its own samples: not the same
    assert [s.token_weight for s in alone] != [s.token_weight for s in whole[4:]]

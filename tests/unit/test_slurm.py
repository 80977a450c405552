"""The SLURM scripts and tools/launch_slurm.py, run against stub SLURM commands and python.

The stubs record what the batch script would launch, so the tests check the real command lines
(task layout, container, entry point, resume and exit flags, rank variables) and the requeue
decision, without a cluster. tests/slurm/ runs the same scripts under a real SLURM controller.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLURM = os.path.join(REPO, "examples", "slurm")
sys.path.insert(0, os.path.join(REPO, "tools"))

import launch_slurm  # noqa: E402

STUBS = {
    # srun: record its own argv, then run the task command as global rank 9 of 16 (node 1).
    "srun": """#!/bin/bash
printf '%s\\n' "$@" > "$STUB_LOG/srun.argv"
while [ $# -gt 0 ] && [[ $1 == --* ]]; do shift; done
SLURM_PROCID=9 SLURM_LOCALID=1 SLURM_NTASKS=16 exec "$@"
""",
    "scontrol": """#!/bin/bash
if [ "$1 $2" = "show hostnames" ]; then printf 'gpu-node-017\\ngpu-node-018\\n'
elif [ "$1 $2" = "show node" ]; then echo "NodeName=$4 NodeAddr=10.1.0.17 NodeHostName=$4"
else echo "$@" >> "$STUB_LOG/scontrol"; fi
""",
    # %L: time left; %T: the job's state.
    "squeue": """#!/bin/bash
case "$*" in *%T*) echo "${STUB_JOB_STATE:-RUNNING}" ;; *) echo 3:59:10 ;; esac
""",
    # scancel --signal=TERM JOB: SLURM signals every step's tasks (here: the one rank).
    "scancel": """#!/bin/bash
echo "$@" >> "$STUB_LOG/scancel"
kill -TERM "$(cat "$STUB_LOG/python.pid")"
""",
    # python (the training rank): record argv and rank env; optionally write megatron's tracker.
    "python": """#!/bin/bash
# like --exit-signal-handler: exit 0 on SIGTERM (installed before argv is written, which the
# USR1 test waits for)
[ -z "$STUB_RUN_UNTIL_TERM" ] || trap 'kill $!; echo TERM > "$STUB_LOG/python.term"; exit 0' TERM
echo $$ > "$STUB_LOG/python.pid"
printf '%s\\n' "$@" > "$STUB_LOG/python.argv"
echo "RANK=$RANK LOCAL_RANK=$LOCAL_RANK WORLD_SIZE=$WORLD_SIZE MASTER_ADDR=$MASTER_ADDR PWD=$PWD" > "$STUB_LOG/python.env"
[ -z "$STUB_TRACKER" ] || echo "$STUB_TRACKER" > "$CKPT_DIR/latest_checkpointed_iteration.txt"
if [ -n "$STUB_RUN_UNTIL_TERM" ]; then sleep 30 >/dev/null 2>&1 & wait; fi
exit "${STUB_RC:-0}"
""",
}


@pytest.fixture
def slurm_env(tmp_path):
    stub_dir = tmp_path / "bin"
    stub_dir.mkdir()
    for name, body in STUBS.items():
        (stub_dir / name).write_text(body)
        (stub_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{stub_dir}:{os.environ['PATH']}", STUB_LOG=str(tmp_path),
               SLURM_JOB_ID="4242", SLURM_NNODES="2", SLURM_JOB_NODELIST="gpu-node-[017-018]",
               SLURM_SUBMIT_DIR=REPO, SLURM_JOB_NAME="t", CKPT_DIR=str(tmp_path / "ckpt"),
               REPO_DIR=REPO, STUB_TRACKER="", STUB_RC="0", STUB_RUN_UNTIL_TERM="",
               STUB_JOB_STATE="RUNNING")
    return env, tmp_path


def run_script(path, env, **extra):
    proc = subprocess.run(["bash", str(path)], env=dict(env, **extra), cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    return proc


def read_lines(path):
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("name", ["pretrain_single_node.sbatch", "pretrain_multi_node.sbatch"])
def test_sbatch_scripts_parse(name):
    subprocess.run(["bash", "-n", os.path.join(SLURM, name)], check=True)


@pytest.fixture
def generated_9b(tmp_path):
    out = tmp_path / "job.sbatch"
    rc = launch_slurm.main(["--config", "examples/configs/moe_9b_a1b.yaml", "--nodes", "2",
                            "--time", "04:00:00", "--container-image", "/img/nitp.sqsh",
                            "--container-mounts", "/lustre:/lustre",
                            "--data-path", "/lustre/data/corpus_text_document",
                            "--output", str(out)])
    assert rc == 0
    return out


def test_generated_9b_two_node_script_launches_16_ranks_of_the_moe_entry(generated_9b,
                                                                         slurm_env):
    env, log = slurm_env
    text = generated_9b.read_text()
    subprocess.run(["bash", "-n", str(generated_9b)], check=True)
    assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=8" in text
    assert "#SBATCH --requeue" in text and "#SBATCH --signal=B:USR1@300" in text

    proc = run_script(generated_9b, env)
    assert proc.returncode == 0, proc.stderr
    srun = read_lines(log / "srun.argv")
    assert "--nodes=2" in srun and "--ntasks-per-node=8" in srun and "--cpus-per-task=8" in srun
    assert "--container-image=/img/nitp.sqsh" in srun
    assert f"--container-mounts={env['CKPT_DIR']}:{env['CKPT_DIR']},/lustre:/lustre" in srun

    argv = read_lines(log / "python.argv")
    assert argv[0] == "pretrain_moe_nitp.py"
    cli = " ".join(argv[1:])
    assert "--config examples/configs/moe_9b_a1b.yaml" in cli
    assert f"--save {env['CKPT_DIR']}" in cli and f"--load {env['CKPT_DIR']}" in cli
    assert "--exit-signal-handler" in argv
    # 3:59:10 left (squeue stub) minus the 15-minute save margin.
    assert "--exit-duration-in-mins 224" in cli
    assert "--data-path /lustre/data/corpus_text_document" in cli
    # 3 x the 9B checkpoint's write at 1 GB/s is under an hour: the floor.
    assert "--distributed-timeout-minutes 60" in cli
    rank_env = (log / "python.env").read_text()
    # MASTER_ADDR: the first node's NodeAddr as SLURM knows it.
    assert "RANK=9 LOCAL_RANK=1 WORLD_SIZE=16 MASTER_ADDR=10.1.0.17" in rank_env


def test_job_requeues_only_while_checkpoint_is_short_of_train_iters(generated_9b, slurm_env):
    env, log = slurm_env
    proc = run_script(generated_9b, env, STUB_TRACKER="12000")
    assert proc.returncode == 0, proc.stderr
    assert read_lines(log / "scontrol") == ["requeue 4242"]

    (log / "scontrol").unlink()
    proc = run_script(generated_9b, env, STUB_TRACKER="39339")  # the config's train-iters
    assert proc.returncode == 0 and read_lines(log / "scontrol") == []

    proc = run_script(generated_9b, env, STUB_TRACKER="12000", STUB_RC="1")  # crashed
    assert proc.returncode == 1 and read_lines(log / "scontrol") == []


def _stop_with(script, env, log, sig):
    proc = subprocess.Popen(["bash", str(script)], env=dict(env, STUB_RUN_UNTIL_TERM="1",
                                                            STUB_TRACKER="12000"),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while not (log / "python.argv").exists() and time.time() < deadline:
        time.sleep(0.05)  # the rank is up and its TERM handler installed
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    return proc, out, err


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_usr1_or_term_to_the_batch_script_stops_the_ranks_through_their_step_and_requeues(
        generated_9b, slurm_env, sig):
    # USR1: what --signal=B:USR1@300 does; TERM to the batch shell alone: a preemption notice.
    env, log = slurm_env
    proc, out, err = _stop_with(generated_9b, env, log, sig)
    assert proc.returncode == 0, err
    # The step's tasks are signalled (srun would answer a SIGTERM by killing them).
    assert read_lines(log / "scancel") == ["--signal=TERM 4242"]
    assert (log / "python.term").exists()
    assert read_lines(log / "scontrol") == ["requeue 4242"]


def test_a_job_that_slurm_is_ending_or_that_made_no_progress_is_not_requeued(generated_9b,
                                                                            slurm_env):
    env, log = slurm_env
    # scancel / scontrol requeue: the ranks saved within the grace time and exited 0.
    proc, out, _ = _stop_with(generated_9b, dict(env, STUB_JOB_STATE="CANCELLED"), log,
                              signal.SIGTERM)
    assert proc.returncode == 0 and read_lines(log / "scontrol") == []
    assert "not requeued: the job is CANCELLED" in out
    # The checkpoint is where this run started: requeueing would only repeat the run.
    proc = run_script(generated_9b, env, STUB_TRACKER="12000")
    assert proc.returncode == 0 and read_lines(log / "scontrol") == []
    assert "not requeued: no new checkpoint in this run" in proc.stdout


def test_cpu_nodes_get_one_rank_per_cpu_slot_and_no_gpu(tmp_path, slurm_env, capsys):
    env, log = slurm_env
    out = tmp_path / "cpu.sbatch"
    assert launch_slurm.main(["--config", "examples/configs/dense_0.5b.yaml", "--nodes", "2",
                              "--gpus-per-node", "0", "--ntasks-per-node", "4",
                              "--data-path", "/d", "--output", str(out)]) == 0
    text = out.read_text()
    assert "#SBATCH --ntasks-per-node=4" in text and "#SBATCH --cpus-per-task=1" in text
    assert "--gpus-per-node" not in "".join(x for x in text.splitlines(True)
                                            if x.startswith("#SBATCH"))
    proc = run_script(out, env)
    assert proc.returncode == 0, proc.stderr
    srun = read_lines(log / "srun.argv")
    assert "--ntasks-per-node=4" in srun and "--cpus-per-task=1" in srun
    with pytest.raises(SystemExit) as e:
        launch_slurm.main(["--config", "examples/configs/dense_0.5b.yaml", "--nodes", "1",
                           "--gpus-per-node", "0"])
    assert e.value.code == 2 and "give --ntasks-per-node" in capsys.readouterr().err


def test_distributed_timeout_outlasts_the_largest_configs_save():
    from tests.helpers import suite_parse_args as parse_args

    args = parse_args(["--config", os.path.join(REPO, "examples/configs/moe_45b_a5.5b.yaml")])
    minutes = launch_slurm.save_minutes(args)
    assert 10 < minutes < 11  # 44.9 B parameters x 14 bytes at 1 GB/s: past megatron's 10
    assert launch_slurm.distributed_timeout_minutes(args) >= 3 * minutes


def test_dense_config_uses_the_gpt_entry_point(tmp_path, slurm_env):
    env, log = slurm_env
    out = tmp_path / "dense.sbatch"
    assert launch_slurm.main(["--config", "examples/configs/dense_0.5b.yaml", "--nodes", "1",
                              "--data-path", "/d", "--output", str(out)]) == 0
    proc = run_script(out, env, SLURM_NNODES="1")
    assert proc.returncode == 0, proc.stderr
    assert read_lines(log / "python.argv")[0] == "pretrain_gpt_nitp.py"
    assert not any(a.startswith("--container") for a in read_lines(log / "srun.argv"))


def test_single_node_script_runs_the_multi_node_logic_on_one_node(slurm_env):
    env, log = slurm_env
    proc = run_script(os.path.join(SLURM, "pretrain_single_node.sbatch"), env,
                      SLURM_NNODES="1", DATA_PATH="/d")
    assert proc.returncode == 0, proc.stderr
    assert "--nodes=1" in read_lines(log / "srun.argv")
    argv = read_lines(log / "python.argv")
    assert argv[0] == "pretrain_gpt_nitp.py" and "examples/configs/dense_0.5b.yaml" in argv


def test_launcher_rejects_a_layout_that_does_not_fit(capsys):
    # 45B: PP4 x EP8 needs 32 GPUs; 2 nodes leave data parallel 4 < EP 8.
    assert launch_slurm.main(["--config", "examples/configs/moe_45b_a5.5b.yaml",
                              "--nodes", "2"]) == 2
    assert "not a multiple of EP 8" in capsys.readouterr().err

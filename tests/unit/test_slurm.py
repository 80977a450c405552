"""The SLURM scripts and tools/launch_slurm.py, run against stub srun/scontrol/squeue/python.

The stubs record what the batch script would launch, so the tests check the real command lines
(task layout, container, entry point, resume and exit flags, rank variables) and the requeue
decision, without a cluster.
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
if [ "$1" = show ]; then printf 'gpu-node-017\\ngpu-node-018\\n'; else echo "$@" >> "$STUB_LOG/scontrol"; fi
""",
    "squeue": "#!/bin/bash\necho 3:59:10\n",
    # python (the training rank): record argv and rank env; optionally write megatron's tracker.
    "python": """#!/bin/bash
# like --exit-signal-handler: exit 0 on SIGTERM (installed before argv is written, which the
# USR1 test waits for)
[ -z "$STUB_RUN_UNTIL_TERM" ] || trap 'kill $!; echo TERM > "$STUB_LOG/python.term"; exit 0' TERM
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
               REPO_DIR=REPO, STUB_TRACKER="", STUB_RC="0", STUB_RUN_UNTIL_TERM="")
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
    assert "--nodes=2" in srun and "--ntasks-per-node=8" in srun
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
    rank_env = (log / "python.env").read_text()
    assert "RANK=9 LOCAL_RANK=1 WORLD_SIZE=16 MASTER_ADDR=gpu-node-017" in rank_env


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


def test_usr1_before_the_time_limit_stops_the_ranks_and_requeues(generated_9b, slurm_env):
    env, log = slurm_env
    proc = subprocess.Popen(["bash", str(generated_9b)], env=dict(env, STUB_RUN_UNTIL_TERM="1"),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while not (log / "python.argv").exists() and time.time() < deadline:
        time.sleep(0.05)  # the rank is up and its TERM handler installed
    proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 does
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert (log / "python.term").exists()  # the rank got SIGTERM through srun
    assert read_lines(log / "scontrol") == ["requeue 4242"]  # no tracker: trust the signal


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

"""Write a SLURM batch script for one config and node count, from examples/slurm's template.

  python tools/launch_slurm.py --config examples/configs/moe_9b_a1b.yaml --nodes 2 \
      --time 04:00:00 --container-image ./megatron-nitp.sqsh --container-mounts /lustre:/lustre \
      --data-path /lustre/data/corpus_text_document --output nitp_9b.sbatch
  sbatch nitp_9b.sbatch

CPU partitions: --gpus-per-node 0 --ntasks-per-node N (one rank per CPU slot of
--cpus-per-task cores; no GPU is requested). tests/slurm/ runs what this tool writes under a
real SLURM controller.

The template (examples/slurm/pretrain_multi_node.sbatch) holds the launch logic: one srun task
per GPU, pyxis container, resume on requeue, save before the time limit. This tool only fills
its #SBATCH header and its "launch settings" block, after checking with the training CLI's own
parser that the config is valid and that its parallel layout fits nodes x ranks per node.
"""

import math

import argparse
import os
import re
import shlex
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))

from megatron_nitp.models.param_count import count_parameters
from megatron_nitp.training.arguments import parse_args

TEMPLATE = os.path.join(REPO, "examples", "slurm", "pretrain_multi_node.sbatch")
BLOCK = re.compile(r"# >>> launch settings.*?\n(.*?)# <<< launch settings\n", re.S)

# What a checkpoint holds per parameter with the distributed optimizer: bf16 weights (2 bytes),
# fp32 master weights and Adam's two moments (3 x 4).
CHECKPOINT_BYTES_PER_PARAM = 14
# A pessimistic shared-filesystem write rate for the whole job.
SLOW_WRITE_BYTES_PER_S = 1e9


def save_minutes(args):
    """Minutes one checkpoint of this config takes at SLOW_WRITE_BYTES_PER_S."""
    total = count_parameters(args)["total"]
    return total * CHECKPOINT_BYTES_PER_PARAM / SLOW_WRITE_BYTES_PER_S / 60


def distributed_timeout_minutes(args):
    """The process-group timeout: the barrier after a save waits for the slowest writer, so it
    must outlast a slow save (moe_45b: ~630 GB, ~10.5 min at 1 GB/s, already past megatron's
    10-minute default); three slow saves, and never under an hour."""
    return max(60, math.ceil(3 * save_minutes(args)))


def entry_point(args):
    """MoE configs run pretrain_moe_nitp.py (expert-parallel groups), dense ones the GPT one."""
    return "pretrain_moe_nitp.py" if args.num_experts else "pretrain_gpt_nitp.py"


def layout_problems(args, world_size):
    """Why megatron-core would refuse this layout on `world_size` ranks (empty if it fits)."""
    tp, pp, cp = (args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                  args.context_parallel_size)
    model = tp * pp * cp
    if world_size % model:
        return [f"{world_size} ranks is not a multiple of TP x PP x CP = {model}"]
    dp = world_size // model
    problems = []
    if args.num_experts:
        ep = args.expert_model_parallel_size
        if (dp * cp) % ep:
            problems.append(f"data x context parallel size {dp * cp} is not a multiple of EP {ep}")
        if args.num_experts % ep:
            problems.append(f"{args.num_experts} experts do not split over EP {ep}")
    gbs = args.global_batch_size or args.micro_batch_size * dp
    if gbs % (args.micro_batch_size * dp):
        problems.append(f"global batch {gbs} is not a multiple of micro batch "
                        f"{args.micro_batch_size} x data parallel {dp}")
    return problems


def _sbatch_header(text, directives):
    """Replace (or add after the last existing one) each #SBATCH --key=value; None removes it."""
    lines = text.split("\n")
    for key, value in directives.items():
        line = f"#SBATCH --{key}={value}"
        idx = [i for i, x in enumerate(lines) if x.startswith(f"#SBATCH --{key}=")]
        if value is None:
            lines = [x for i, x in enumerate(lines) if i not in idx]
        elif idx:
            lines[idx[0]] = line
        else:
            last = max(i for i, x in enumerate(lines) if x.startswith("#SBATCH "))
            lines.insert(last + 1, line)
    return "\n".join(lines)


def render(opts, args):
    with open(TEMPLATE) as fh:
        text = fh.read()
    directives = {"job-name": opts.job_name, "nodes": opts.nodes,
                  "ntasks-per-node": opts.ntasks_per_node,
                  "gpus-per-node": opts.gpus_per_node or None,  # CPU partition: no GPU asked
                  "cpus-per-task": opts.cpus_per_task, "time": opts.time}
    if opts.partition:
        directives["partition"] = opts.partition
    if opts.account:
        directives["account"] = opts.account
    text = _sbatch_header(text, directives)
    settings = {
        "CONFIG": opts.config, "ENTRY": entry_point(args), "GPUS_PER_NODE": opts.gpus_per_node,
        "TASKS_PER_NODE": opts.ntasks_per_node, "CPUS_PER_TASK": opts.cpus_per_task,
        "CONTAINER_IMAGE": opts.container_image or "", "CONTAINER_MOUNTS":
            opts.container_mounts or "", "REPO_DIR": opts.repo_dir or "",
        "CKPT_DIR": os.path.abspath(opts.ckpt_dir) if opts.ckpt_dir else None,
        "DATA_PATH": opts.data_path or "", "TOKENIZER_MODEL": opts.tokenizer_model or "",
        "SAVE_INTERVAL": opts.save_interval, "SAVE_MARGIN_MINUTES": opts.save_margin_minutes,
        "MAX_RESTARTS": opts.max_restarts,
        "DIST_TIMEOUT_MINUTES": opts.distributed_timeout_minutes,
        "NCCL_DEBUG": opts.nccl_debug, "NCCL_SOCKET_IFNAME": opts.nccl_socket_ifname or "",
        "NCCL_IB_HCA": opts.nccl_ib_hca or "", "TRAIN_ITERS": args.train_iters,
        "EXTRA_ARGS": opts.extra_args or "",
    }
    # Values are fixed here (the script is the record of this launch), but the environment
    # still wins, as in the template, so a requeue can be steered without editing the file.
    lines = []
    for key, value in settings.items():
        if key == "CKPT_DIR" and value is None:  # resolved when the job runs: submit directory
            value_sh = f"$PWD/checkpoints/{shlex.quote(opts.job_name)}"
        else:
            value_sh = shlex.quote(str(value)) if value != "" else ""
        lines.append(f"{key}=${{{key}:-{value_sh}}}\n")
    block = "".join(lines)
    generated = (f"# >>> launch settings (written by tools/launch_slurm.py "
                 f"--config {opts.config} --nodes {opts.nodes})\n{block}# <<< launch settings\n")
    if not BLOCK.search(text):
        raise SystemExit(f"{TEMPLATE}: launch settings block not found")
    return BLOCK.sub(lambda _: generated, text, count=1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="Model config (examples/configs/*.yaml).")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, default=8,
                   help="GPUs per node, one rank each; 0: a CPU partition (give "
                        "--ntasks-per-node).")
    p.add_argument("--ntasks-per-node", type=int, default=None,
                   help="Ranks per node (default: --gpus-per-node).")
    p.add_argument("--cpus-per-task", type=int, default=None,
                   help="Cores per rank (srun --cpus-per-task; also OMP_NUM_THREADS). Without "
                        "it SLURM may give every rank of a node the same core. Default: 8 on "
                        "GPU nodes (dataloader, launch threads), 1 on CPU nodes.")
    p.add_argument("--time", default="04:00:00", help="SLURM time limit per (re)run.")
    p.add_argument("--job-name", default=None, help="Default: the config's name.")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--container-image", default=None, help="pyxis image (squashfs or URI).")
    p.add_argument("--container-mounts", default=None, help="pyxis mounts, src:dst[,...].")
    p.add_argument("--repo-dir", default=None,
                   help="Repository inside the job (default: /workspace/megatron-nitp with a "
                        "container, the submit directory without).")
    p.add_argument("--ckpt-dir", default=None,
                   help="--save and --load directory (default: checkpoints/JOB_NAME in the "
                        "submit directory); mounted at the same path in the container.")
    p.add_argument("--data-path", default=None, help="Indexed dataset prefix(es).")
    p.add_argument("--tokenizer-model", default=None, help="Qwen2 tokenizer directory.")
    p.add_argument("--save-interval", type=int, default=1000)
    p.add_argument("--save-margin-minutes", type=int, default=15,
                   help="Stop (and save) this long before the time limit.")
    p.add_argument("--max-restarts", type=int, default=50,
                   help="Requeue at most this many times (SLURM_RESTART_COUNT).")
    p.add_argument("--distributed-timeout-minutes", type=int, default=None,
                   help="Process-group timeout (default: 3 x the config's checkpoint write at "
                        "1 GB/s, at least 60).")
    p.add_argument("--nccl-debug", default="WARN", help="NCCL_DEBUG (INFO to see transports).")
    p.add_argument("--nccl-socket-ifname", default=None,
                   help="NCCL_SOCKET_IFNAME, e.g. ib0 or ^docker,lo: the interface NCCL's "
                        "bootstrap and socket transport use.")
    p.add_argument("--nccl-ib-hca", default=None, help="NCCL_IB_HCA, e.g. mlx5.")
    p.add_argument("--extra-args", default=None, help="More training flags, one string.")
    p.add_argument("--output", default=None, help="Write here instead of stdout.")
    opts = p.parse_args(argv)

    # The job resolves CONFIG inside REPO_DIR; here it may be relative to cwd or to the repo.
    config = opts.config if os.path.exists(opts.config) else os.path.join(REPO, opts.config)
    args = parse_args(["--config", config] + shlex.split(opts.extra_args or ""))
    opts.job_name = opts.job_name or os.path.splitext(os.path.basename(opts.config))[0]
    if opts.gpus_per_node < 0:
        p.error(f"--gpus-per-node {opts.gpus_per_node}: 0 (CPU nodes) or more")
    if opts.ntasks_per_node is None:
        if not opts.gpus_per_node:
            p.error("--gpus-per-node 0 (CPU nodes): give --ntasks-per-node, the ranks per node")
        opts.ntasks_per_node = opts.gpus_per_node
    if opts.ntasks_per_node < 1:
        p.error(f"--ntasks-per-node {opts.ntasks_per_node}: at least 1")
    if opts.cpus_per_task is None:
        opts.cpus_per_task = 8 if opts.gpus_per_node else 1
    if opts.cpus_per_task < 1:
        p.error(f"--cpus-per-task {opts.cpus_per_task}: at least 1")
    if opts.distributed_timeout_minutes is None:
        opts.distributed_timeout_minutes = distributed_timeout_minutes(args)
    world = opts.nodes * opts.ntasks_per_node
    problems = layout_problems(args, world)
    if problems:
        print(f"error: {opts.config} on {opts.nodes} x {opts.ntasks_per_node} ranks: "
              + "; ".join(problems), file=sys.stderr)
        return 2
    script = render(opts, args)
    if opts.output:
        with open(opts.output, "w") as fh:
            fh.write(script)
        os.chmod(opts.output, 0o755)
        print(f"wrote {opts.output}: sbatch {opts.output}", file=sys.stderr)
    else:
        sys.stdout.write(script)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Runs the commands of docs/reproduce.md's `[eval]` blocks, recorded in order by
tests/e2e/test_reproduce_guide_tiny.py, in this one process (each tool's `main(argv)`: torch,
lm-eval and mteb are imported once). The only changes to a command are the tiny-size stand-ins:

- `--device cuda` -> `--device cpu`;
- eval_downstream.py: `--include-path TASKS` (run) and `--task-map NAME=tiny_NAME:SHOTS:acc,none`
  for every paper task (run and report), so each of the paper's task names is scored, with the
  paper's shot count, by a tiny local lm-eval task;
- eval_representations.py: `--mteb-task-module` with local copies of the 25 MTEB tasks.

usage: guide_runner.py COMMANDS.jsonl TASKS_DIR MTEB_MODULE
"""

import contextlib
import importlib.util
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, REPO)


def tiny_task(name: str) -> str:
    return "tiny_" + "".join(c if c.isalnum() else "_" for c in name.lower())


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(REPO, "tools", name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_argv(tool, argv, tasks_dir, mteb_module):
    from megatron_nitp.evaluation.downstream import TASKS

    argv = ["cpu" if a == "cuda" and i and argv[i - 1] == "--device" else a
            for i, a in enumerate(argv)]
    if tool == "eval_downstream.py":
        argv += [x for t in TASKS.values()
                 for x in ("--task-map", f"{t.name}={tiny_task(t.name)}:{t.num_fewshot}:acc,none")]
        if argv[0] == "run":
            argv += ["--include-path", tasks_dir]
    elif tool == "eval_representations.py":
        argv += ["--mteb-task-module", mteb_module]
    return argv


def main():
    commands, tasks_dir, mteb_module = sys.argv[1:4]
    from megatron_nitp.parallel.distributed import destroy_distributed_model_parallel

    tools = {}
    with open(commands) as fh:
        recorded = [json.loads(line) for line in fh if line.strip()]
    for rec in recorded:
        tool = os.path.basename(rec["argv"][0])
        argv = tiny_argv(tool, rec["argv"][1:], tasks_dir, mteb_module)
        if tool not in tools:
            tools[tool] = load_tool(tool)
        start = time.time()
        print(f"RUN {tool} {' '.join(argv)}", flush=True)
        with contextlib.redirect_stdout(sys.stderr):  # the tools' own output: to the log
            code = tools[tool].main(argv)
        destroy_distributed_model_parallel()
        print(f"DONE {tool} {code} {time.time() - start:.1f}s", flush=True)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())

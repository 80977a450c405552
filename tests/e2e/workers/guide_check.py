"""Stands in for `python` while tests/e2e/test_reproduce_guide.py runs docs/reproduce.md's
evaluation blocks: each tool command is parsed by the tool's own parser and its suite / paper
table checked, then nothing runs. Prints "CHECKED <tool>"; exits 2 on anything else."""

import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, REPO)


def load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    tool, argv = sys.argv[1], sys.argv[2:]
    name = os.path.basename(tool)
    if name == "eval_downstream.py":
        from megatron_nitp.evaluation.downstream import PAPER, suite_tasks

        a = load(os.path.join(REPO, "tools", name)).build_parser().parse_args(argv)
        suite_tasks(a.suite)
        if a.command == "report":
            if a.paper:
                table, _, model = a.paper.partition(":")
                assert model in PAPER[table], a.paper
            assert all("=" in r for r in a.run), a.run
    elif name == "eval_lm_loss.py":
        load(os.path.join(REPO, "tools", name)).build_parser().parse_args(argv)
    elif name == "eval_representations.py":
        load(os.path.join(REPO, "tools", name)).parse_args(argv)
    elif name == "plot_run.py":
        a = load(os.path.join(REPO, "tools", name)).parse_args(argv)
        if a.labels:
            assert len(a.labels.split(",")) == len(a.runs), (a.labels, a.runs)
    else:
        print(f"unexpected command: {tool}", file=sys.stderr)
        return 2
    print(f"CHECKED {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

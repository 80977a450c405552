"""The conversion and generation checks of tests/e2e/test_convert.py, run in one process each.

megatron-core costs ~12 s of CPU to import, so the CLIs are run in-process here (their `main()`,
exactly what the command line runs) and only what needs its own processes (the torchrun launches
of hf-to-megatron) is a subprocess of the test. Each phase prints `RESULTS {json}`.

  export-compare  CLI megatron-to-hf of every checkpoint (+ a sharded export with the NITP head,
                  + a bf16 export); megatron logits vs AutoModelForCausalLM logits; greedy tokens
                  of `tools/generate.py --load` vs transformers' generate(do_sample=False);
                  sampled tokens of generate.py --load vs --hf; the head and tokenizer files.
  roundtrip       CLI hf-to-megatron (1 process) of an export, CLI megatron-to-hf of it and of
                  checkpoints imported elsewhere; whether the safetensors are bit-identical;
                  export + compare of checkpoints written by the training engine.
"""

import argparse
import contextlib
import importlib.util
import io
import json
import os
import sys
import warnings

import torch

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, REPO)
warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

PROMPT = [3, 14, 15, 92, 65, 35, 8, 9, 7, 9]
NEW_TOKENS = 20


def tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}",
                                                  os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(name, argv):
    """(exit code, stdout) of tools/NAME.py main(argv), in this process."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = tool(name).main(argv)
    return rc, out.getvalue()


def last_ids(stdout):
    return [int(t) for t in stdout.strip().splitlines()[-1].split(",")]


def hf_tensors(hf_dir, base="model"):
    from megatron_nitp.convert.hf_import import read_hf_tensors

    return read_hf_tensors(hf_dir, base)


def export(ckpt, hf_dir, *flags):
    rc, out = run_cli("convert_checkpoint", ["megatron-to-hf", "--load", ckpt, "--save", hf_dir,
                                             "--no-progress", *flags])
    assert rc == 0, out
    return out


def compare(ckpt, hf_dir):
    from transformers import AutoModelForCausalLM

    from megatron_nitp.parallel.distributed import destroy_distributed_model_parallel
    from megatron_nitp.training.checkpoint_io import load_model_single_process

    model, args, _ = load_model_single_process(ckpt, drop_nitp_head=True)
    ids = torch.randint(0, args.padded_vocab_size, (2, 32),
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids, torch.arange(32).unsqueeze(0).expand(2, -1), None).float()
    destroy_distributed_model_parallel()

    hf = AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True).eval()
    prompt = torch.tensor([PROMPT])
    with torch.no_grad():
        logits = hf(input_ids=ids).logits.float()
        # An explicit mask: without one, transformers masks prompt ids equal to pad_token_id.
        hf_gen = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=NEW_TOKENS)
    rc, out = run_cli("generate", ["--load", ckpt, "--prompt-ids", ",".join(map(str, PROMPT)),
                                   "--max-new-tokens", str(NEW_TOKENS), "--greedy", "--print-ids"])
    assert rc == 0, out
    names = list(hf_tensors(hf_dir))
    return dict(max_abs_logit_diff=(logits - ref).abs().max().item(),
                logit_scale=ref.abs().max().item(), hf_class=type(hf).__name__,
                hf_ids=hf_gen[0, len(PROMPT):].tolist(), megatron_ids=last_ids(out),
                nitp_tensors=[n for n in names if "nitp" in n], files=sorted(os.listdir(hf_dir)))


def check_head(ckpt, hf_dir):
    """nitp_head.safetensors holds the checkpoint's head: fc1 = [gate; up], fc2 = down."""
    from megatron_nitp.parallel.distributed import destroy_distributed_model_parallel
    from megatron_nitp.training.checkpoint_io import load_model_single_process

    model, _, _ = load_model_single_process(ckpt)
    sd = model.state_dict()
    destroy_distributed_model_parallel()
    head = hf_tensors(hf_dir, "nitp_head")
    fc1, fc2 = sd["nitp_head.mlp.linear_fc1.weight"], sd["nitp_head.mlp.linear_fc2.weight"]
    return dict(keys=sorted(head), fc1_norm=fc1.norm().item(),
                equal=bool(torch.equal(torch.cat([head["gate_proj.weight"],
                                                  head["up_proj.weight"]]), fc1)
                           and torch.equal(head["down_proj.weight"], fc2)),
                json=json.load(open(os.path.join(hf_dir, "nitp_head.json"))))


def check_tokenizer(hf_dir, sp_model):
    import sentencepiece
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    sp = sentencepiece.SentencePieceProcessor(model_file=sp_model)
    texts = ["Hello world", " The quick brown fox 1234", "two  spaces\nline"]
    return dict(same=[tok.encode(t, add_special_tokens=False) == sp.encode(t) for t in texts],
                eos=[tok.eos_token_id, sp.eos_id()])


def export_compare(root, layouts):
    ckpt = lambda n: f"{root}/ckpt/{n}"  # noqa: E731
    results = {"summaries": {}}
    for n in layouts:
        results["summaries"][n] = export(ckpt(n), f"{root}/hf/{n}")
    results["summaries"]["moe_ep2_head"] = export(
        ckpt("moe_ep2"), f"{root}/hf_head/moe_ep2", "--keep-nitp-head", "--max-shard-size", "100KB")
    results["summaries"]["dense_tp2_bf16"] = export(ckpt("dense_tp2"), f"{root}/hf_bf16/dense_tp2",
                                                    "--dtype", "bf16")
    for n in layouts:
        results[n] = compare(ckpt(n), f"{root}/hf/{n}")
    results["moe_ep2_sharded"] = compare(ckpt("moe_ep2"), f"{root}/hf_head/moe_ep2")
    results["head"] = check_head(ckpt("moe_ep2"), f"{root}/hf_head/moe_ep2")
    results["tokenizer"] = check_tokenizer(f"{root}/hf/dense_tp2", f"{root}/ckpt/tokenizers/sp.model")
    sampling = ["--prompt-ids", "5,17,3,99", "--max-new-tokens", "8", "--temperature", "0.9",
                "--top-k", "20", "--seed", "3", "--print-ids"]
    results["sampling"] = [last_ids(run_cli("generate", ["--load", ckpt("moe_tp2"), *sampling])[1]),
                           last_ids(run_cli("generate", ["--hf", f"{root}/hf/moe_tp2", *sampling])[1])]
    return results


def roundtrip(root, imports, reexports, compares):
    """imports: [(hf_dir, ckpt_dir)] to convert here (1 process); reexports: [(name, src_hf,
    ckpt_dir, head)] to export again and compare with src_hf; compares: [(ckpt_dir, hf_dir)] to
    export (with the NITP head) and compare like export-compare."""
    results = {}
    for ckpt_dir, hf_dir in compares:
        summary = export(ckpt_dir, hf_dir, "--keep-nitp-head")
        results[ckpt_dir] = dict(compare(ckpt_dir, hf_dir), summary=summary)
    for hf_dir, ckpt_dir in imports:
        rc, out = run_cli("convert_checkpoint", ["hf-to-megatron", "--load", hf_dir, "--save",
                                                 ckpt_dir])
        assert rc == 0, out
    for name, src, ckpt_dir, head in reexports:
        out_dir = f"{root}/rt_hf/{name}"
        export(ckpt_dir, out_dir, *(["--keep-nitp-head"] if head else []))
        mismatched, dtypes = [], set()
        for base in (["model", "nitp_head"] if head else ["model"]):
            a, b = hf_tensors(src, base), hf_tensors(out_dir, base)
            mismatched += sorted(set(a) ^ set(b))
            mismatched += [k for k in a if k in b and not (a[k].dtype == b[k].dtype
                                                           and torch.equal(a[k], b[k]))]
            dtypes |= {str(t.dtype) for t in b.values()}
        results[name] = dict(mismatched=mismatched, dtypes=sorted(dtypes))
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("phase", choices=["export-compare", "roundtrip"])
    p.add_argument("--root", required=True)
    p.add_argument("--layouts", default="")
    p.add_argument("--import", dest="imports", action="append", default=[],
                   help="HF_DIR=CKPT_DIR to convert in this process")
    p.add_argument("--reexport", action="append", default=[],
                   help="NAME=SRC_HF:CKPT_DIR[:head]")
    p.add_argument("--compare", action="append", default=[], help="CKPT_DIR=HF_DIR")
    a = p.parse_args()
    if a.phase == "export-compare":
        results = export_compare(a.root, a.layouts.split(","))
    else:
        imports = [tuple(x.split("=", 1)) for x in a.imports]
        reexports = []
        for x in a.reexport:
            name, rest = x.split("=", 1)
            src, ckpt_dir, *flag = rest.split(":")
            reexports.append((name, src, ckpt_dir, flag == ["head"]))
        results = roundtrip(a.root, imports, reexports,
                            [tuple(x.split("=", 1)) for x in a.compare])
    print("RESULTS " + json.dumps(results))

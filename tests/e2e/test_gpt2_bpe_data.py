"""Issue #15 item 7: Megatron-LM's GPT2BPETokenizer with local vocab.json/merges.txt, through
tools/preprocess_data.py (its Megatron-LM flags, in this process) and a real training launch.

The files are a tiny GPT-2 byte-level BPE trained here (tests/tokenizer_files.py), with
`<|endoftext|>` as the last id as in GPT-2's own vocab.json: the data's document ends, the
tokenizer the run builds and the vocabulary it trains must all agree on it.
"""

import json
import random

import numpy
import pytest

from tests.e2e.engine_runner import read_log, run_engine
from tests.tokenizer_files import GPT2_EOD, write_gpt2_bpe_files
from tools.preprocess_data import main as preprocess_main

WORDS = ("the model predicts a token from its hidden state while the target layer gives an "
         "implicit signal that aligns future representations of text").split()
# Every model/optimizer flag explicit: the project's defaults are Megatron-LM's.
TINY = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2",
        "--seq-length", "32", "--micro-batch-size", "2", "--normalization", "RMSNorm",
        "--swiglu", "--position-embedding-type", "rope", "--disable-bias-linear",
        "--attention-dropout", "0", "--hidden-dropout", "0", "--lr", "1e-3",
        "--lr-warmup-iters", "1", "--nitp", "--nitp-target-layer", "1", "--train-iters", "2",
        "--eval-iters", "0", "--split", "100,0,0", "--make-vocab-size-divisible-by", "64"]


@pytest.fixture(scope="module")
def gpt2_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt2_data")
    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(8, 30))) for _ in range(60)]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    vocab_file, merge_file = write_gpt2_bpe_files(texts, root / "gpt2", vocab_size=300)
    flags = ["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", vocab_file,
             "--merge-file", merge_file]
    assert preprocess_main(["--input", str(root / "corpus.jsonl"), "--output-prefix",
                            str(root / "corpus"), "--append-eod", "--workers", "1",
                            "--no-progress", *flags]) == 0
    return root, str(root / "corpus_text_document"), flags, len(texts)


def test_preprocessed_documents_end_with_gpt2s_endoftext(gpt2_data):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    root, prefix, _, documents = gpt2_data
    eod = json.load(open(root / "gpt2" / "vocab.json", encoding="utf-8"))[GPT2_EOD]
    assert eod == 299
    data = IndexedDataset(prefix)
    assert len(data) == documents
    for i in range(documents):
        doc = numpy.asarray(data[i])
        assert doc[-1] == eod and (doc[:-1] < eod).all()  # EOD only at the end, once


def test_gpt2_bpe_run_trains_with_the_tokenizers_vocabulary(gpt2_data, tmp_path):
    root, prefix, flags, _ = gpt2_data
    log = tmp_path / "log.jsonl"
    run_engine(TINY + ["--data-path", prefix, "--log-jsonl", log, "--save", tmp_path / "ckpt",
                       "--eod-mask-loss", *flags])
    train, _ = read_log(log)
    assert [r["iteration"] for r in train] == [1, 2]
    # ln(300) ~ 5.70: the initial loss is over the tokenizer's 300 ids, not a padded table.
    assert 5.0 < train[0]["lm_loss"] < 6.5
    run_config = json.load(open(tmp_path / "ckpt" / "iter_0000002" / "run_config.json"))
    assert run_config["args"]["vocab_size"] == 300  # len(vocab.json), <|endoftext|> included
    assert run_config["args"]["padded_vocab_size"] == 320
    assert run_config["tokenizer"]["vocab_file"] == flags[3]


def test_gpt2_bpe_without_merge_file_is_one_line_before_any_work(gpt2_data):
    _, prefix, flags, _ = gpt2_data
    res = run_engine(TINY + ["--data-path", prefix, *flags[:4]], expect_code=2)
    assert "error: --merge-file: required by --tokenizer-type GPT2BPETokenizer" in res.stdout
    assert res.stdout.count("error:") == 1

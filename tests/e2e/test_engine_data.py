"""Issue #3: the data pipeline feeds the engine: train a tokenizer, preprocess, train on the files.

tools/train_tokenizer.py and tools/preprocess_data.py run through their `main(argv)` in this
process (their own subprocess tests live in test_preprocess_*_cli.py); the training runs are real
launches of pretrain_gpt_nitp.py. SentencePiece with a blended --data-path (0.7 A 0.3 B) and
--split 98,2,0, then the Hugging Face byte-level BPE on one dataset.
"""

import json
import random

import pytest

from tests.e2e.engine_runner import check_eval_log, check_train_log, read_log, run_engine
from tools.preprocess_data import main as preprocess_main
from tools.train_tokenizer import main as train_tokenizer_main

WORDS = ("the model predicts a token from its hidden state while the target layer gives an "
         "implicit signal that aligns future representations of text with structure in data "
         "training loss rank cosine layer head pipeline expert router batch sequence").split()
TINY = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2",
        "--seq-length", "32", "--micro-batch-size", "2", "--nitp", "--nitp-target-layer", "1",
        "--train-iters", "2", "--eval-interval", "2", "--eval-iters", "1"]


def _corpus(path, seed, docs=120):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(docs):
            sentences = [" ".join(rng.choices(WORDS, k=rng.randint(5, 14))).capitalize() + "."
                         for _ in range(rng.randint(2, 6))]
            f.write(json.dumps({"text": " ".join(sentences)}) + "\n")
    return path


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, _corpus(root / "a.jsonl", 1), _corpus(root / "b.jsonl", 2)


def _preprocess(corpus, prefix, tokenizer_type, model):
    assert preprocess_main(["--input", str(corpus), "--output-prefix", str(prefix),
                            "--tokenizer-type", tokenizer_type, "--tokenizer-model", str(model),
                            "--append-eod", "--workers", "1", "--no-progress"]) == 0
    document = f"{prefix}_text_document"
    assert all((prefix.parent / f"{prefix.name}_text_document{ext}").is_file()
               for ext in (".bin", ".idx"))
    return document


def test_sentencepiece_preprocessed_blend_trains(corpora, tmp_path):
    root, a, b = corpora
    assert train_tokenizer_main(["--input", str(a), "--type", "sentencepiece", "--vocab-size",
                                 "384", "--output-prefix", str(tmp_path / "sp")]) == 0
    model = tmp_path / "sp.model"
    data_a = _preprocess(a, tmp_path / "a", "SentencePieceTokenizer", model)
    data_b = _preprocess(b, tmp_path / "b", "SentencePieceTokenizer", model)
    log = tmp_path / "log.jsonl"
    res = run_engine(TINY + ["--data-path", "0.7", data_a, "0.3", data_b, "--split", "98,2,0",
                             "--tokenizer-type", "SentencePieceTokenizer",
                             "--tokenizer-model", model, "--log-jsonl", log])
    train, valid = read_log(log)
    check_train_log(train, [1, 2], nitp=True)
    check_eval_log(valid, [2], nitp=True)
    assert "iter      2/2" in res.stdout


def test_hf_bpe_preprocessed_data_trains(corpora, tmp_path):
    root, a, _ = corpora
    assert train_tokenizer_main(["--input", str(a), "--type", "hf-bpe", "--vocab-size", "320",
                                 "--output-prefix", str(tmp_path / "bpe")]) == 0
    model = tmp_path / "bpe.json"
    data = _preprocess(a, tmp_path / "a", "HuggingFaceTokenizer", model)
    log = tmp_path / "log.jsonl"
    run_engine(TINY + ["--data-path", data, "--split", "98,2,0",
                       "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", model,
                       "--log-jsonl", log])
    train, valid = read_log(log)
    check_train_log(train, [1, 2], nitp=True)
    check_eval_log(valid, [2], nitp=True)

"""The offline App. E probe and the held-out geometry, with stand-in encoders (no model)."""

import json
import zlib

import pytest
import torch
import torch.nn.functional as F

from megatron_nitp.evaluation import probe
from megatron_nitp.evaluation.representations import (mean_pooled_embeddings,
                                                      representation_geometry)


class BagOfTokens:
    """A stand-in encoder: the hidden state of a token is a fixed random vector per token id."""

    max_length = 256

    def __init__(self, d=32, vocab=512, seed=0):
        self.table = torch.randn(vocab, d, generator=torch.Generator().manual_seed(seed))
        self.vocab = vocab

    def tokenize(self, text):
        return [zlib.crc32(w.encode()) % self.vocab for w in text.split()]

    def hidden_states(self, tokens):
        return self.table[tokens].transpose(0, 1)  # [s, b, d]


class Collapsed(BagOfTokens):
    """Every token maps to the same direction: no information."""

    def hidden_states(self, tokens):
        return torch.ones(tokens.size(1), tokens.size(0), self.table.size(1))


def corpus(tmp_path, per_topic=8):
    words = {"stdlib:": "file socket path string", "numpy:": "array dtype axis ufunc",
             "megatron.core:": "pipeline tensor parallel rank",
             "torch:torch/nn/": "module layer weight bias"}
    lines = []
    for prefix, vocab in words.items():
        for i in range(per_topic):
            # Topic words plus a word unique to the document in both of its halves.
            text = " ".join(f"{w}{(i * 7 + j) % 5}" + (f" {prefix}uniq{i}" if j % 4 == 0 else "")
                            for j, w in enumerate(vocab.split() * 8))
            lines.append(json.dumps({"source": f"{prefix}doc{i}", "text": text}))
    lines.append(json.dumps({"source": "torch:torch/_vendor/x.py", "text": "ignored " * 40}))
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_topics_come_from_the_document_source():
    assert probe.topic_of("stdlib:json") == "python"
    assert probe.topic_of("torch:torch/distributed/fsdp/api.py") == "torch.distributed"
    assert probe.topic_of("torch:torch/_inductor/ir.py") == "torch.compiler"
    assert probe.topic_of("torch:torch/_vendor/x.py") is None


def test_probe_documents_are_balanced_and_deterministic(tmp_path):
    path = corpus(tmp_path)
    docs = probe.probe_documents(path, per_topic=5)
    assert docs == probe.probe_documents(path, per_topic=5)
    topics = [d["topic"] for d in docs]
    assert sorted(set(topics)) == ["megatron", "numpy", "python", "torch.nn"]
    assert all(topics.count(t) == 5 for t in set(topics))


def test_informative_embeddings_beat_collapsed_ones(tmp_path):
    path = corpus(tmp_path)
    good = probe.offline_probe(BagOfTokens(), path, per_topic=8)
    bad = probe.offline_probe(Collapsed(), path, per_topic=8)
    assert good["topic_classification"]["nearest_centroid_accuracy"] >= 0.75
    assert good["topic_classification"]["logistic_regression_accuracy"] >= 0.75
    assert bad["topic_classification"]["nearest_centroid_accuracy"] <= 0.25 + 1e-6
    assert good["half_document_retrieval"]["recall_at_1"] >= 0.5
    assert good["half_document_retrieval"]["recall_at_1"] > \
        4 * bad["half_document_retrieval"]["chance_recall_at_1"]


def test_mean_pooling_ignores_padding_and_normalises():
    enc = BagOfTokens()
    short, long = [1, 2], [1, 2, 3, 4, 5]
    together = mean_pooled_embeddings(enc, [short, long])
    alone = mean_pooled_embeddings(enc, [short])
    torch.testing.assert_close(together[0], alone[0])
    torch.testing.assert_close(together.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(alone[0], F.normalize(enc.table[short].mean(0), dim=0))


def test_geometry_uses_only_valid_tokens_and_the_library_metrics():
    from megatron_nitp.nitp.metrics import effective_rank, pair_cosine

    enc = BagOfTokens()
    tokens = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 16)
    mask[1, 10:] = 0
    geo = representation_geometry(enc, [{"tokens": tokens, "loss_mask": mask}])
    h = enc.hidden_states(tokens)
    assert geo["effective_rank"] == pytest.approx(effective_rank(h, mask.T.bool()))
    assert geo["pair_cosine"] == pytest.approx(pair_cosine(h, mask.T.bool()))
    assert geo["num_tokens"] == 26


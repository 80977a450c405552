"""App. E's probe of frozen sentence representations, offline on the demo corpus; Table 6's MTEB
task list and groups (the MTEB run itself: `mteb_eval.py`).

The offline probe needs no network and no extra package, so it is tested like any other code:

- topic classification: each demo-corpus document gets a coarse topic from where its docstrings
  came from (`topic_of`); a nearest-centroid classifier and a logistic-regression classifier are
  fitted on frozen embeddings of half of the documents of each topic and scored (accuracy) on the
  other half;
- retrieval: the first half of a document is the query, the second halves of all documents are
  the pool; recall@1 is the fraction of queries whose nearest second half is their own (chance
  1/pool size), MRR the mean reciprocal rank.

Embeddings are App. E's: final hidden states mean-pooled over valid tokens, L2-normalised
(`representations.mean_pooled_embeddings`).
"""

import hashlib
import json
import os
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .representations import mean_pooled_embeddings

# Coarse topics of the demo corpus (megatron_nitp/data/demo_corpus.py sources): source prefix
# (source name, then path) -> topic. Documents that match none are left out of the probe.
TOPIC_PREFIXES = (
    ("stdlib:", "python"),
    ("python-reference:", "python"),
    ("numpy:", "numpy"),
    ("megatron.core:", "megatron"),
    ("torch:torch/distributed/", "torch.distributed"),
    ("torch:torch/_inductor/", "torch.compiler"),
    ("torch:torch/_dynamo/", "torch.compiler"),
    ("torch:torch/fx/", "torch.compiler"),
    ("torch:torch/_functorch/", "torch.compiler"),
    ("torch:torch/_higher_order_ops/", "torch.compiler"),
    ("torch:torch/export/", "torch.compiler"),
    ("torch:torch/_export/", "torch.compiler"),
    ("torch:torch/nn/", "torch.nn"),
    ("torch:torch/optim/", "torch.nn"),
    ("torch:torch/distributions/", "torch.nn"),
    ("torch:torch/ao/", "torch.quantization"),
    ("torch:torch/quantization/", "torch.quantization"),
)

# App. E, Table 6: the paper's 25 English MTEB tasks (MTEB v2.12.0) in its three groups; each
# group's score is the macro average of its tasks' main scores, in percent.
MTEB_PAPER_GROUPS = {
    "Classification": (
        "AmazonCounterfactualClassification", "AmazonReviewsClassification",
        "Banking77Classification", "EmotionClassification", "MTOPDomainClassification",
        "MTOPIntentClassification", "MassiveIntentClassification",
        "MassiveScenarioClassification", "ToxicConversationsClassification",
        "TweetSentimentExtractionClassification"),
    "STS / Similarity": ("BIOSSES", "SICK-R", "STS12", "STS13", "STS14", "STS15", "STS16",
                         "STS17", "STSBenchmark"),
    "Retrieval / Dup.": ("AskUbuntuDupQuestions", "SciDocsRR", "SprintDuplicateQuestions",
                         "StackOverflowDupQuestions", "TwitterSemEval2015", "TwitterURLCorpus"),
}
MTEB_PAPER_TASKS = tuple(t for tasks in MTEB_PAPER_GROUPS.values() for t in tasks)
MTEB_PAPER_VERSION = "2.12.0"
# Table 6 (3B MoE): group -> (NTP, NITP)
MTEB_PAPER_TABLE6 = {"Classification": (40.09, 42.29), "STS / Similarity": (35.66, 38.58),
                     "Retrieval / Dup.": (43.19, 44.83), "Overall (25 tasks)": (39.24, 41.56)}


def mteb_group_scores(scores: Dict[str, float]) -> Dict[str, Optional[float]]:
    """Table 6's rows from {task: main score in [0, 1]}: each group's macro average (percent)
    over its tasks, and the overall macro average over all 25; None for a group with a task
    missing (a partial average would not be the paper's number)."""
    out = {}
    for group, tasks in MTEB_PAPER_GROUPS.items():
        vals = [scores.get(t) for t in tasks]
        out[group] = None if None in vals else 100.0 * sum(vals) / len(vals)
    vals = [scores.get(t) for t in MTEB_PAPER_TASKS]
    out["Overall (25 tasks)"] = None if None in vals else 100.0 * sum(vals) / len(vals)
    return out


def topic_of(source: str) -> Optional[str]:
    for prefix, topic in TOPIC_PREFIXES:
        if source.startswith(prefix):
            return topic
    return None


def default_corpus_path() -> str:
    """The demo corpus JSONL that `prepare_demo_data` caches (built here if missing)."""
    from ..data.demo import default_cache_dir

    path = os.path.join(default_cache_dir(), "corpus.jsonl")
    if not os.path.isfile(path):
        from ..data.demo_corpus import build_demo_corpus

        os.makedirs(os.path.dirname(path), exist_ok=True)
        build_demo_corpus(path)
    return path


def probe_documents(corpus_path: str, per_topic: int = 30, min_topic_docs: int = 4) -> List[dict]:
    """A balanced, deterministic sample: up to `per_topic` documents of each topic, chosen by a
    hash of their source name (not by corpus order, which groups similar files together)."""
    by_topic = defaultdict(list)
    with open(corpus_path) as f:
        for line in f:
            doc = json.loads(line)
            topic = topic_of(doc.get("source", ""))
            if topic is not None:
                key = hashlib.sha1(doc["source"].encode()).hexdigest()
                by_topic[topic].append((key, doc["source"], doc["text"]))
    docs = []
    for topic in sorted(by_topic):
        chosen = sorted(by_topic[topic])[:per_topic]
        if len(chosen) >= min_topic_docs:
            docs += [{"topic": topic, "source": s, "text": t} for _, s, t in chosen]
    return docs


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred == y).float().mean())


def nearest_centroid_accuracy(x_tr, y_tr, x_te, y_te, num_classes) -> float:
    centroids = torch.stack([x_tr[y_tr == c].mean(0) for c in range(num_classes)])
    return _accuracy((x_te @ F.normalize(centroids, dim=-1).T).argmax(1), y_te)


def logistic_regression_accuracy(x_tr, y_tr, x_te, y_te, num_classes, steps: int = 200,
                                 weight_decay: float = 1e-3) -> float:
    """Multinomial logistic regression on standardised features (full-batch L-BFGS, seeded)."""
    mean, std = x_tr.mean(0), x_tr.std(0).clamp(min=1e-6)
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    w = torch.zeros(x_tr.size(1), num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x_tr @ w + b, y_tr) + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return _accuracy((x_te @ w + b).argmax(1), y_te)


def topic_classification(encoder, docs: Sequence[dict], max_tokens: int = 128) -> dict:
    topics = sorted({d["topic"] for d in docs})
    ids = [encoder.tokenize(d["text"])[:max_tokens] for d in docs]
    keep = [i for i, t in enumerate(ids) if len(t) > 0]
    x = mean_pooled_embeddings(encoder, [ids[i] for i in keep])
    y = torch.tensor([topics.index(docs[i]["topic"]) for i in keep])
    # Alternate documents of each topic between the two halves.
    seen = defaultdict(int)
    train = torch.zeros(len(keep), dtype=torch.bool)
    for j, c in enumerate(y.tolist()):
        train[j] = seen[c] % 2 == 0
        seen[c] += 1
    x_tr, y_tr, x_te, y_te = x[train], y[train], x[~train], y[~train]
    counts = torch.bincount(y_te, minlength=len(topics)).float()
    return {
        "nearest_centroid_accuracy": nearest_centroid_accuracy(x_tr, y_tr, x_te, y_te,
                                                               len(topics)),
        "logistic_regression_accuracy": logistic_regression_accuracy(x_tr, y_tr, x_te, y_te,
                                                                     len(topics)),
        "majority_baseline": float(counts.max() / counts.sum()),
        "topics": topics,
        "num_train": int(train.sum()),
        "num_test": int((~train).sum()),
    }


def half_document_retrieval(encoder, docs: Sequence[dict], max_half_tokens: int = 64,
                            min_half_tokens: int = 16) -> dict:
    queries, targets = [], []
    for d in docs:
        t = encoder.tokenize(d["text"])[: 2 * max_half_tokens]
        half = len(t) // 2
        if half >= min_half_tokens:
            queries.append(t[:half])
            targets.append(t[half:])
    if len(queries) < 2:
        raise ValueError("retrieval probe: fewer than 2 documents long enough")
    q = mean_pooled_embeddings(encoder, queries)
    k = mean_pooled_embeddings(encoder, targets)
    sim = q @ k.T
    own = sim.diagonal().unsqueeze(1)
    rank = (sim > own).sum(1) + 1  # 1 = own second half is the nearest
    return {
        "recall_at_1": float((rank == 1).float().mean()),
        "mrr": float((1.0 / rank.float()).mean()),
        "chance_recall_at_1": 1.0 / len(queries),
        "num_queries": len(queries),
    }


def offline_probe(encoder, corpus_path: Optional[str] = None, per_topic: int = 30) -> dict:
    docs = probe_documents(corpus_path or default_corpus_path(), per_topic=per_topic)
    if len({d["topic"] for d in docs}) < 2:
        raise ValueError("offline probe: the corpus has fewer than 2 topics with enough documents")
    return {"topic_classification": topic_classification(encoder, docs),
            "half_document_retrieval": half_document_retrieval(encoder, docs),
            "num_documents": len(docs)}


"""Local copies of App. E's 25 MTEB tasks, tiny, for `tools/eval_representations.py
--mteb-task-module` (tests/e2e/test_reproduce_guide_tiny.py): each task is defined with mteb's
custom-task API and reads `$MTEB_LOCAL_DIR/<task name>/{train,test}.jsonl` (no hub).

Each copy keeps its task's name, mteb type and main score, except the three Reranking tasks
(AskUbuntuDupQuestions, SciDocsRR, StackOverflowDupQuestions), which are pair classification
here (one JSONL row per pair; a reranking copy would need a corpus, queries and rankings): both
types are Table 6's "Retrieval / Dup." group.
"""

import os

import datasets
from mteb.abstasks.classification import AbsTaskClassification
from mteb.abstasks.pair_classification import AbsTaskPairClassification
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata

CLASSIFICATION = ("AmazonCounterfactualClassification", "AmazonReviewsClassification",
                  "Banking77Classification", "EmotionClassification", "MTOPDomainClassification",
                  "MTOPIntentClassification", "MassiveIntentClassification",
                  "MassiveScenarioClassification", "ToxicConversationsClassification",
                  "TweetSentimentExtractionClassification")
STS = ("BIOSSES", "SICK-R", "STS12", "STS13", "STS14", "STS15", "STS16", "STS17", "STSBenchmark")
PAIRS = ("AskUbuntuDupQuestions", "SciDocsRR", "SprintDuplicateQuestions",
         "StackOverflowDupQuestions", "TwitterSemEval2015", "TwitterURLCorpus")


def _metadata(name, task_type, main_score):
    return TaskMetadata(
        name=name, dataset={"path": f"local/{name}", "revision": "local"},
        description=f"tiny local copy of {name}", reference=None, type=task_type,
        category="t2t", modalities=["text"], eval_splits=["test"], eval_langs=["eng-Latn"],
        main_score=main_score, date=None, domains=None, task_subtypes=None, license=None,
        annotations_creators=None, dialect=None, sample_creation=None, bibtex_citation="")


class _LocalFiles:
    """load_data from $MTEB_LOCAL_DIR/<name>/<split>.jsonl instead of the hub."""

    def load_data(self, **kwargs):
        if self.data_loaded:
            return
        folder = os.path.join(os.environ["MTEB_LOCAL_DIR"], self.metadata.name)
        files = {split: os.path.join(folder, f"{split}.jsonl") for split in ("train", "test")
                 if os.path.isfile(os.path.join(folder, f"{split}.jsonl"))}
        self.dataset = datasets.load_dataset("json", data_files=files)
        self.dataset_transform()
        self.data_loaded = True


def _define(name, base, task_type, main_score, **attrs):
    cls = type(name.replace("-", "_"), (_LocalFiles, base),
               dict(metadata=_metadata(name, task_type, main_score), **attrs))
    cls.__module__ = __name__
    globals()[cls.__name__] = cls


for _name in CLASSIFICATION:
    _define(_name, AbsTaskClassification, "Classification", "accuracy", n_experiments=2)
for _name in STS:
    _define(_name, AbsTaskSTS, "STS", "cosine_spearman", min_score=0, max_score=5)
for _name in PAIRS:
    _define(_name, AbsTaskPairClassification, "PairClassification", "max_ap")

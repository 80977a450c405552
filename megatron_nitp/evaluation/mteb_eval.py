"""App. E's MTEB probe (Table 6) on frozen last-layer states, with the `mteb` package
(`pip install -e ".[mteb]"`: mteb 2.12.0, the version the paper names).

- Embedding: the paper's protocol, `representations.mean_pooled_embeddings` (final-norm hidden
  states, mean over the text's tokens, L2-normalised), scored with cosine similarity. Texts are
  tokenized without special tokens, as pretraining data has none (no BOS).
- Tasks: `paper` is App. E's 25, taken from mteb's "MTEB(eng, v1)" benchmark, whose task
  configurations are the English ones (AmazonCounterfactualClassification `en`, STS17 `en-en`,
  the `test` splits); other names are looked up in the installed mteb (English subsets).
  Resolving a name reads mteb's registry only; data sets are read when a task runs (from the
  Hugging Face datasets cache when HF_DATASETS_OFFLINE=1).
- Local tasks: a Python file defining tasks with mteb's custom-task API (AbsTask subclasses with
  a TaskMetadata) is imported; its tasks run by name, and one named like an installed task
  replaces it (a local copy, for machines that cannot download).
- Scores: mteb's main score per task; groups as Table 6 (`probe.mteb_group_scores` for the
  paper's 25; by mteb task type otherwise, `type_group_scores`). No mteb result cache is used: its
  key is the model's name, and two checkpoints must never share results.
"""

import importlib.util
import os
from typing import Dict, List, Optional, Sequence

from .probe import MTEB_PAPER_GROUPS, MTEB_PAPER_TASKS, MTEB_PAPER_VERSION
from .representations import mean_pooled_embeddings

PAPER_BENCHMARK = "MTEB(eng, v1)"
# Table 6's group of each mteb task type (the paper groups "according to the task types").
TYPE_GROUPS = {"Classification": "Classification", "STS": "STS / Similarity",
               "PairClassification": "Retrieval / Dup.", "Reranking": "Retrieval / Dup.",
               "Retrieval": "Retrieval / Dup."}


def require_mteb():
    """The mteb module, or ImportError with the install line."""
    try:
        import mteb
    except ImportError as e:
        raise ImportError('--mteb: the mteb package is not installed: pip install -e ".[mteb]" '
                          f"(mteb=={MTEB_PAPER_VERSION}, the paper's version)") from e
    if mteb.__version__ != MTEB_PAPER_VERSION and not getattr(require_mteb, "told", False):
        require_mteb.told = True
        print(f"notice: mteb {mteb.__version__}, not the paper's {MTEB_PAPER_VERSION}: task "
              "versions and scores may differ", flush=True)
    return mteb


def load_task_module(path: str) -> Dict[str, object]:
    """{name: task instance} of every mteb task class a Python file defines."""
    from mteb.abstasks.abstask import AbsTask

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--mteb-task-module {path}: no such file")
    spec = importlib.util.spec_from_file_location("mteb_local_tasks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tasks = {}
    for obj in vars(module).values():
        if (isinstance(obj, type) and issubclass(obj, AbsTask) and obj.__module__ == module.__name__
                and getattr(obj, "metadata", None) is not None):
            task = obj()
            tasks[task.metadata.name] = task
    if not tasks:
        raise ValueError(f"--mteb-task-module {path}: defines no mteb task (an AbsTask subclass "
                         "with a TaskMetadata)")
    return tasks


def resolve_tasks(spec: Optional[str], module_path: Optional[str] = None) -> List[object]:
    """Task objects for `--mteb-tasks` (`paper`, a comma list, or None: the module's tasks, else
    the paper's), before any model is loaded; an unknown name is one ValueError."""
    mteb = require_mteb()
    local = load_task_module(module_path) if module_path else {}
    if spec is None:
        names = list(local) if local else list(MTEB_PAPER_TASKS)
    elif spec == "paper":
        names = list(MTEB_PAPER_TASKS)
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
    paper = {}
    if any(n in MTEB_PAPER_TASKS and n not in local for n in names):
        paper = {t.metadata.name: t for t in mteb.get_benchmark(PAPER_BENCHMARK).tasks}
    out, unknown = [], []
    for name in names:
        if name in local:
            out.append(local[name])
        elif name in paper:
            out.append(paper[name])
        else:
            try:
                out.append(mteb.get_task(name, languages=["eng"]))
            except KeyError:
                unknown.append(name)
    if unknown:
        raise ValueError(f"--mteb-tasks: unknown task(s) {unknown} in mteb {mteb.__version__}"
                         + (f" and {module_path}" if module_path else "")
                         + " (names as in mteb.get_tasks(), or `paper`)")
    return out


def make_model(encoder, batch_size: int = 16):
    """An mteb encoder (mteb's AbsEncoder: its cosine similarity) embedding as the paper does."""
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    class MeanPooledEncoder(AbsEncoder):
        def __init__(self):
            self.mteb_model_meta = ModelMeta.create_empty({
                "name": "megatron-nitp/" + os.path.basename(os.path.normpath(str(encoder.name))),
                "revision": "local", "similarity_fn_name": ScoringFunction.COSINE,
                "framework": ["PyTorch"], "modalities": ["text"]})

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None,
                   **kwargs):
            texts = [t for batch in inputs for t in batch["text"]]
            # An empty text still needs one position: token 0 (its state is all we can report).
            ids = [encoder.tokenize(t) or [0] for t in texts]
            return mean_pooled_embeddings(encoder, ids, batch_size).numpy()

    return MeanPooledEncoder()


def type_group_scores(scores: Dict[str, float], types: Dict[str, str]) -> Dict[str, Optional[float]]:
    """Table 6's groups over the tasks that ran: macro average (percent) of each group's tasks,
    grouped by mteb task type; "Overall" averages all of them."""
    groups: Dict[str, List[float]] = {}
    for name, value in scores.items():
        groups.setdefault(TYPE_GROUPS.get(types[name], types[name]), []).append(value)
    out = {g: 100.0 * sum(v) / len(v) for g, v in groups.items()}
    out[f"Overall ({len(scores)} tasks)"] = 100.0 * sum(scores.values()) / len(scores)
    return out


def run(encoder, tasks: Sequence[object], batch_size: int = 16) -> dict:
    """{"scores": {task: main score in [0, 1]}, "types", "groups", "settings"}."""
    from .probe import mteb_group_scores

    mteb = require_mteb()
    results = mteb.evaluate(make_model(encoder, batch_size), list(tasks), cache=None,
                            show_progress_bar=False, encode_kwargs={"batch_size": batch_size})
    scores = {r.task_name: float(r.get_score()) for r in results.task_results}
    types = {t.metadata.name: t.metadata.type for t in tasks}
    paper = sorted(scores) == sorted(MTEB_PAPER_TASKS)
    return {
        "scores": scores,
        "types": types,
        "groups": mteb_group_scores(scores) if paper else type_group_scores(scores, types),
        "settings": {"mteb_version": mteb.__version__, "paper_version": MTEB_PAPER_VERSION,
                     "embedding": "final-norm hidden states, mean over tokens, L2-normalised",
                     "similarity": "cosine",
                     "tasks": {t.metadata.name: {"type": t.metadata.type,
                                                 "main_score": t.metadata.main_score,
                                                 "splits": list(t.eval_splits),
                                                 "subsets": list(t.hf_subsets)} for t in tasks}},
    }


"""App. E / Table 6: the paper's 25 MTEB tasks, its three groups, and their macro averages."""

import pytest

from megatron_nitp.evaluation.probe import (MTEB_PAPER_GROUPS, MTEB_PAPER_TABLE6, MTEB_PAPER_TASKS,
                                            mteb_group_scores)


def test_the_papers_25_tasks_in_groups_of_10_9_6():
    assert [len(t) for t in MTEB_PAPER_GROUPS.values()] == [10, 9, 6]
    assert len(set(MTEB_PAPER_TASKS)) == 25


def test_group_scores_are_macro_averages_in_percent_and_none_when_a_task_is_missing():
    scores = {t: (i + 1) / 100 for i, t in enumerate(MTEB_PAPER_TASKS)}  # 0.01 ... 0.25
    groups = mteb_group_scores(scores)
    assert groups["Classification"] == pytest.approx(5.5)        # mean of 1..10
    assert groups["STS / Similarity"] == pytest.approx(15.0)     # mean of 11..19
    assert groups["Retrieval / Dup."] == pytest.approx(22.5)     # mean of 20..25
    assert groups["Overall (25 tasks)"] == pytest.approx(13.0)   # a task average, not of groups
    del scores["STS17"]
    partial = mteb_group_scores(scores)
    assert partial["STS / Similarity"] is None and partial["Overall (25 tasks)"] is None
    assert partial["Classification"] == pytest.approx(5.5)


def test_table6_overall_is_the_task_weighted_mean_of_its_groups():
    for i in range(2):
        weighted = (10 * MTEB_PAPER_TABLE6["Classification"][i]
                    + 9 * MTEB_PAPER_TABLE6["STS / Similarity"][i]
                    + 6 * MTEB_PAPER_TABLE6["Retrieval / Dup."][i]) / 25
        assert weighted == pytest.approx(MTEB_PAPER_TABLE6["Overall (25 tasks)"][i], abs=0.01)


# -- against the installed mteb (.[test] installs it): names only, no data set is read ----------

def test_paper_tasks_resolve_in_the_installed_mteb_without_downloading(monkeypatch):
    mteb = pytest.importorskip("mteb", reason='mteb not installed: pip install -e ".[mteb]"')
    from megatron_nitp.evaluation.mteb_eval import TYPE_GROUPS, resolve_tasks

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks = resolve_tasks("paper")
    assert [t.metadata.name for t in tasks] == list(MTEB_PAPER_TASKS)
    assert not any(t.data_loaded for t in tasks)
    # The paper groups "according to the task types": mteb's types give Table 6's groups.
    for group, names in MTEB_PAPER_GROUPS.items():
        for t in tasks:
            if t.metadata.name in names:
                assert TYPE_GROUPS[t.metadata.type] == group, (t.metadata.name, t.metadata.type)
    # English only, test splits (MTEB(eng, v1)'s configuration of the multilingual ones).
    subsets = {t.metadata.name: t.hf_subsets for t in tasks}
    assert subsets["STS17"] == ["en-en"] and subsets["AmazonCounterfactualClassification"] == ["en"]
    assert all(list(t.eval_splits) == ["test"] for t in tasks)
    assert mteb.__version__ == "2.12.0"  # setup.py pins the paper's version


def test_an_unknown_task_or_module_is_one_clear_error(tmp_path):
    pytest.importorskip("mteb", reason='mteb not installed: pip install -e ".[mteb]"')
    from megatron_nitp.evaluation.mteb_eval import resolve_tasks

    with pytest.raises(ValueError, match=r"unknown task\(s\) \['NoSuchTask'\]"):
        resolve_tasks("STS12,NoSuchTask")
    with pytest.raises(FileNotFoundError, match="--mteb-task-module"):
        resolve_tasks(None, str(tmp_path / "none.py"))
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines no mteb task"):
        resolve_tasks(None, str(tmp_path / "empty.py"))


def test_type_groups_of_other_task_lists():
    from megatron_nitp.evaluation.mteb_eval import type_group_scores

    groups = type_group_scores({"A": 0.2, "B": 0.4, "C": 0.9},
                               {"A": "STS", "B": "STS", "C": "Reranking"})
    assert groups == pytest.approx({"STS / Similarity": 30.0, "Retrieval / Dup.": 90.0,
                                    "Overall (3 tasks)": 50.0})

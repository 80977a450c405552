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

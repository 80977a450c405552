"""examples/lm_eval_tasks: the task YAMLs for two of the paper's tasks lm-eval 0.4.13 lacks
(Balanced COPA, C3) load in lm-eval and turn a local record of each dataset's format into the
intended prompt, options and answer (the data path edited, as a user would)."""

import json

import pytest

from tests.e2e.engine_runner import REPO_ROOT

COPA = {"premise": "The man broke his toe.", "choice1": "He dropped a hammer on his foot.",
        "choice2": "He got a hole in his sock.", "question": "cause", "label": 0}
C3 = {"context": ["男：你今天去哪儿了？", "女：我去图书馆了。"], "question": "女的去哪儿了？",
      "choice": ["商店", "图书馆", "学校"], "answer": "图书馆"}


@pytest.mark.parametrize("name,record,text,choices,target", [
    ("balanced_copa", COPA, "The man broke his toe because",
     [" he dropped a hammer on his foot.", " he got a hole in his sock."], 0),
    ("c3", C3, "男：你今天去哪儿了？\n女：我去图书馆了。\n问题：女的去哪儿了？\n答案：",
     ["商店", "图书馆", "学校"], 1),
])
def test_template_builds_the_prompt_options_and_answer(tmp_path, name, record, text, choices,
                                                       target):
    pytest.importorskip("lm_eval", reason='lm-eval not installed: pip install -e ".[eval]"')
    from lm_eval.tasks import TaskManager, get_task_dict

    data = tmp_path / f"{name}.jsonl"
    data.write_text(json.dumps(record, ensure_ascii=False) + "\n")
    yaml = (REPO_ROOT / "examples" / "lm_eval_tasks" / f"{name}.yaml").read_text()
    placeholder = f"/data/{name}/test.jsonl"
    assert placeholder in yaml
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / f"{name}.yaml").write_text(yaml.replace(placeholder, str(data)))
    task = get_task_dict([name], TaskManager(include_path=str(tmp_path / "tasks")))[name]
    doc = next(iter(task.test_docs()))
    assert task.doc_to_text(doc) == text
    assert task.doc_to_choice(doc) == choices
    assert task.doc_to_target(doc) == target

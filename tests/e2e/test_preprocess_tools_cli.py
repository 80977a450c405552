"""The other data tools as a user runs them: tools/build_demo_corpus.py and
tools/train_tokenizer.py (neither imports megatron-core, so each run takes about a second)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(tool, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", tool), *args],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_demo_corpus_tool_writes_the_same_corpus_twice(tmp_path):
    for name in ("one", "two"):
        result = _run("build_demo_corpus.py", "--output", str(tmp_path / f"{name}.jsonl"), "--max-docs", "25")
        assert result.returncode == 0, result.stderr
        assert "25 documents" in result.stdout
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()


def test_train_tokenizer_tool_trains_on_the_demo_corpus_and_reports_how_to_use_it(tmp_path):
    assert _run("build_demo_corpus.py", "--output", str(tmp_path / "c.jsonl"), "--max-docs", "25").returncode == 0
    result = _run("train_tokenizer.py", "--input", str(tmp_path / "c.jsonl"), "--type", "hf-bpe",
                  "--vocab-size", "600", "--output-prefix", str(tmp_path / "tok"))
    assert result.returncode == 0, result.stderr
    assert f"--tokenizer-type HuggingFaceTokenizer --tokenizer-model {tmp_path / 'tok.json'}" in result.stdout
    assert json.loads((tmp_path / "tok.json").read_text())["added_tokens"][0]["content"] == "<|endoftext|>"


def test_train_tokenizer_tool_reports_a_bad_input_in_one_line_with_exit_code_2(tmp_path):
    result = _run("train_tokenizer.py", "--input", str(tmp_path / "missing.jsonl"), "--type",
                  "sentencepiece", "--vocab-size", "1000", "--output-prefix", str(tmp_path / "tok"))
    assert result.returncode == 2
    assert result.stderr == f"train_tokenizer.py: error: --input: '{tmp_path / 'missing.jsonl'}' does not exist (expected a JSONL file)\n"

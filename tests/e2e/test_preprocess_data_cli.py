"""tools/preprocess_data.py as a user runs it: a summary of good and bad lines, one error line
for bad arguments, and no .bin/.idx pair after Ctrl-C or a kill in the middle of a run.

Argument errors are checked in fresh interpreters (they must come before megatron-core is
imported). Runs that get past them import megatron-core, which costs seconds per interpreter, so
they call the tool's main() in this process; the signal tests start it as a real process.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "preprocess_data.py")
NULL_TOKENIZER = ["--tokenizer-type", "NullTokenizer", "--vocab-size", "1000"]


def _tool():
    spec = importlib.util.spec_from_file_location("preprocess_data_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _start_tool(argv, output_path):
    """The tool in a fresh interpreter, in its own session (a Ctrl-C to its process group reaches
    it and its pool workers, nothing else), output to a file. Not a fork of this process: pytest
    has run torch by now, and a fork of a process with live threads can deadlock in the child."""
    with open(output_path, "w") as out:
        return subprocess.Popen([sys.executable, TOOL, *argv], stdout=out,
                                stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                env=dict(os.environ, PYTHONWARNINGS="ignore"),
                                # An ignored SIGINT is inherited across exec: if anything in this
                                # pytest process ignores it, Python would not install its Ctrl-C
                                # handler in the tool. Start it as a terminal would.
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait(proc, timeout):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"the tool did not stop within {timeout} s") from None


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _read_documents(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(prefix)
    return [dataset[i].tolist() for i in range(len(dataset))]


def test_good_documents_arrive_and_bad_lines_are_counted_by_kind(tmp_path, capsys):
    lines = [json.dumps({"text": f"{i} {i + 1}"}).encode() for i in range(40)]
    lines[5:5] = [b"{oops", json.dumps({"title": "x"}).encode(), json.dumps({"text": ""}).encode(),
                  b'{"text": "\xff\xfe"}']
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    code = _tool().main(["--input", str(tmp_path / "in.jsonl"), "--output-prefix", str(tmp_path / "out"),
                         *NULL_TOKENIZER, "--append-eod", "--workers", "2"])
    assert code == 0
    stdout = capsys.readouterr().out
    rows = {line[:28].strip(): line[28:].split()[0] for line in stdout.splitlines()[1:]}
    assert rows["documents written"] == "40"
    for kind in ("invalid JSON", "missing key", "empty text", "invalid UTF-8"):
        assert rows[f"skipped, {kind}"] == "1"
    assert rows["tokens, text"] == str(40 * 3)
    assert _read_documents(str(tmp_path / "out_text_document")) == [[i, i + 1, 1000] for i in range(40)]


@pytest.mark.parametrize("case, flag", [
    ("missing tokenizer model", "--tokenizer-model"),
    ("existing output", "--overwrite"),
    ("missing input", "--input"),
])
def test_bad_arguments_end_with_one_error_line_and_exit_code_2(tmp_path, case, flag):
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "1 2"}) + "\n")
    args = ["--input", str(tmp_path / "in.jsonl"), "--output-prefix", str(tmp_path / "out")]
    if case == "missing tokenizer model":
        args += ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", str(tmp_path / "no.model")]
    else:
        args += NULL_TOKENIZER
    if case == "existing output":
        (tmp_path / "out_text_document.bin").write_bytes(b"keep me")
    if case == "missing input":
        args[1] = str(tmp_path / "nowhere.jsonl")
    result = _run(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("preprocess_data.py: error: ") and flag in result.stderr
    if case == "existing output":
        assert (tmp_path / "out_text_document.bin").read_bytes() == b"keep me"


@pytest.mark.parametrize("how", ["ctrl-c", "sigkill"])
def test_a_run_stopped_midway_leaves_no_bin_idx_pair(tmp_path, how):
    # The input is a named pipe that the test keeps open: the run is certainly mid-way, with
    # documents written, when the signal arrives.
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    done = threading.Event()

    def feed():
        descriptor = os.open(fifo, os.O_WRONLY)  # blocks until the tool opens its input
        line = (json.dumps({"text": " ".join(["7"] * 200)}) + "\n").encode()
        for _ in range(2000):  # ~1.6 MB: many pool tasks, far more than a write buffer
            os.write(descriptor, line)
        done.wait(300)
        os.close(descriptor)

    workers = "2" if how == "ctrl-c" else "1"  # a killed pool would leave orphan workers
    output = tmp_path / "output.txt"
    proc = _start_tool(["--input", str(fifo), "--output-prefix", str(tmp_path / "out"),
                      *NULL_TOKENIZER, "--workers", workers, "--no-progress"], str(output))
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        partial = tmp_path / f"out_text_document.bin.partial-{proc.pid}"
        deadline = time.time() + 120
        while not (partial.exists() and partial.stat().st_size > 0):
            assert time.time() < deadline, output.read_text()
            time.sleep(0.05)
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends: the whole process group
        else:
            os.kill(proc.pid, signal.SIGKILL)
        code = _wait(proc, 60)
    finally:
        done.set()
    names = sorted(os.listdir(tmp_path))
    assert not [name for name in names if name.endswith((".bin", ".idx"))]
    if how == "ctrl-c":
        text = output.read_text()
        assert code == 130 and "interrupted; no output was written" in text
        assert "Traceback" not in text
        assert names == ["in.jsonl", "output.txt"]  # temporaries cleaned up too
    else:
        assert code == -signal.SIGKILL

"""A real English corpus built with no network from what every machine running this project has.

Sources, in this fixed order:
1. `stdlib`: docstrings of the Python standard library (modules, classes, methods, functions),
   one document per module. Modules are enumerated from `sys.stdlib_module_names` and `pkgutil`
   in sorted order and read with `inspect` in a separate, isolated interpreter (`python -I -S`),
   so that import side effects (printing, terminal escapes, warnings) never reach the caller;
   modules whose import does something (antigravity, this, turtle, readline, ...) and test
   packages are skipped.
2. `python-reference`: the Python language reference topics that ship with pydoc
   (`pydoc_data.topics`), one document per topic.
3. `megatron.core`, `numpy`, `torch`: docstrings of this project's own dependencies, read from
   their source files without importing them, one document per file.

Text is cleaned: doctest and code lines and RST rule lines are dropped, whitespace is collapsed
inside paragraphs, paragraphs that are not prose or that were already seen are dropped, and
documents shorter than 200 characters are dropped. The output depends only on the Python and
package versions installed, never on time or hash seeds. Run as a script, this file is the
isolated stdlib reader (`--stdlib-docs`, JSON lines on stdout).
"""

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

DEFAULT_SOURCES = ("stdlib", "python-reference", "megatron.core", "numpy", "torch")
MIN_DOCUMENT_CHARS = 200
DEFAULT_MAX_BYTES = 20_000_000

# Standard library modules not imported: import side effects, platform-only, tests, or no prose.
SKIPPED_MODULES = frozenset(
    {
        "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "readline",
        "test", "tests", "lib2to3", "ensurepip", "encodings", "pydoc_data", "xxsubtype",
        "xxlimited", "xxlimited_35", "msvcrt", "winreg", "winsound", "nt", "msilib",
    }
)
_STDLIB_TIMEOUT_SECONDS = 300

_DOCSTRING = re.compile(r"^[ \t]*[rRuU]?(\"\"\"|''')(.*?)\1", re.MULTILINE | re.DOTALL)
_CODE_LINE = re.compile(r"^\s*(>>>|\.\.\.|\.\. |\$ |[-=~^*#+_`]{3,}\s*$)")
_WORD = re.compile(r"[A-Za-z]+")


@dataclass
class CorpusStats:
    documents: int
    characters: int
    sources: Dict[str, int]  # documents per source


def build_demo_corpus(
    output_path: str,
    max_docs: Optional[int] = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    sources: Sequence[str] = DEFAULT_SOURCES,
) -> CorpusStats:
    """Write the corpus as JSONL (`{"text": ..., "source": ...}` per line), atomically.

    Raises DataArgumentError (naming --sources or --output) before any work for an unknown
    source or an output that cannot be written.
    """
    # Imported here: at module level it would break this file's use as the isolated stdlib
    # reader, which runs with no access to this package.
    from megatron_nitp.data.errors import DataArgumentError, ensure_output_directory

    for name in sources:
        if name not in ("stdlib", "python-reference") and _package_root(name) is None:
            raise DataArgumentError(
                f"--sources: {name!r} is neither 'stdlib', 'python-reference' nor an installed "
                "Python package"
            )
    ensure_output_directory(output_path, "--output")
    temporary = f"{output_path}.partial-{os.getpid()}"
    stats = CorpusStats(0, 0, {})
    try:
        with open(temporary, "w", encoding="utf-8") as stream, \
                contextlib.closing(iter_documents(sources)) as documents:
            for source, text in documents:
                if max_docs is not None and stats.documents >= max_docs:
                    break
                if stats.characters + len(text) > max_bytes:
                    break
                stream.write(json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n")
                stats.documents += 1
                stats.characters += len(text)
                group = source.split(":", 1)[0]
                stats.sources[group] = stats.sources.get(group, 0) + 1
        os.replace(temporary, output_path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return stats


def iter_documents(sources: Sequence[str] = DEFAULT_SOURCES) -> Iterator[Tuple[str, str]]:
    """Yield cleaned, deduplicated (source, text) documents, lazily, source after source."""
    seen = set()
    for name in sources:
        if name == "stdlib":
            raw = _stdlib_documents()
        elif name == "python-reference":
            raw = _python_reference_documents()
        else:
            raw = _package_documents(name)
        for source, docstrings in raw:
            text = _clean_document(docstrings, seen)
            if len(text) >= MIN_DOCUMENT_CHARS:
                yield source, text


def _clean_document(docstrings: Iterable[str], seen: set) -> str:
    """Prose paragraphs of the docstrings not seen before, joined by blank lines."""
    paragraphs = []
    for docstring in docstrings:
        for paragraph in re.split(r"\n\s*\n", docstring):
            lines = [line for line in paragraph.splitlines() if not _CODE_LINE.match(line)]
            text = " ".join(" ".join(lines).split())
            if not _is_prose(text):
                continue
            digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
            if digest not in seen:
                seen.add(digest)
                paragraphs.append(text)
    return "\n\n".join(paragraphs)


def _is_prose(text: str) -> bool:
    """At least a sentence of words: mostly letters and spaces, several words of 2+ letters."""
    if len(text) < 40:
        return False
    letters = sum(len(word) for word in _WORD.findall(text))
    spaces = text.count(" ")
    return (letters + spaces) / len(text) >= 0.8 and len(_WORD.findall(text)) >= 8


def _python_reference_documents() -> Iterator[Tuple[str, List[str]]]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions package pydoc_data separately
        return
    for name in sorted(topics):
        yield f"python-reference:{name}", [topics[name]]


def _package_documents(package: str) -> Iterator[Tuple[str, List[str]]]:
    """Docstring-like string literals of an installed package's .py files (not imported)."""
    root = _package_root(package)
    if root is None:
        return
    base = os.path.dirname(root)
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(
            d for d in subdirectories if d not in ("test", "tests", "testing", "__pycache__")
        )
        for file_name in sorted(files):
            if not file_name.endswith(".py"):
                continue
            path = os.path.join(directory, file_name)
            with open(path, encoding="utf-8", errors="replace") as stream:
                source = stream.read()
            docstrings = [match.group(2) for match in _DOCSTRING.finditer(source)]
            if docstrings:
                yield f"{package}:{os.path.relpath(path, base)}", docstrings


def _package_root(package: str) -> Optional[str]:
    """The directory of an installed package, found without importing it (None if absent)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a missing parent package, or an empty name
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return sorted(spec.submodule_search_locations)[0]


def _stdlib_documents() -> Iterator[Tuple[str, List[str]]]:
    """Run this file in an isolated interpreter that imports the stdlib and streams docstrings.

    Streamed, so that a small corpus (`max_docs`) stops the reader early instead of waiting for
    every module to be imported.
    """
    reader = subprocess.Popen(
        [sys.executable, "-I", "-S", os.path.abspath(__file__), "--stdlib-docs"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": "0", "LC_ALL": "C.UTF-8"},
    )
    try:
        for line in io.TextIOWrapper(reader.stdout, encoding="utf-8"):
            record = json.loads(line)
            yield f"stdlib:{record['module']}", record["docstrings"]
        if reader.wait(timeout=_STDLIB_TIMEOUT_SECONDS) != 0:
            tail = reader.stderr.read().decode(errors="replace").strip().splitlines()[-1:]
            raise RuntimeError(f"reading the standard library docstrings failed: {tail}")
    finally:
        if reader.poll() is None:
            reader.kill()
        reader.wait()
        reader.stderr.close()


# ---- the isolated reader (runs as `python -I -S demo_corpus.py --stdlib-docs`) ----


def _stdlib_module_names() -> List[str]:
    return sorted(
        name
        for name in sys.stdlib_module_names
        if not name.startswith("_") and name not in SKIPPED_MODULES
    )


def _import_quietly(name: str):
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except BaseException:  # ImportError, platform errors, SystemExit from odd modules
            return None


def _walk_module(name: str) -> Iterator:
    """The module and, for a package, its public submodules, depth first in sorted order."""
    import pkgutil

    module = _import_quietly(name)
    if module is None:
        return
    yield module
    if hasattr(module, "__path__"):
        children = sorted(info.name for info in pkgutil.iter_modules(module.__path__, name + "."))
        for child in children:
            last = child.rsplit(".", 1)[-1]
            if not last.startswith("_") and last not in SKIPPED_MODULES:
                yield from _walk_module(child)


def _module_docstrings(module) -> List[str]:
    import inspect

    docstrings = [module.__doc__]
    for name, value in sorted(vars(module).items()):
        if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
            continue  # private, or imported from elsewhere
        if inspect.isclass(value):
            docstrings.append(value.__doc__)
            for member_name, member in sorted(vars(value).items()):
                if member_name.startswith("_"):
                    continue  # dunder slots carry generic text ("Return repr(self).")
                member = getattr(member, "__func__", member)  # classmethod, staticmethod
                docstrings.append(getattr(member, "__doc__", None))
        elif inspect.isroutine(value):
            docstrings.append(value.__doc__)
    return [inspect.cleandoc(d) for d in docstrings if isinstance(d, str) and d.strip()]


def _dump_stdlib_docstrings() -> None:
    # Records go to a private copy of stdout; file descriptor 1 itself goes to /dev/null so that
    # nothing a module writes while being imported (even from C) can corrupt them.
    stream = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    with stream:
        for name in _stdlib_module_names():
            for module in _walk_module(name):
                try:
                    docstrings = _module_docstrings(module)
                except Exception:  # a module with exotic attributes: skip, never fail
                    continue
                if docstrings:
                    record = {"module": module.__name__, "docstrings": docstrings}
                    stream.write(json.dumps(record, ensure_ascii=False) + "\n")
                    stream.flush()


if __name__ == "__main__" and sys.argv[1:] == ["--stdlib-docs"]:
    try:
        _dump_stdlib_docstrings()
    except BrokenPipeError:  # the caller had enough documents and closed the pipe
        pass

"""Semantic prompts for CAPT's Semantic Confusion Miner.

For each semantic confusion pair ``(a, b)`` of class names (a training sample's class and one of its confusion
classes; the trainer asks for each unordered pair once, the lower class index first, as
``trainers.confusion.confusion_pairs`` returns them, so ``a`` is not necessarily the class mistaken for ``b``),
CAPT needs two sentences: a *commonality* prompt (what ``a`` and ``b`` share) and a *difference* prompt (what tells
them apart). Their frozen text features initialise the semantic experts of MGDE. The prompts are
data: generate them once, store them next to the confusion bank with [`save_prompts`], and read them back with
[`load_prompts`]; nothing here runs per training step.

Three generators share one interface, [`SemanticPromptGenerator`] (``generate(pairs) -> {pair: SemanticPrompt}``):

- [`TemplatePromptGenerator`]: fixed sentence templates, offline, no language model (tests, CI, embedded default).
- [`JSONPromptGenerator`]: prompts written by the user in the JSON format below.
- [`LMPromptGenerator`]: any local causal LM through the `transformers` ``text-generation`` pipeline, prompted with
  the chain of thought of the CAPT paper (Appendix E, Figure 7): describe ``a``, describe ``b``, reason about why
  they are confused, then write one ``Commonality:`` line and one ``Difference:`` line. Answers that cannot be
  parsed get one stricter retry and then fall back to the template generator for that pair.

[`get_prompt_generator`] maps the trainer flags (``--prompt_generator template|json|lm``, ``--prompt_file``,
``--prompt_lm``) to a generator.

JSON format (version 1)
-----------------------

The format read by [`JSONPromptGenerator`] and [`load_prompts`], and written by [`save_prompts`]::

    {
      "version": 1,
      "metadata": {"generator": "lm", "model": "my-local-llm"},
      "pairs": [
        {
          "classes": ["shirt", "t-shirt"],
          "commonality": "a photo of a shirt or a t-shirt, both upper-body garments made of fabric.",
          "difference": "a shirt has a collar and buttons down the front, a t-shirt has neither.",
          "source": "lm"
        }
      ]
    }

- ``version`` (`int`, *optional*, defaults to 1): the format version; only 1 exists.
- ``metadata`` (`dict`, *optional*): free-form provenance, kept by the writer and ignored by the readers.
- ``pairs`` (`list`, required): one entry per confusion pair, each with exactly these keys:
    - ``classes`` (two distinct non-empty strings): the class names, spelled as in the dataset's class names.
    - ``commonality`` (`str`, non-empty): what the two classes share.
    - ``difference`` (`str`, non-empty): what tells them apart.
    - ``source`` (`str`, *optional*, defaults to ``"json"``): where the sentences came from (``"lm"``,
      ``"template"``, ``"template-fallback"``, ...).

Pair lookup is order-insensitive: an entry for ``["shirt", "t-shirt"]`` also answers a request for
``("t-shirt", "shirt")``. A file may hold both orders when their sentences should differ; the exact order then wins.
The same ordered pair may not appear twice.

Example:

```python
>>> from trainers.semantic_prompts import TemplatePromptGenerator, save_prompts, load_prompts
>>> prompts = TemplatePromptGenerator().generate([("shirt", "t-shirt")])
>>> prompts[("shirt", "t-shirt")].difference
'a photo of a shirt, not a t-shirt.'
>>> save_prompts(prompts, "outputs/bank/semantic_prompts.json")  # doctest: +SKIP
>>> load_prompts("outputs/bank/semantic_prompts.json") == prompts  # doctest: +SKIP
True
```
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import string
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

PROMPT_FILE_VERSION = 1

Pair = tuple[str, str]


@dataclass(frozen=True)
class SemanticPrompt:
    """The semantic prompts of one confusion pair.

    Args:
        commonality (`str`):
            One sentence on what the two classes share.
        difference (`str`):
            One sentence on what tells the two classes apart.
        source (`str`, *optional*, defaults to `"template"`):
            Where the sentences came from: `"template"`, `"json"`, `"lm"`, or `"<generator>-fallback"` when the
            requested generator failed for this pair and a fallback generator answered instead.
    """

    commonality: str
    difference: str
    source: str = "template"


@runtime_checkable
class SemanticPromptGenerator(Protocol):
    """Anything that turns confusion pairs into semantic prompts.

    `generate` returns one [`SemanticPrompt`] per distinct requested pair, keyed by the pair exactly as requested
    (as a tuple), in the order of first appearance.
    """

    def generate(self, pairs: Iterable[Pair]) -> dict[Pair, SemanticPrompt]: ...


class SemanticPromptFileError(ValueError):
    """A semantic prompt file is unreadable, malformed, or lacks a requested pair. The message names the file."""


def _validate_pairs(pairs: Iterable[Pair]) -> list[Pair]:
    """Checks the requested pairs and returns them as distinct tuples, in order of first appearance."""
    if isinstance(pairs, (str, bytes)):
        raise TypeError("`pairs` must be an iterable of (class_a, class_b) tuples, not a string.")
    unique: dict[Pair, None] = {}
    for index, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Iterable):
            raise ValueError(f"Pair {index} must be a (class_a, class_b) tuple, got {pair!r}.")
        pair = tuple(pair)
        if len(pair) != 2 or not all(isinstance(name, str) and name.strip() for name in pair):
            raise ValueError(f"Pair {index} must hold two non-empty class names, got {pair!r}.")
        if pair[0] == pair[1]:
            raise ValueError(
                f"Pair {index} pairs the class {pair[0]!r} with itself; a confusion pair needs two classes."
            )
        unique[pair] = None
    return list(unique)


def _fallback_source(prompt: SemanticPrompt) -> str:
    """The `source` of a prompt that a fallback generator supplied: `"template"` becomes `"template-fallback"`."""
    return prompt.source if prompt.source.endswith("-fallback") else f"{prompt.source}-fallback"


def _resolve_fallback(fallback: SemanticPromptGenerator | str | None) -> SemanticPromptGenerator | None:
    if fallback is None or not isinstance(fallback, str):
        return fallback
    if fallback == "template":
        return TemplatePromptGenerator()
    raise ValueError(f"Unknown fallback {fallback!r}: pass 'template', a generator, or None.")


class TemplatePromptGenerator:
    """Semantic prompts from fixed sentence templates: offline, deterministic, no language model.

    Used by the tests, CI and the embedded default, and as the fallback of [`LMPromptGenerator`].

    Args:
        commonality_template (`str`, *optional*, defaults to `"a photo of a {a} or a {b}, which look alike."`):
            Format string with the fields `{a}` and `{b}` (the two class names, in the requested order).
        difference_template (`str`, *optional*, defaults to `"a photo of a {a}, not a {b}."`):
            Format string with the fields `{a}` and `{b}`.

    Example:

    ```python
    >>> prompt = TemplatePromptGenerator().generate([("wolf", "husky")])[("wolf", "husky")]
    >>> prompt.commonality, prompt.difference
    ('a photo of a wolf or a husky, which look alike.', 'a photo of a wolf, not a husky.')

    ```
    """

    source = "template"

    def __init__(
        self,
        commonality_template: str = "a photo of a {a} or a {b}, which look alike.",
        difference_template: str = "a photo of a {a}, not a {b}.",
    ):
        for name, template in (
            ("commonality_template", commonality_template),
            ("difference_template", difference_template),
        ):
            try:
                fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
            except ValueError as err:  # unbalanced braces
                raise ValueError(f"`{name}` is not a format string: {template!r} ({err}).") from err
            if not fields <= {"a", "b"}:  # `{classname}`, `{0}`, `{}`, `{a.x}`, `{a[0]}`
                raise ValueError(f"`{name}` may only use the fields {{a}} and {{b}}: {template!r} "
                                 f"(has {sorted(fields - {'a', 'b'})}).")
        self.commonality_template = commonality_template
        self.difference_template = difference_template

    def generate(self, pairs: Iterable[Pair]) -> dict[Pair, SemanticPrompt]:
        return {
            (a, b): SemanticPrompt(
                commonality=self.commonality_template.format(a=a, b=b),
                difference=self.difference_template.format(a=a, b=b),
                source=self.source,
            )
            for a, b in _validate_pairs(pairs)
        }


# --------------------------------------------------------------------------------------------------------------
# JSON file format
# --------------------------------------------------------------------------------------------------------------

_ENTRY_REQUIRED = ("classes", "commonality", "difference")
_ENTRY_KEYS = {*_ENTRY_REQUIRED, "source"}
_TOP_LEVEL_KEYS = {"version", "metadata", "pairs"}


def _parse_prompt_document(document: Any, path: str, default_source: str = "json") -> dict[Pair, SemanticPrompt]:
    def fail(problem: str) -> SemanticPromptFileError:
        return SemanticPromptFileError(f"{path}: {problem}")

    if not isinstance(document, dict):
        raise fail(f"the top level must be an object with a 'pairs' list, got {type(document).__name__}.")
    unknown = set(document) - _TOP_LEVEL_KEYS
    if unknown:
        raise fail(f"unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(_TOP_LEVEL_KEYS)}.")
    version = document.get("version", PROMPT_FILE_VERSION)
    if type(version) is not int or version != PROMPT_FILE_VERSION:
        raise fail(f"unsupported format version {version!r}; this reader knows version {PROMPT_FILE_VERSION}.")
    if "metadata" in document and not isinstance(document["metadata"], dict):
        raise fail("'metadata' must be an object.")
    if "pairs" not in document:
        raise fail("missing the 'pairs' list.")
    entries = document["pairs"]
    if not isinstance(entries, list):
        raise fail(f"'pairs' must be a list, got {type(entries).__name__}.")

    prompts: dict[Pair, SemanticPrompt] = {}
    for index, entry in enumerate(entries):
        where = f"pairs[{index}]"
        if not isinstance(entry, dict):
            raise fail(f"{where} must be an object, got {type(entry).__name__}.")
        missing = [key for key in _ENTRY_REQUIRED if key not in entry]
        if missing:
            raise fail(f"{where} is missing the field(s) {missing}.")
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise fail(f"{where} has unknown field(s) {sorted(unknown)}; allowed: {sorted(_ENTRY_KEYS)}.")
        classes = entry["classes"]
        if (
            not isinstance(classes, list)
            or len(classes) != 2
            or not all(isinstance(name, str) and name.strip() for name in classes)
        ):
            raise fail(f"{where}.classes must be a list of two non-empty class names, got {classes!r}.")
        if classes[0] == classes[1]:
            raise fail(f"{where}.classes pairs {classes[0]!r} with itself.")
        for key in ("commonality", "difference", "source"):
            if key in entry and not (isinstance(entry[key], str) and entry[key].strip()):
                raise fail(f"{where}.{key} must be a non-empty string, got {entry[key]!r}.")
        pair = (classes[0], classes[1])
        if pair in prompts:
            raise fail(f"{where} repeats the pair {list(pair)}.")
        prompts[pair] = SemanticPrompt(
            commonality=entry["commonality"], difference=entry["difference"], source=entry.get("source", default_source)
        )
    return prompts


def load_prompts(path: str | os.PathLike) -> dict[Pair, SemanticPrompt]:
    """Reads a semantic prompt file (format in the module docstring).

    Args:
        path (`str` or `os.PathLike`):
            The JSON file.

    Returns:
        `dict[tuple[str, str], SemanticPrompt]`: the prompts, keyed by the pairs as stored, in file order.

    Raises:
        `SemanticPromptFileError`: the file is missing, is not valid JSON, or breaks the format; the message names
        the file and the problem.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except FileNotFoundError as err:
        raise SemanticPromptFileError(f"{path}: no such semantic prompt file.") from err
    except json.JSONDecodeError as err:
        raise SemanticPromptFileError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})."
        ) from err
    except UnicodeDecodeError as err:
        raise SemanticPromptFileError(f"{path}: not UTF-8 text ({err.reason}).") from err
    return _parse_prompt_document(document, path)


def save_prompts(
    prompts: Mapping[Pair, SemanticPrompt], path: str | os.PathLike, metadata: dict[str, Any] | None = None
) -> Path:
    """Writes semantic prompts to a JSON file (format in the module docstring), atomically.

    The file is written next to its destination and moved into place, so a reader never sees half a file and an
    interrupted run leaves the previous file intact. Parent folders are created.

    Args:
        prompts (`Mapping[tuple[str, str], SemanticPrompt]`):
            The prompts, as returned by a generator's `generate` or by [`load_prompts`].
        path (`str` or `os.PathLike`):
            Destination file.
        metadata (`dict`, *optional*):
            JSON-serialisable provenance (generator, model name, ...), stored under `"metadata"`.

    Returns:
        `pathlib.Path`: the written file.
    """
    path = Path(path)
    entries = []
    for pair, prompt in prompts.items():
        ((a, b),) = _validate_pairs([pair])
        if not isinstance(prompt, SemanticPrompt):
            raise TypeError(f"prompts[{pair!r}] must be a SemanticPrompt, got {type(prompt).__name__}.")
        entries.append(
            {
                "classes": [a, b],
                "commonality": prompt.commonality,
                "difference": prompt.difference,
                "source": prompt.source,
            }
        )
    document: dict[str, Any] = {"version": PROMPT_FILE_VERSION}
    if metadata is not None:
        document["metadata"] = dict(metadata)
    document["pairs"] = entries
    # Validate what we are about to write with the reader's own rules, so a saved file always loads.
    _parse_prompt_document(json.loads(json.dumps(document)), os.fspath(path))

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            json.dump(document, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return path


def prompts_from_entries(entries: Any, where: str, default_source: str = "bank") -> dict[Pair, SemanticPrompt]:
    """Reads prompts stored as a list of entries of the format's `pairs` list (how a confusion bank stores them),
    with the checks of [`load_prompts`].

    Args:
        entries (`list[dict]`):
            The entries (`classes`, `commonality`, `difference`, optional `source`).
        where (`str`):
            Names the entries' origin in error messages (e.g. the bank's folder).
        default_source (`str`, *optional*, defaults to `"bank"`):
            The `source` of an entry without one.

    Raises:
        `SemanticPromptFileError`: an entry breaks the format; the message starts with `where`.
    """
    return _parse_prompt_document({"pairs": entries}, where, default_source)


class JSONPromptGenerator:
    """Semantic prompts read from a user's JSON file (format in the module docstring).

    The file is read and checked when the generator is built, so a malformed file fails before any training.

    Args:
        path (`str` or `os.PathLike`):
            The JSON file.
        fallback (`SemanticPromptGenerator` or `"template"`, *optional*):
            What answers pairs absent from the file; their `source` becomes `"<fallback source>-fallback"` and a
            warning lists them. With `None` (the default) an absent pair is an error.

    Example:

    ```python
    >>> generator = JSONPromptGenerator("my_prompts.json", fallback="template")  # doctest: +SKIP
    >>> generator.generate([("t-shirt", "shirt")])  # order-insensitive lookup  # doctest: +SKIP
    ```
    """

    def __init__(self, path: str | os.PathLike, fallback: SemanticPromptGenerator | str | None = None):
        self.path = os.fspath(path)
        self.fallback = _resolve_fallback(fallback)
        self.prompts = load_prompts(self.path)

    def _lookup(self, pair: Pair) -> SemanticPrompt | None:
        prompt = self.prompts.get(pair)
        return prompt if prompt is not None else self.prompts.get((pair[1], pair[0]))

    def _spelling_hint(self, missing: list[Pair]) -> str:
        """Names the requested classes that no entry of the file names, with the file's closest spellings."""
        known = sorted({name for pair in self.prompts for name in pair})
        absent = [name for name in dict.fromkeys(name for pair in missing for name in pair) if name not in known]
        if not absent:
            return ""
        folded = {other.casefold().strip(): other for other in known}
        hints = []
        for name in absent[:5]:
            close = [folded[key] for key in difflib.get_close_matches(name.casefold().strip(), folded, n=1)]
            hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
        more = " ..." if len(absent) > 5 else ""
        return f"; the file names no class {', '.join(hints)}{more}: class names must be spelled as the dataset's"

    def generate(self, pairs: Iterable[Pair]) -> dict[Pair, SemanticPrompt]:
        pairs = _validate_pairs(pairs)
        found = {pair: self._lookup(pair) for pair in pairs}
        missing = [pair for pair, prompt in found.items() if prompt is None]
        if missing:
            shown = ", ".join(repr(pair) for pair in missing[:5]) + (" ..." if len(missing) > 5 else "")
            shown += self._spelling_hint(missing)
            if self.fallback is None:
                raise SemanticPromptFileError(
                    f"{self.path}: no prompts for {len(missing)} requested pair(s): {shown}. Add them to the file "
                    "(the trainer needs every pair it mines there), or, from Python, build the generator with "
                    "fallback='template'."
                )
            logger.warning(
                "%s: no prompts for %d pair(s) (%s); using %s for them.",
                self.path,
                len(missing),
                shown,
                type(self.fallback).__name__,
            )
            for pair, prompt in self.fallback.generate(missing).items():
                found[pair] = SemanticPrompt(prompt.commonality, prompt.difference, _fallback_source(prompt))
        return found


# --------------------------------------------------------------------------------------------------------------
# Language-model generator (chain of thought)
# --------------------------------------------------------------------------------------------------------------

_LABEL_AT_LINE_START = re.compile(
    r"^[ \t>*#\-•\d.)]*\**[ \t]*(commonalit(?:y|ies)|differences?)[ \t]*\**[ \t]*[:：]", re.IGNORECASE | re.MULTILINE
)
_LABEL_ANYWHERE = re.compile(r"\b(?:commonalit(?:y|ies)|differences?)[ \t]*\**[ \t]*[:：]", re.IGNORECASE)
_ROLE_MARKER = re.compile(r"\n[ \t]*(?:User|Assistant)[ \t]*:")
_QUOTES_AND_MARKUP = " \t\"'`*_“”‘’"


def _clean_sentence(text: str, max_chars: int) -> str | None:
    sentence = " ".join(text.split()).strip(_QUOTES_AND_MARKUP)
    if not sentence or len(sentence) > max_chars:
        return None
    if not re.search(r"[^\W\d_]", sentence):  # no letter at all: punctuation or numbers only
        return None
    if sentence.startswith("<") and sentence.endswith(">"):  # the LM echoed the placeholder of the instruction
        return None
    return sentence


def parse_semantic_answer(text: str, max_chars: int = 300) -> tuple[str, str] | None:
    """Extracts the commonality and difference sentences from an LM answer.

    Looks for a line starting with `Commonality:` and one starting with `Difference:` (case-insensitive; plural,
    Markdown bold, bullets, numbering and full-width colons are tolerated; the sentence may sit on the next line; a
    single line holding both labels is split). The first valid sentence of each kind wins.

    Args:
        text (`str`):
            The LM's answer.
        max_chars (`int`, *optional*, defaults to 300):
            Longest accepted sentence (CLIP's text encoder reads 77 tokens, roughly 300 characters).

    Returns:
        `tuple[str, str]` or `None`: `(commonality, difference)`, or `None` when either is missing, empty, only
        punctuation, a template placeholder, or longer than `max_chars`.
    """
    if not isinstance(text, str):
        return None
    # Split "Commonality: ... Difference: ..." written on one line into two labelled lines.
    lines = []
    for line in text.split("\n"):
        first = _LABEL_AT_LINE_START.match(line)
        starts = [0] + ([m.start() for m in _LABEL_ANYWHERE.finditer(line, first.end())] if first else [])
        lines.extend(line[start:end] for start, end in zip(starts, starts[1:] + [len(line)], strict=True))
    text = "\n".join(lines)

    found: dict[str, str] = {}
    for match in _LABEL_AT_LINE_START.finditer(text):
        kind = "commonality" if match.group(1).lower().startswith("common") else "difference"
        if kind in found:
            continue
        line = text[match.end() :].lstrip().split("\n", 1)[0]  # the sentence may start on the next line
        if _LABEL_AT_LINE_START.match(line):  # an empty value followed by the next label
            continue
        sentence = _clean_sentence(line, max_chars)
        if sentence is not None:
            found[kind] = sentence
    if "commonality" in found and "difference" in found:
        return found["commonality"], found["difference"]
    return None


def _is_pretrained_model(obj: Any) -> bool:
    from transformers import PreTrainedModel

    return isinstance(obj, PreTrainedModel)


def _output_text(output: Any) -> str:
    """The generated text of one pipeline call, whatever shape the pipeline returns it in."""
    while isinstance(output, list) and output and not isinstance(output[0], str):
        output = output[0]
    if isinstance(output, dict):
        output = output.get("generated_text", "")
    if isinstance(output, list):  # a chat returned in full: the last message is the answer
        output = output[-1].get("content", "") if output and isinstance(output[-1], dict) else ""
    return output if isinstance(output, str) else ""


class LMPromptGenerator:
    """Semantic prompts written by a local causal LM with the chain of thought of CAPT (paper Appendix E, Fig. 7).

    For each distinct pair `(a, b)` the LM is prompted step by step:

    1. describe what an `a` looks like (one single-turn call per class, cached and shared by all pairs);
    2. describe what a `b` looks like;
    3. given both descriptions, reason about why the two are confused and what separates them;
    4. write one line starting with `Commonality:` and one starting with `Difference:`.

    Steps 3 and 4 continue the same conversation. When step 4 cannot be parsed (see [`parse_semantic_answer`]) the
    LM gets one stricter final prompt with the answer prefilled with `Commonality:`; if that fails too, or the
    pipeline raises, the pair is answered by `fallback` with `source="template-fallback"` and a logged warning: a
    long run never stops on one bad answer. The pair `(b, a)` reuses the LM's answer for `(a, b)`.

    Decoding is greedy (`do_sample=False`) unless `generate_kwargs` says otherwise, so the same model gives the same
    prompts, and each class's description does not depend on which pairs are requested.

    Chat models get the conversation as chat messages through their chat template; plain LMs get it rendered as a
    `User:` / `Assistant:` transcript, and their answers are cut where they start to invent the next turn.

    Args:
        model_or_pipeline (`str`, `PreTrainedModel`, `Pipeline` or callable):
            A local model folder or model id, a loaded causal LM (then `tokenizer` is required), a
            `text-generation` pipeline, or any callable with the pipeline's calling convention
            (`fn(text_or_messages, max_new_tokens=..., return_full_text=False, **generate_kwargs)` returning
            `[{"generated_text": str}]` or a `str`).
        tokenizer (`PreTrainedTokenizerBase` or `str`, *optional*):
            Tokenizer for a model given by name or object.
        max_new_tokens (`int`, *optional*, defaults to 128):
            Token budget of each description and of the reasoning step.
        answer_max_new_tokens (`int`, *optional*, defaults to 96):
            Token budget of the final two-line answer (and of its retry).
        max_sentence_chars (`int`, *optional*, defaults to 300):
            Longest accepted commonality or difference sentence.
        use_chat_template (`bool`, *optional*):
            Send chat messages (`True`) or a plain transcript (`False`). Defaults to whether the pipeline's tokenizer
            has a chat template.
        fallback (`SemanticPromptGenerator`, *optional*):
            Answers the pairs the LM fails on. Defaults to [`TemplatePromptGenerator`].
        generate_kwargs (`dict`, *optional*):
            Extra keyword arguments for every pipeline call (forwarded to `generate`); they override the default
            `{"do_sample": False}`.
        pipeline_kwargs (`dict`, *optional*):
            Extra keyword arguments for `transformers.pipeline` (`device`, `dtype`, ...) when one is built here.
        show_progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar over the pairs.

    Example:

    ```python
    >>> generator = LMPromptGenerator("/models/my-local-instruct-llm", pipeline_kwargs={"device": 0})  # doctest: +SKIP
    >>> prompts = generator.generate([("wolf", "husky"), ("shirt", "t-shirt")])  # doctest: +SKIP
    >>> prompts[("wolf", "husky")].source  # or "template-fallback" when the LM's answer was unusable  # doctest: +SKIP
    ```
    """

    source = "lm"

    describe_prompt = (
        "Describe what a {name} looks like in a photo, in two or three sentences: its shape, colour, texture, "
        "distinctive parts and usual surroundings."
    )
    reasoning_prompt = (
        "An image classifier often mistakes a photo of a {a} for a photo of a {b}. Using the two descriptions above, "
        "reason step by step about why they are confused: which visual features they share, and which visual "
        "features reliably tell them apart."
    )
    answer_prompt = (
        "Now summarise your reasoning in exactly two lines, with no other text:\n"
        "Commonality: <one sentence on the visual features that a {a} and a {b} share>\n"
        "Difference: <one sentence on the visual feature that tells a {a} from a {b}>"
    )
    strict_answer_prompt = (
        'Reply strictly in this format and write nothing else. The first line starts with "Commonality:" and '
        "gives one short sentence, at most {max_chars} characters, on what a {a} and a {b} share visually. The "
        'second line starts with "Difference:" and gives one short sentence, at most {max_chars} characters, on '
        "what visually tells a {a} from a {b}."
    )
    answer_prefill = "Commonality:"

    def __init__(
        self,
        model_or_pipeline: Any,
        tokenizer: Any = None,
        *,
        max_new_tokens: int = 128,
        answer_max_new_tokens: int = 96,
        max_sentence_chars: int = 300,
        use_chat_template: bool | None = None,
        fallback: SemanticPromptGenerator | None = None,
        generate_kwargs: dict[str, Any] | None = None,
        pipeline_kwargs: dict[str, Any] | None = None,
        show_progress: bool = True,
    ):
        if isinstance(model_or_pipeline, (str, os.PathLike)) or _is_pretrained_model(model_or_pipeline):
            from transformers import pipeline

            if not isinstance(model_or_pipeline, (str, os.PathLike)) and tokenizer is None:
                raise ValueError("A model object needs its `tokenizer` to build a text-generation pipeline.")
            model = os.fspath(model_or_pipeline) if isinstance(model_or_pipeline, os.PathLike) else model_or_pipeline
            model_or_pipeline = pipeline(
                "text-generation", model=model, tokenizer=tokenizer, **(pipeline_kwargs or {})
            )
        elif not callable(model_or_pipeline):
            raise TypeError(
                "`model_or_pipeline` must be a model folder or id, a PreTrainedModel, a text-generation pipeline or "
                f"a callable, got {type(model_or_pipeline).__name__}."
            )
        self.pipeline = model_or_pipeline
        if use_chat_template is None:
            use_chat_template = bool(getattr(getattr(self.pipeline, "tokenizer", None), "chat_template", None))
        self.use_chat_template = use_chat_template
        self.max_new_tokens = max_new_tokens
        self.answer_max_new_tokens = answer_max_new_tokens
        self.max_sentence_chars = max_sentence_chars
        self.fallback = fallback if fallback is not None else TemplatePromptGenerator()
        self.generate_kwargs = {"do_sample": False, **(generate_kwargs or {})}
        self.show_progress = show_progress

    # -- one LM call ---------------------------------------------------------------------------------------------

    @staticmethod
    def _render_transcript(messages: list[dict[str, str]], prefill: str | None) -> str:
        turns = [f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages]
        turns.append(f"Assistant: {prefill}" if prefill else "Assistant:")
        return "\n\n".join(turns)

    def _complete(self, messages: list[dict[str, str]], max_new_tokens: int, prefill: str | None = None) -> str:
        """Runs the LM on a conversation ending with a user turn and returns the assistant's new text."""
        call_kwargs = {"max_new_tokens": max_new_tokens, "return_full_text": False, **self.generate_kwargs}
        if self.use_chat_template:
            inputs: Any = list(messages)
            if prefill:
                inputs.append({"role": "assistant", "content": prefill})
                call_kwargs["continue_final_message"] = True
        else:
            inputs = self._render_transcript(messages, prefill)
        text = _output_text(self.pipeline(inputs, **call_kwargs))
        if isinstance(inputs, str) and text.startswith(inputs):  # a pipeline that returned the prompt too
            text = text[len(inputs) :]
        if not self.use_chat_template:
            text = _ROLE_MARKER.split(text, maxsplit=1)[0]  # a plain LM writing the next turn itself
        return text.strip()

    # -- chain of thought ----------------------------------------------------------------------------------------

    def _describe(self, name: str, cache: dict[str, str]) -> str:
        if name not in cache:
            cache[name] = self._complete(
                [{"role": "user", "content": self.describe_prompt.format(name=name)}], self.max_new_tokens
            )
        return cache[name]

    def _chain_of_thought(self, a: str, b: str, descriptions: dict[str, str]) -> tuple[str, str] | None:
        conversation = [
            {"role": "user", "content": self.describe_prompt.format(name=a)},
            {"role": "assistant", "content": self._describe(a, descriptions)},
            {"role": "user", "content": self.describe_prompt.format(name=b)},
            {"role": "assistant", "content": self._describe(b, descriptions)},
            {"role": "user", "content": self.reasoning_prompt.format(a=a, b=b)},
        ]
        conversation.append({"role": "assistant", "content": self._complete(conversation, self.max_new_tokens)})

        answer = self._complete(
            conversation + [{"role": "user", "content": self.answer_prompt.format(a=a, b=b)}],
            self.answer_max_new_tokens,
        )
        parsed = parse_semantic_answer(answer, self.max_sentence_chars)
        if parsed is not None:
            return parsed
        logger.info("Unparseable LM answer for (%r, %r), retrying with a stricter prompt: %r", a, b, answer[:200])
        strict = self.strict_answer_prompt.format(a=a, b=b, max_chars=self.max_sentence_chars)
        answer = self._complete(
            conversation + [{"role": "user", "content": strict}],
            self.answer_max_new_tokens,
            prefill=self.answer_prefill,
        )
        parsed = parse_semantic_answer(f"{self.answer_prefill} {answer}", self.max_sentence_chars)
        if parsed is None:
            logger.warning("Unparseable LM answer for (%r, %r) after a stricter retry: %r", a, b, answer[:200])
        return parsed

    def generate(self, pairs: Iterable[Pair]) -> dict[Pair, SemanticPrompt]:
        pairs = _validate_pairs(pairs)
        descriptions: dict[str, str] = {}
        answers: dict[frozenset[str], tuple[str, str] | None] = {}
        prompts: dict[Pair, SemanticPrompt] = {}
        for a, b in tqdm(pairs, desc="semantic prompts", unit="pair", disable=not self.show_progress):
            key = frozenset((a, b))
            if key not in answers:
                try:
                    answers[key] = self._chain_of_thought(a, b, descriptions)
                except Exception as err:  # one failing pair must not end a long run
                    logger.warning("The LM failed on the pair (%r, %r): %r.", a, b, err)
                    answers[key] = None
                if answers[key] is None:
                    logger.warning(
                        "No usable LM answer for the pair (%r, %r); using %s instead.",
                        a,
                        b,
                        type(self.fallback).__name__,
                    )
            if answers[key] is not None:
                commonality, difference = answers[key]
                prompts[(a, b)] = SemanticPrompt(commonality, difference, source=self.source)
            else:
                prompt = self.fallback.generate([(a, b)])[(a, b)]
                prompts[(a, b)] = SemanticPrompt(prompt.commonality, prompt.difference, _fallback_source(prompt))
        num_fallback = sum(prompt.source != self.source for prompt in prompts.values())
        if num_fallback:
            logger.warning("%d of %d pair(s) use fallback prompts instead of the LM's.", num_fallback, len(prompts))
        return prompts


# --------------------------------------------------------------------------------------------------------------
# Class descriptions (ANPrompt): main and noise sentences per class
# --------------------------------------------------------------------------------------------------------------
#
# ANPrompt's description cache is two dicts in the CoPrompt / HPT JSON format, ``{class name: [sentence, ...]}``: the
# *main* sentences (CoPrompt's descriptions, ~50 per class) and the *noise* sentences (HPT's, ~5 per class), one file
# each. The three generators mirror the semantic prompts': an offline template generator, the JSON files, and a local
# LM through the same ``text-generation`` plumbing as [`LMPromptGenerator`].

Descriptions = dict[str, list[str]]

#: Offline noise sentences: the class name in a mildly uncertain or cluttered phrasing (weak semantic noise).
NOISE_DESCRIPTION_TEMPLATES = (
    "a photo of something like a {}.",
    "a photo that may show a {}.",
    "an image, probably of a {}.",
    "a photo of a {} among other things.",
    "a {} or something similar.",
)


def check_descriptions(descriptions: Any, where: str, class_names: Iterable[str] | None = None) -> Descriptions:
    """A description dict checked: string keys, each a non-empty list of non-empty sentences; with `class_names`,
    every class must have sentences (a `SemanticPromptFileError` names those without)."""
    if not isinstance(descriptions, Mapping):
        raise SemanticPromptFileError(f"{where}: expected {{class name: [sentence, ...]}}, got "
                                      f"{type(descriptions).__name__}")
    checked = {}
    for name, sentences in descriptions.items():
        if isinstance(sentences, str):
            sentences = [sentences]
        if not isinstance(sentences, list) or not all(isinstance(x, str) for x in sentences):
            raise SemanticPromptFileError(f"{where}: the sentences of {name!r} must be a list of strings")
        kept = [sentence.strip() for sentence in sentences if sentence.strip()]
        if kept:
            checked[str(name)] = kept
    if class_names is not None:
        missing = [name for name in class_names if name not in checked]
        if missing:
            raise SemanticPromptFileError(f"{where}: no sentences for the classes {missing}")
    return checked


def load_descriptions(path: str | os.PathLike, class_names: Iterable[str] | None = None) -> Descriptions:
    """Read a description file (``{class name: [sentence, ...]}``, CoPrompt / HPT format)."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, ValueError) as err:
        raise SemanticPromptFileError(f"{path}: cannot read a description file ({err})") from None
    return check_descriptions(document, str(path), class_names)


def save_descriptions(descriptions: Descriptions, path: str | os.PathLike) -> None:
    """Write a description file atomically (the format [`load_descriptions`] reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(descriptions, handle, indent=2, ensure_ascii=False)
    os.replace(handle.name, path)


class TemplateDescriptionGenerator:
    """Main and noise sentences from templates, offline. By default the main sentences are the caption templates the
    embedded default's CLIP was pre-trained on (`dataset_scripts.embedded_captions.CAPTION_TEMPLATES`), the noise
    sentences [`NOISE_DESCRIPTION_TEMPLATES`]; the class name is written as in captions (underscores as spaces)."""

    def __init__(self, main_templates: Iterable[str] | None = None, noise_templates: Iterable[str] | None = None):
        if main_templates is None:
            from dataset_scripts.embedded_captions import CAPTION_TEMPLATES

            main_templates = CAPTION_TEMPLATES
        self.main_templates = list(main_templates)
        self.noise_templates = list(noise_templates or NOISE_DESCRIPTION_TEMPLATES)
        for template in self.main_templates + self.noise_templates:
            if template.count("{}") != 1:
                raise ValueError(f"description templates need exactly one '{{}}', got {template!r}")

    def generate(self, class_names: Iterable[str]) -> tuple[Descriptions, Descriptions]:
        names = [str(name) for name in class_names]
        spoken = {name: name.replace("_", " ") for name in names}
        main = {name: [t.format(spoken[name]) for t in self.main_templates] for name in names}
        noise = {name: [t.format(spoken[name]) for t in self.noise_templates] for name in names}
        return main, noise


class JSONDescriptionGenerator:
    """Main and noise sentences from two JSON files (CoPrompt / HPT format). Every requested class needs sentences
    in both: a `SemanticPromptFileError` names the classes without."""

    def __init__(self, main_file: str | os.PathLike, noise_file: str | os.PathLike):
        self.main_file, self.noise_file = main_file, noise_file

    def generate(self, class_names: Iterable[str]) -> tuple[Descriptions, Descriptions]:
        names = list(class_names)
        main = load_descriptions(self.main_file, names)
        noise = load_descriptions(self.noise_file, names)
        return {n: main[n] for n in names}, {n: noise[n] for n in names}


class LMDescriptionGenerator(LMPromptGenerator):
    """Main and noise sentences written by a local causal LM (the `text-generation` plumbing of
    [`LMPromptGenerator`]): one call per class for `num_main` descriptive sentences and one for `num_noise` loosely
    related ones, one sentence a line. A class the LM gives no usable line for falls back to the templates."""

    source = "lm"
    main_prompt = ("Write {count} different short sentences describing what a photo of a {name} shows, one per "
                   "line, each mentioning the word '{name}'. No numbering, no other text.")
    noise_prompt = ("Write {count} different short sentences loosely related to a {name}, with slightly vague or "
                    "partly irrelevant details, one per line, each mentioning the word '{name}'. No numbering.")

    def __init__(self, model_or_pipeline: Any, *, num_main: int = 50, num_noise: int = 5, **kwargs: Any):
        kwargs.setdefault("fallback", None)
        super().__init__(model_or_pipeline, **kwargs)
        self.num_main, self.num_noise = num_main, num_noise
        self.template_fallback = TemplateDescriptionGenerator()

    def _sentences(self, prompt: str, name: str, count: int) -> list[str]:
        text = self._complete([{"role": "user", "content": prompt.format(name=name, count=count)}],
                              max(self.max_new_tokens, 24 * count))
        lines = [re.sub(r"^\s*(?:[-*]|\d+[.)])\s*", "", line).strip() for line in text.splitlines()]
        return [line for line in lines if line and len(line) <= self.max_sentence_chars][:count]

    def generate(self, class_names: Iterable[str]) -> tuple[Descriptions, Descriptions]:
        main, noise = {}, {}
        for name in tqdm(list(class_names), desc="class descriptions", disable=not self.show_progress):
            main[name] = self._sentences(self.main_prompt, name, self.num_main)
            noise[name] = self._sentences(self.noise_prompt, name, self.num_noise)
            fallback_main, fallback_noise = self.template_fallback.generate([name])
            if not main[name] or not noise[name]:
                logger.warning("The LM gave no usable sentences for %r: using the templates for it", name)
                main[name] = main[name] or fallback_main[name]
                noise[name] = noise[name] or fallback_noise[name]
        return main, noise


def get_description_generator(kind: str, description_file: str | None = None,
                              noise_description_file: str | None = None, description_lm: str | None = None,
                              **kwargs: Any):
    """The description generator named by `--description_generator template|json|lm`."""
    if kind == "template":
        return TemplateDescriptionGenerator()
    if kind == "json":
        if not description_file or not noise_description_file:
            raise ValueError("--description_generator json needs --description_file and --noise_description_file")
        return JSONDescriptionGenerator(description_file, noise_description_file)
    if kind == "lm":
        if not description_lm:
            raise ValueError("--description_generator lm needs --description_lm (a local causal LM)")
        return LMDescriptionGenerator(description_lm, **kwargs)
    raise ValueError(f"Unknown description generator {kind!r}; choose one of {list(PROMPT_GENERATORS)}.")


# --------------------------------------------------------------------------------------------------------------
# Factory for the trainer flags
# --------------------------------------------------------------------------------------------------------------

PROMPT_GENERATORS = ("template", "json", "lm")


def get_prompt_generator(kind: str, **kwargs: Any) -> SemanticPromptGenerator:
    """Builds the generator named by `--prompt_generator`.

    Args:
        kind (`str`):
            `"template"`, `"json"` or `"lm"`.
        kwargs:
            Forwarded to the generator's constructor. The trainer's flag names are accepted too: `prompt_file`
            (the `path` of `"json"`) and `prompt_lm` (the `model_or_pipeline` of `"lm"`). `None` values are dropped,
            so unset flags can be passed straight through; a flag of another generator is ignored with a warning.

    Example:

    ```python
    >>> type(get_prompt_generator("template")).__name__
    'TemplatePromptGenerator'
    >>> get_prompt_generator("json", prompt_file="prompts.json", fallback="template")  # doctest: +SKIP
    >>> get_prompt_generator("lm", prompt_lm="/models/local-llm", max_new_tokens=96)  # doctest: +SKIP
    ```
    """
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    for flag, argument, owner in (("prompt_file", "path", "json"), ("prompt_lm", "model_or_pipeline", "lm")):
        if flag in kwargs and kind != owner:  # the trainer passes both flags whichever generator runs
            logger.warning("--%s is only used by --prompt_generator %s, not %s: ignored.", flag, owner, kind)
            del kwargs[flag]
        if flag in kwargs:
            if argument in kwargs:
                raise ValueError(f"Pass either `{flag}` or `{argument}`, not both.")
            kwargs[argument] = kwargs.pop(flag)
    if kind == "template":
        return TemplatePromptGenerator(**kwargs)
    if kind == "json":
        if "path" not in kwargs:
            raise ValueError("--prompt_generator json needs --prompt_file (the JSON file of semantic prompts).")
        return JSONPromptGenerator(**kwargs)
    if kind == "lm":
        if "model_or_pipeline" not in kwargs:
            raise ValueError("--prompt_generator lm needs --prompt_lm (a local causal LM folder or model id).")
        return LMPromptGenerator(**kwargs)
    raise ValueError(f"Unknown prompt generator {kind!r}; choose one of {list(PROMPT_GENERATORS)}.")


__all__ = [
    "NOISE_DESCRIPTION_TEMPLATES",
    "JSONDescriptionGenerator",
    "LMDescriptionGenerator",
    "TemplateDescriptionGenerator",
    "check_descriptions",
    "get_description_generator",
    "load_descriptions",
    "save_descriptions",
    "PROMPT_FILE_VERSION",
    "PROMPT_GENERATORS",
    "JSONPromptGenerator",
    "LMPromptGenerator",
    "SemanticPrompt",
    "SemanticPromptFileError",
    "SemanticPromptGenerator",
    "TemplatePromptGenerator",
    "get_prompt_generator",
    "load_prompts",
    "parse_semantic_answer",
    "prompts_from_entries",
    "save_prompts",
]

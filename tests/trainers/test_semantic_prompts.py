"""Tests for the semantic prompt generators of CAPT's Semantic Confusion Miner (trainers/semantic_prompts.py)."""

import json
import logging
import re

import pytest

from trainers.semantic_prompts import (
    JSONPromptGenerator,
    LMPromptGenerator,
    SemanticPrompt,
    SemanticPromptFileError,
    SemanticPromptGenerator,
    TemplatePromptGenerator,
    get_prompt_generator,
    load_prompts,
    parse_semantic_answer,
    save_prompts,
)
from conftest import REPO_ROOT
from fixtures_lm import tiny_random_lm

LOGGER = "trainers.semantic_prompts"


# ----------------------------------------------------------------------------------------------------------------
# Template generator
# ----------------------------------------------------------------------------------------------------------------


def test_template_generator_writes_both_sentences_from_the_class_names():
    generator = TemplatePromptGenerator()
    prompts = generator.generate([("shirt", "t-shirt"), ("wolf", "husky"), ("shirt", "t-shirt")])

    assert isinstance(generator, SemanticPromptGenerator)
    assert list(prompts) == [("shirt", "t-shirt"), ("wolf", "husky")]  # distinct pairs, first-appearance order
    assert prompts[("shirt", "t-shirt")] == SemanticPrompt(
        commonality="a photo of a shirt or a t-shirt, which look alike.",
        difference="a photo of a shirt, not a t-shirt.",
        source="template",
    )


def test_template_generator_accepts_custom_templates_and_rejects_unknown_fields():
    generator = TemplatePromptGenerator("{a} and {b} share a shape.", "{a} differs from {b}.")
    prompt = generator.generate([["cat", "lynx"]])[("cat", "lynx")]
    assert (prompt.commonality, prompt.difference) == ("cat and lynx share a shape.", "cat differs from lynx.")

    with pytest.raises(ValueError, match="commonality_template"):
        TemplatePromptGenerator(commonality_template="a photo of a {classname}.")
    with pytest.raises(ValueError, match="difference_template"):  # attribute access on a field
        TemplatePromptGenerator(difference_template="a {a.upper}, not a {b}.")
    with pytest.raises(ValueError, match="not a format string"):
        TemplatePromptGenerator(commonality_template="a {a} and {b")


@pytest.mark.parametrize(
    "pairs, message",
    [
        ([("cat", "cat")], "with itself"),
        ([("cat",)], "two non-empty class names"),
        ([("cat", "")], "two non-empty class names"),
        (["cat"], "tuple"),
    ],
)
def test_pairs_are_validated(pairs, message):
    with pytest.raises(ValueError, match=message):
        TemplatePromptGenerator().generate(pairs)


# ----------------------------------------------------------------------------------------------------------------
# JSON format: save / load / JSONPromptGenerator
# ----------------------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    prompts = {
        ("shirt", "t-shirt"): SemanticPrompt("both are upper-body garments.", "a shirt has a collar.", "lm"),
        ("t-shirt", "shirt"): SemanticPrompt("both are tops.", "a t-shirt has no buttons.", "template-fallback"),
        ("crème brûlée", "flan"): SemanticPrompt("both are custards.", "crème brûlée has burnt sugar on top.", "json"),
    }
    path = save_prompts(prompts, tmp_path / "bank" / "semantic_prompts.json", metadata={"generator": "lm"})

    assert load_prompts(path) == prompts
    assert list(load_prompts(path)) == list(prompts)
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["version"] == 1 and document["metadata"] == {"generator": "lm"}
    assert document["pairs"][0] == {
        "classes": ["shirt", "t-shirt"],
        "commonality": "both are upper-body garments.",
        "difference": "a shirt has a collar.",
        "source": "lm",
    }
    assert sorted(p.name for p in path.parent.iterdir()) == ["semantic_prompts.json"]  # no temporary file left


def test_a_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "semantic_prompts.json"
    first = TemplatePromptGenerator().generate([("wolf", "husky")])
    save_prompts(first, path)

    with pytest.raises(TypeError):
        save_prompts(first, path, metadata={"not json": object()})
    assert load_prompts(path) == first
    assert [p.name for p in tmp_path.iterdir()] == ["semantic_prompts.json"]


def _write(tmp_path, text):
    path = tmp_path / "prompts.json"
    path.write_text(text, encoding="utf-8")
    return path


def _entry(**overrides):
    entry = {"classes": ["shirt", "t-shirt"], "commonality": "both are tops.", "difference": "a shirt has a collar."}
    entry.update(overrides)
    return {key: value for key, value in entry.items() if value is not None}


@pytest.mark.parametrize(
    "document, message",
    [
        ('{"pairs": [', r"not valid JSON \(.*line 1, column"),
        ("[]", "the top level must be an object"),
        ("{}", "missing the 'pairs' list"),
        ('{"version": 2, "pairs": []}', "unsupported format version 2"),
        ('{"pairs": [], "pears": []}', r"unknown top-level key\(s\) \['pears'\]"),
        ({"pairs": {"shirt": "t-shirt"}}, "'pairs' must be a list"),
        ({"pairs": [_entry(difference=None)]}, r"pairs\[0\] is missing the field\(s\) \['difference'\]"),
        ({"pairs": [_entry(diference="typo")]}, r"pairs\[0\] has unknown field\(s\) \['diference'\]"),
        ({"pairs": [_entry(classes=["shirt"])]}, r"pairs\[0\]\.classes must be a list of two"),
        ({"pairs": [_entry(classes=["shirt", "shirt"])]}, r"pairs\[0\]\.classes pairs 'shirt' with itself"),
        ({"pairs": [_entry(commonality="  ")]}, r"pairs\[0\]\.commonality must be a non-empty string"),
        ({"pairs": [_entry(), _entry()]}, r"pairs\[1\] repeats the pair \['shirt', 't-shirt'\]"),
    ],
)
def test_load_errors_name_the_file_and_the_problem(tmp_path, document, message):
    path = _write(tmp_path, document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(SemanticPromptFileError, match=re.escape(str(path)) + ": " + message):
        load_prompts(path)
    with pytest.raises(SemanticPromptFileError, match=re.escape(str(path))):
        JSONPromptGenerator(path)  # the generator checks the file when it is built


def test_the_documented_prompt_file_example_loads(tmp_path):
    import os
    import textwrap

    page = os.path.join(REPO_ROOT, "docs", "methods.md")
    text = open(page, encoding="utf-8").read()
    section = text[text.index("## Semantic prompts") :]
    example = textwrap.dedent(re.search(r"```json\n(.*?)```", section, re.S).group(1))
    prompts = load_prompts(_write(tmp_path, example))
    assert list(prompts) == [("shirt", "t-shirt")] and prompts[("shirt", "t-shirt")].source == "me"


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SemanticPromptFileError, match="no such semantic prompt file"):
        load_prompts(tmp_path / "absent.json")


def test_json_generator_lookup_is_order_insensitive_and_exact_order_wins(tmp_path):
    path = _write(
        tmp_path,
        json.dumps(
            {
                "version": 1,
                "pairs": [
                    _entry(),
                    {"classes": ["husky", "wolf"], "commonality": "c1", "difference": "d1", "source": "lm"},
                    {"classes": ["wolf", "husky"], "commonality": "c2", "difference": "d2"},
                ],
            }
        ),
    )
    prompts = JSONPromptGenerator(path).generate([("t-shirt", "shirt"), ("wolf", "husky"), ("husky", "wolf")])

    assert prompts[("t-shirt", "shirt")] == SemanticPrompt("both are tops.", "a shirt has a collar.", "json")
    assert prompts[("wolf", "husky")] == SemanticPrompt("c2", "d2", "json")
    assert prompts[("husky", "wolf")] == SemanticPrompt("c1", "d1", "lm")


def test_json_generator_absent_pair_is_an_error_or_uses_the_fallback(tmp_path, caplog):
    path = _write(tmp_path, json.dumps({"pairs": [_entry()]}))
    with pytest.raises(
        SemanticPromptFileError, match=re.escape(str(path)) + r".*1 requested pair.*'wolf', 'husky'.*fallback"
    ):
        JSONPromptGenerator(path).generate([("shirt", "t-shirt"), ("wolf", "husky")])

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        prompts = JSONPromptGenerator(path, fallback="template").generate([("shirt", "t-shirt"), ("wolf", "husky")])
    assert prompts[("shirt", "t-shirt")].source == "json"
    assert prompts[("wolf", "husky")] == SemanticPrompt(
        "a photo of a wolf or a husky, which look alike.", "a photo of a wolf, not a husky.", "template-fallback"
    )
    assert "('wolf', 'husky')" in caplog.text


def test_json_generator_names_class_names_the_file_spells_otherwise(tmp_path, caplog):
    """A pair is absent because the file spells a class otherwise (case, spaces, a typo): the error says which
    requested class the file never names and what the file has instead."""
    path = _write(tmp_path, json.dumps({"pairs": [_entry(classes=["shirt", "T-Shirt"]),
                                                  _entry(classes=["wolf", "huskey"])]}))
    with pytest.raises(SemanticPromptFileError) as error:
        JSONPromptGenerator(path).generate([("shirt", "t-shirt"), ("husky", "wolf"), ("cat", "wolf")])
    message = str(error.value)
    assert "no prompts for 3 requested pair(s)" in message
    assert "'t-shirt' (did you mean 'T-Shirt'?)" in message and "'husky' (did you mean 'huskey'?)" in message
    assert re.search(r"'cat'(?! \(did)", message) and "'wolf' (" not in message and "'shirt' (" not in message

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        JSONPromptGenerator(path, fallback="template").generate([("shirt", "t-shirt")])
    assert "did you mean 'T-Shirt'?" in caplog.text


# ----------------------------------------------------------------------------------------------------------------
# Factory
# ----------------------------------------------------------------------------------------------------------------


def test_factory_maps_the_trainer_flags(tmp_path):
    path = save_prompts(TemplatePromptGenerator().generate([("a", "b")]), tmp_path / "p.json")

    assert isinstance(get_prompt_generator("template", prompt_file=None, prompt_lm=None), TemplatePromptGenerator)
    generator = get_prompt_generator("json", prompt_file=str(path), prompt_lm=None)
    assert isinstance(generator, JSONPromptGenerator) and generator.path == str(path)
    lm = get_prompt_generator("lm", prompt_lm=ScriptedPipeline(), prompt_file=None, max_new_tokens=7)
    assert isinstance(lm, LMPromptGenerator) and lm.max_new_tokens == 7

    with pytest.raises(ValueError, match="--prompt_file"):
        get_prompt_generator("json")
    with pytest.raises(ValueError, match="--prompt_lm"):
        get_prompt_generator("lm")
    with pytest.raises(ValueError, match="choose one of"):
        get_prompt_generator("gpt")


def test_factory_ignores_the_flag_of_another_generator(tmp_path):
    """The trainer passes --prompt_file and --prompt_lm whatever --prompt_generator is: a flag set for another
    generator (left in a config file, say) must not crash the generator that runs."""
    path = save_prompts(TemplatePromptGenerator().generate([("a", "b")]), tmp_path / "p.json")
    assert isinstance(get_prompt_generator("template", prompt_file=str(path), prompt_lm="some-lm"),
                      TemplatePromptGenerator)
    generator = get_prompt_generator("json", prompt_file=str(path), prompt_lm="some-lm")
    assert isinstance(generator, JSONPromptGenerator) and generator.path == str(path)
    lm = get_prompt_generator("lm", prompt_lm=ScriptedPipeline(), prompt_file=str(path))
    assert isinstance(lm, LMPromptGenerator)


# ----------------------------------------------------------------------------------------------------------------
# Parsing of LM answers
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Commonality: both are dogs.\nDifference: a wolf is larger.", ("both are dogs.", "a wolf is larger.")),
        (
            "Sure!\n**Commonality:** both are dogs.\n- **Difference**: a wolf is larger.\nHope this helps.",
            ("both are dogs.", "a wolf is larger."),
        ),
        (
            "1. commonalities: both are dogs.\n2. DIFFERENCES： a wolf is larger.",
            ("both are dogs.", "a wolf is larger."),
        ),
        ('Commonality:\n  both are dogs.\nDifference:\n"a wolf is larger."', ("both are dogs.", "a wolf is larger.")),
        ("Commonality: both are dogs. Difference: a wolf is larger.", ("both are dogs.", "a wolf is larger.")),
        ("Difference: a wolf is larger.\nCommonality: both are dogs.", ("both are dogs.", "a wolf is larger.")),
        (
            "Commonality: <one sentence>\nCommonality: both are dogs.\nDifference: larger.",
            ("both are dogs.", "larger."),
        ),
        ("Commonality: both are dogs.", None),  # no difference line
        ("The key difference: size. What they have in common: fur.", None),  # labels mid-sentence
        ("Commonality: ...\nDifference: a wolf is larger.", None),  # no words
        ("Commonality: " + "very " * 100 + "alike.\nDifference: size.", None),  # too long
        ("", None),
    ],
)
def test_parse_semantic_answer(text, expected):
    assert parse_semantic_answer(text, max_chars=300) == expected


# ----------------------------------------------------------------------------------------------------------------
# LM generator driven by a scripted fake pipeline
# ----------------------------------------------------------------------------------------------------------------


def _last_user_turn(inputs):
    if isinstance(inputs, list):  # chat messages
        return [m for m in inputs if m["role"] == "user"][-1]["content"]
    return inputs.rsplit("User: ", 1)[-1]


def default_respond(inputs):
    """A well-behaved LM: answers each step of the chain of thought in the expected format."""
    turn = _last_user_turn(inputs)
    if turn.startswith("Describe what a"):
        name = re.match(r"Describe what a (.+?) looks like", turn).group(1)
        return f"A {name} is a furry animal."
    if "reason step by step" in turn:
        return "They share fur and four legs; size separates them."
    a, b = re.search(r"tells a (.+?) from a (.+?)(?:>|\.|$)", turn).groups()
    return f"Commonality: a {a} and a {b} both have fur.\nDifference: a {a} is larger than a {b}.\nUser: more?"


class ScriptedPipeline:
    """Stands in for a text-generation pipeline: records every call and answers with `respond(inputs)`."""

    def __init__(self, respond=default_respond):
        self.respond = respond
        self.calls = []

    def __call__(self, inputs, **kwargs):
        self.calls.append((inputs, kwargs))
        return [{"generated_text": self.respond(inputs)}]


def test_lm_generator_runs_the_chain_of_thought_and_parses_the_answer():
    pipe = ScriptedPipeline()
    prompts = LMPromptGenerator(pipe, max_new_tokens=50, answer_max_new_tokens=20).generate([("wolf", "husky")])

    assert prompts == {
        ("wolf", "husky"): SemanticPrompt(
            "a wolf and a husky both have fur.", "a wolf is larger than a husky.", source="lm"
        )
    }
    (describe_a, kw_a), (describe_b, _), (reasoning, kw_r), (answer, kw_ans) = pipe.calls
    assert "Describe what a wolf looks like" in describe_a and "husky" not in describe_a
    assert "Describe what a husky looks like" in describe_b
    # The reasoning step sees both descriptions and asks why the pair is confused.
    assert "A wolf is a furry animal." in reasoning and "A husky is a furry animal." in reasoning
    assert re.search(
        r"mistakes a photo of a wolf for a photo of a husky.*why they are confused", _last_user_turn(reasoning)
    )
    # The final step sees the reasoning and asks for the two labelled lines.
    assert "They share fur and four legs" in answer
    assert "Commonality:" in _last_user_turn(answer) and "Difference:" in _last_user_turn(answer)
    assert kw_a == {"max_new_tokens": 50, "return_full_text": False, "do_sample": False}  # greedy by default
    assert kw_r["max_new_tokens"] == 50 and kw_ans["max_new_tokens"] == 20


def test_lm_generator_describes_each_class_once_and_reuses_the_reversed_pair():
    pipe = ScriptedPipeline()
    prompts = LMPromptGenerator(pipe, show_progress=False).generate(
        [("wolf", "husky"), ("husky", "wolf"), ("wolf", "fox")]
    )

    described = [_last_user_turn(inputs) for inputs, _ in pipe.calls if _last_user_turn(inputs).startswith("Describe")]
    assert len(described) == 3 and len(pipe.calls) == 3 + 2 * 2
    assert prompts[("husky", "wolf")] == prompts[("wolf", "husky")]
    assert prompts[("wolf", "fox")].difference == "a wolf is larger than a fox."


def test_lm_generator_retries_once_with_a_stricter_prefilled_prompt():
    def respond(inputs):
        turn = _last_user_turn(inputs)
        if turn.startswith("Now summarise"):
            return "Wolves and huskies are both lovely animals."
        if turn.startswith("Reply strictly"):
            assert inputs.endswith("Assistant: Commonality:")  # the answer is prefilled
            return " both have pointed ears.\nDifference: a husky has blue eyes."
        return default_respond(inputs)

    pipe = ScriptedPipeline(respond)
    prompts = LMPromptGenerator(pipe, show_progress=False).generate([("wolf", "husky")])

    assert prompts[("wolf", "husky")] == SemanticPrompt("both have pointed ears.", "a husky has blue eyes.", "lm")
    assert len(pipe.calls) == 5
    strict = _last_user_turn(pipe.calls[-1][0])
    assert "wolf" in strict and "husky" in strict and "at most 300 characters" in strict


@pytest.mark.parametrize(
    "respond",
    [
        lambda inputs: "I cannot help with that.",
        lambda inputs: "",
        lambda inputs: "Commonality: " + "fur " * 200 + "\nDifference: " + "size " * 200,
        lambda inputs: (_ for _ in ()).throw(RuntimeError("CUDA out of memory")),
    ],
    ids=["no-labels", "empty", "too-long", "pipeline-raises"],
)
def test_lm_generator_falls_back_to_templates_without_crashing(respond, caplog):
    pipe = ScriptedPipeline(respond)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        prompts = LMPromptGenerator(pipe, show_progress=False).generate([("wolf", "husky"), ("cat", "lynx")])

    assert prompts == {
        pair: SemanticPrompt(template.commonality, template.difference, "template-fallback")
        for pair, template in TemplatePromptGenerator().generate([("wolf", "husky"), ("cat", "lynx")]).items()
    }
    assert "('wolf', 'husky')" in caplog.text and "('cat', 'lynx')" in caplog.text
    assert "2 of 2 pair(s) use fallback prompts" in caplog.text  # counted, not only logged pair by pair


def test_lm_generator_sends_chat_messages_to_chat_models():
    def respond(messages):
        assert isinstance(messages, list) and all(m["role"] in ("user", "assistant") for m in messages)
        if messages[-1]["role"] == "assistant":  # the stricter retry continues a prefilled answer
            return " both are cats.\nDifference: a lynx has ear tufts."
        if _last_user_turn(messages).startswith("Now summarise"):
            return "no idea"
        return default_respond(messages)

    pipe = ScriptedPipeline(respond)
    prompts = LMPromptGenerator(pipe, use_chat_template=True, show_progress=False).generate([("cat", "lynx")])

    assert prompts[("cat", "lynx")] == SemanticPrompt("both are cats.", "a lynx has ear tufts.", "lm")
    retry_messages, retry_kwargs = pipe.calls[-1]
    assert retry_messages[-1] == {"role": "assistant", "content": "Commonality:"}
    assert retry_kwargs["continue_final_message"] is True
    # The reasoning turn carries both descriptions as earlier assistant turns.
    reasoning_messages = pipe.calls[2][0]
    assert [m["role"] for m in reasoning_messages] == ["user", "assistant", "user", "assistant", "user"]


def test_plain_lm_answers_are_cut_where_the_lm_invents_the_next_turn():
    def respond(inputs):
        if _last_user_turn(inputs).startswith("Describe"):
            return "A striped cat.\nUser: Describe a dog.\nAssistant: A dog barks."
        return default_respond(inputs)

    pipe = ScriptedPipeline(respond)
    LMPromptGenerator(pipe, show_progress=False).generate([("tiger", "cat")])
    reasoning = pipe.calls[2][0]
    assert "A striped cat." in reasoning and "A dog barks" not in reasoning


# ----------------------------------------------------------------------------------------------------------------
# LM generator driven by a tiny random causal LM (real transformers pipeline, offline)
# ----------------------------------------------------------------------------------------------------------------


def test_tiny_random_lm_exercises_the_fallback(caplog):
    model, tokenizer = tiny_random_lm()
    pairs = [("wolf", "husky"), ("cat", "lynx")]
    generator = LMPromptGenerator(model, tokenizer, max_new_tokens=6, answer_max_new_tokens=6)
    assert generator.use_chat_template is False  # no chat template: plain transcript

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        prompts = generator.generate(pairs)

    assert {prompt.source for prompt in prompts.values()} == {"template-fallback"}
    assert prompts[("cat", "lynx")].difference == "a photo of a cat, not a lynx."
    assert "No usable LM answer for the pair ('wolf', 'husky')" in caplog.text
    assert generator.generate(pairs) == prompts  # greedy decoding: same answer twice


# ----------------------------------------------------------------------------------------------------------------
# The trainer's use of the prompts: prepare_bank_and_prompts (mined pairs -> prompts -> T_com / T_dif -> centres)
# ----------------------------------------------------------------------------------------------------------------

PREP_NAMES = ["cat", "dog", "bird", "fish"]


@pytest.fixture
def prep(tiny_clip, tokenizer, tmp_path):
    """A bank of 8 samples over 4 classes (some misclassified), a tiny zero-shot CLIP, and a runner of
    `prepare_bank_and_prompts` with the trainer's argument objects."""
    from types import SimpleNamespace

    import torch

    from modeling_capt import CaptForImageClassification
    from dataset_scripts.bank import CaptConfusionBank

    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    generator = torch.Generator().manual_seed(0)
    probs = torch.randn(8, 4, generator=generator).softmax(-1)
    embeds = torch.randn(8, 16, generator=generator)
    zeroshot = CaptForImageClassification.from_clip(tiny_clip, PREP_NAMES, tokenizer=tokenizer)

    def run(bank=None, **overrides):
        if bank is None:
            bank = CaptConfusionBank.from_tensors(torch.arange(8), labels, probs, embeds, PREP_NAMES)
        args = dict(bank_path=None, bank_base_model=None, k_pairs=2, use_sem=True, pseudo_gt=True,
                    confusion_statistics=True, symmetric_statistics=False, prompt_generator="template",
                    prompt_file=None, prompt_lm=None, mgde_num_clusters=64, confusion_rule="exclude_label")
        args.update(overrides)
        from trainers.methods.capt import prepare_bank_and_prompts

        return prepare_bank_and_prompts(
            SimpleNamespace(is_main_process=True, num_processes=1, device=torch.device("cpu")), SimpleNamespace(**args),
            SimpleNamespace(seed=3, output_dir=str(tmp_path / "out"), per_device_eval_batch_size=8), zeroshot,
            SimpleNamespace(dataset={"label": labels.tolist()}), None, tokenizer, PREP_NAMES, "a photo of a {}.",
            None, bank=bank,
        )

    def mined(bank, k=2):
        from trainers.confusion import confusion_pairs

        return [(PREP_NAMES[a], PREP_NAMES[b]) for a, b in confusion_pairs(bank, k)]

    def embed(texts):
        encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=zeroshot.config.text_length,
                            return_tensors="pt")
        with torch.no_grad():
            return zeroshot.encode_text(encoded["input_ids"], encoded["attention_mask"]).float()

    return SimpleNamespace(run=run, mined=mined, embed=embed, zeroshot=zeroshot, tmp_path=tmp_path,
                           bank=lambda: CaptConfusionBank.from_tensors(torch.arange(8), labels, probs, embeds,
                                                                       PREP_NAMES))


def _same_rows(a, b, atol=1e-5):
    """`a` and `b` hold the same rows, in any order."""
    import torch

    return a.shape == b.shape and bool((torch.cdist(a, b).min(-1).values < atol).all()) and bool(
        (torch.cdist(b, a).min(-1).values < atol).all()
    )


def test_prepare_embeds_the_mined_pairs_prompts_into_the_right_experts(prep):
    """Each mined pair (lower class index first) gets its prompts; the commonality centres are built on the
    L2-normalised features of the commonality prompts and the difference centres on those of the difference prompts
    (with as many clusters as prompts, the centres are the features themselves); the prompts are stored with the
    bank, in memory and on disk."""
    import torch.nn.functional as F

    from dataset_scripts.confusion_bank import load_bank

    bank = prep.bank()
    named = prep.mined(bank)
    out_bank, state = prep.run(bank)

    assert list(state.prompts) == named and len(named) > 2
    assert all(PREP_NAMES.index(a) < PREP_NAMES.index(b) for a, b in named)
    assert state.prompts == TemplatePromptGenerator().generate(named)
    commonality = F.normalize(prep.embed([p.commonality for p in state.prompts.values()]), dim=-1)
    difference = F.normalize(prep.embed([p.difference for p in state.prompts.values()]), dim=-1)
    assert not _same_rows(commonality, difference)
    assert _same_rows(state.commonality_centres, commonality)
    assert _same_rows(state.difference_centres, difference)
    assert state.num_clusters == len(named)

    stored = [{"classes": list(pair), "commonality": p.commonality, "difference": p.difference, "source": "template"}
              for pair, p in state.prompts.items()]
    assert out_bank.semantic_prompts == stored
    assert load_bank(prep.tmp_path / "out" / "confusion_bank").semantic_prompts == stored


def test_prepare_clusters_with_the_runs_seed_and_cluster_count(prep):
    import torch.nn.functional as F

    from trainers.confusion import kmeans

    _, state = prep.run(mgde_num_clusters=2)
    assert state.commonality_centres.shape == state.difference_centres.shape == (2, 16)
    commonality = F.normalize(prep.embed([p.commonality for p in state.prompts.values()]), dim=-1)
    assert _same_rows(state.commonality_centres, kmeans(commonality, 2, seed=3))


def test_prepare_reuses_the_prompts_stored_with_a_bank_for_the_template_generator_only(prep):
    bank = prep.bank()
    named = prep.mined(bank)
    bank.semantic_prompts = [
        {"classes": list(named[0]), "commonality": "stored alike", "difference": "stored apart", "source": "lm"},
        {"classes": ["fish", "nowhere"], "commonality": "unused", "difference": "unused", "source": "lm"},
    ]
    _, state = prep.run(bank)
    assert state.prompts[named[0]] == SemanticPrompt("stored alike", "stored apart", "lm")
    assert all(state.prompts[pair].source == "template" for pair in named[1:])
    assert list(state.prompts) == named  # the stored prompt of a pair that is not mined is dropped
    assert [item["classes"] for item in bank.semantic_prompts] == [list(pair) for pair in named]

    # --prompt_generator json: the file answers every pair, in either order, whatever the bank stores
    bank = prep.bank()
    bank.semantic_prompts = [{"classes": list(named[0]), "commonality": "stored", "difference": "stored"}]
    path = save_prompts({(b, a): SemanticPrompt(f"{b} and {a}", f"{b} not {a}", "json") for a, b in named},
                        prep.tmp_path / "prompts.json")
    _, state = prep.run(bank, prompt_generator="json", prompt_file=str(path))
    assert state.prompts == {(a, b): SemanticPrompt(f"{b} and {a}", f"{b} not {a}", "json") for a, b in named}


def test_prepare_without_sem_anchors_the_experts_on_the_class_prompts(prep):
    import torch.nn.functional as F

    _, state = prep.run(use_sem=False)
    classes = F.normalize(prep.zeroshot.get_class_text_features().detach().float(), dim=-1)
    assert _same_rows(state.commonality_centres, classes) and _same_rows(state.difference_centres, classes)


@pytest.mark.parametrize(
    "stored, message",
    [
        ([{"pair": [0, 1], "commonality": "round", "difference": "red"}], r"pairs\[0\] is missing the field"),
        ([{"classes": ["cat", "dog"], "commonality": "", "difference": "red"}], r"pairs\[0\]\.commonality must be"),
        ([{"classes": ["cat", "dog"], "commonality": "a", "difference": "b"}] * 2, r"pairs\[1\] repeats the pair"),
    ],
)
def test_prepare_refuses_malformed_prompts_stored_with_a_bank(prep, stored, message):
    """The template generator reuses a bank's stored prompts: a malformed entry (another shape, an empty sentence, a
    repeated pair) is a clear error naming the bank, not a KeyError or an empty prompt embedded silently."""
    bank = prep.bank()
    bank.semantic_prompts = stored
    with pytest.raises(SemanticPromptFileError, match=r"the confusion bank \(stored semantic prompts\): " + message):
        prep.run(bank)
    bank.semantic_prompts = stored
    _, state = prep.run(bank, prompt_generator="lm", prompt_lm=ScriptedPipeline())  # not reused: not checked
    assert {prompt.source for prompt in state.prompts.values()} == {"lm"}
    bank.semantic_prompts = stored
    out_bank, state = prep.run(bank, use_sem=False)  # no prompts used: not checked, and kept with the bank
    assert state.prompts == {} and out_bank.semantic_prompts == stored


def test_lm_prompts_are_generated_once_by_the_main_process_of_a_multi_process_run(tmp_path, monkeypatch):
    """With several processes only the main one runs the LM (on the run's device) and shares its prompts through a
    prompt file; the others read them (each used to load its own LM, all onto the pipeline's default device)."""
    from types import SimpleNamespace

    import torch

    from trainers.methods import capt as capt_training

    calls = []

    def fake_generator(kind, **kwargs):
        calls.append((kind, kwargs))
        return SimpleNamespace(generate=lambda pairs: TemplatePromptGenerator().generate(pairs))

    monkeypatch.setattr(capt_training, "get_prompt_generator", fake_generator)
    args = SimpleNamespace(prompt_generator="lm", prompt_file=None, prompt_lm="/models/llm")
    pairs = [("cat", "dog"), ("bird", "fish")]
    expected = TemplatePromptGenerator().generate(pairs)
    waits = []

    def process(main):
        return SimpleNamespace(is_main_process=main, num_processes=2, device=torch.device("cpu"),
                               wait_for_everyone=lambda: waits.append(main))

    assert capt_training.generate_semantic_prompts(process(True), args, str(tmp_path), pairs) == expected
    assert len(calls) == 1 and calls[0][1]["pipeline_kwargs"] == {"device": torch.device("cpu")}
    assert (tmp_path / capt_training.SHARED_LM_PROMPTS).is_file()
    assert capt_training.generate_semantic_prompts(process(False), args, str(tmp_path), pairs) == expected
    assert len(calls) == 1 and waits == [True, False]  # the other process waited, then read; it ran no LM
    single = SimpleNamespace(is_main_process=True, num_processes=1, device=torch.device("cpu"))
    assert capt_training.generate_semantic_prompts(single, args, str(tmp_path / "one"), pairs) == expected
    assert len(calls) == 2 and not (tmp_path / "one").exists()  # one process: no shared file


def test_prompt_features_do_not_depend_on_the_batch_size(prep, tokenizer):
    import torch

    from trainers.methods.capt import _text_features

    texts = [f"a photo of a {name}, not a {other}." for name in PREP_NAMES for other in PREP_NAMES[:2]]
    one_batch = _text_features(prep.zeroshot, tokenizer, texts)
    assert one_batch.shape == (len(texts), 16)
    assert torch.allclose(_text_features(prep.zeroshot, tokenizer, texts, batch_size=3), one_batch, atol=1e-6)


def test_the_centres_reach_the_models_semantic_experts(prep, tiny_clip, tokenizer):
    """What the trainer does with the state: a CAPT model with `num_clusters` centres per expert, each expert set
    from its own centres."""
    import torch

    from modeling_capt import CaptAdapterConfig, CaptForImageClassification

    _, state = prep.run()
    model = CaptForImageClassification.from_clip(
        tiny_clip, PREP_NAMES, tokenizer=tokenizer, adapter_config=CaptAdapterConfig(mgde_num_clusters=state.num_clusters)
    )
    model.init_semantic_experts(state.commonality_centres, state.difference_centres)
    assert torch.equal(model.mgde.commonality_expert.centres, state.commonality_centres)
    assert torch.equal(model.mgde.difference_expert.centres, state.difference_centres)

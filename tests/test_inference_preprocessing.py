"""Text clean-up named in a model's config: pure steps, checked names, and the same text in training and
serving (the labeler applies what the config names, nothing for a model without the key)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from inference.labeler import load_labeler
from inference.model_dir import default_model_dir, read_model_config, serving_version
from inference.preprocessing import (
    DEFAULT_STEPS,
    URL_PLACEHOLDER,
    check_steps,
    html_unescape,
    preprocess,
    url_placeholder,
)
from ingest.decode import has_content


def test_links_become_one_placeholder_word() -> None:
    text = "Exxon beats https://t.co/QPN8Gwl7Uh and www.example.com/x?y=1, see HTTP://A.B/c"
    assert (
        url_placeholder(text) == f"Exxon beats {URL_PLACEHOLDER} and {URL_PLACEHOLDER} see {URL_PLACEHOLDER}"
    )
    assert url_placeholder("no link in https text") == "no link in https text"
    assert url_placeholder("cut off https://t.co/…") == f"cut off {URL_PLACEHOLDER}"


def test_html_entities_are_read_as_characters() -> None:
    assert html_unescape("Exxon &amp; more &gt; 5% &#36;AAPL") == "Exxon & more > 5% $AAPL"
    assert html_unescape("AT&T up") == "AT&T up"  # a bare ampersand stays


def test_steps_apply_in_order_and_leave_the_input_alone() -> None:
    texts = ["A &amp; B https&#58;//t.co/x", "plain"]  # the link shows only once entities are read
    assert preprocess(texts, DEFAULT_STEPS) == [f"A & B {URL_PLACEHOLDER}", "plain"]
    assert preprocess(texts, ("url_placeholder", "html_unescape")) == ["A & B https://t.co/x", "plain"]
    assert preprocess(texts, ()) == texts and texts[0] == "A &amp; B https&#58;//t.co/x"


def test_a_hostile_numeric_reference_is_read_as_unknown_not_raised() -> None:
    # html.unescape raised ValueError on a decimal reference of more than 4,300 digits (int() limit)
    assert html_unescape("&#" + "1" * 4400 + ";x") == "\ufffdx"
    assert html_unescape("&#00000000065;&#x41;&#1114112;") == "AA\ufffd"  # leading zeros are not size
    # ... nor a way round the bound: they made html.unescape raise too (a message with content was then
    # dead-lettered as an unexpected decoder error, and `finsent label` stopped)
    assert html_unescape("up &#" + "0" * 4400 + "65;") == "up A"
    assert html_unescape("&#" + "0" * 4400 + "1114112;&#" + "0" * 4400) == "\ufffd\ufffd"
    assert has_content("&#" + "0" * 4400 + "65;") and not has_content("&#" + "0" * 4400 + ";")


def test_text_of_only_entities_is_blank_as_the_model_reads_it() -> None:
    for blank in ("&nbsp;", "&#8203;", "&#0;", "&#x1;", "&zwnj;&shy;", "&#10;", "&amp;"):
        assert not has_content(blank), blank
    assert has_content("AT&T") and has_content("&#65;") and has_content("&pound;")


def test_unknown_or_repeated_steps_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown preprocessing step\(s\) \['lowercase'\]"):
        check_steps(["url_placeholder", "lowercase"])
    with pytest.raises(ValueError, match="repeat"):
        check_steps(["url_placeholder", "url_placeholder"])


def _copy_with(tmp_path: Path, preprocessing: object) -> Path:
    model = tmp_path / "model"
    shutil.copytree(default_model_dir(), model)
    raw = json.loads((model / "finsent_config.json").read_text(encoding="utf-8"))
    if preprocessing is None:
        raw.pop("preprocessing", None)
    else:
        raw["preprocessing"] = preprocessing
    (model / "finsent_config.json").write_text(json.dumps(raw), encoding="utf-8")
    return model


def test_a_model_trained_with_an_unknown_step_is_not_served(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown preprocessing step"):
        read_model_config(_copy_with(tmp_path, ["strip_emoji"]))
    shutil.rmtree(tmp_path / "model")
    with pytest.raises(ValueError, match="list of step names"):
        read_model_config(_copy_with(tmp_path, "url_placeholder"))


def test_the_shipped_model_names_its_steps_and_the_labeler_applies_them(tmp_path: Path) -> None:
    config = read_model_config(default_model_dir())
    assert config.preprocessing == DEFAULT_STEPS
    labeler = load_labeler(threads=1)
    one, other = "$AAPL beats estimates https://t.co/QPN8Gwl7Uh", "$AAPL beats estimates https://t.co/zz"
    assert labeler.encode([one]).rows == labeler.encode([other]).rows
    assert labeler.encode(["A &amp; B"]).rows == labeler.encode(["A & B"]).rows
    # without the key (a model from before it existed) the text reaches the tokenizer as it is, and the
    # serving version tells the two apart
    plain = read_model_config(_copy_with(tmp_path, None))
    assert plain.preprocessing == ()
    assert serving_version(plain, "cpu") != serving_version(config, "cpu")
    raw = load_labeler(plain.directory, threads=1)
    assert raw.encode([one]).rows != raw.encode([other]).rows


def test_a_comparison_on_another_split_is_refused(tmp_path: Path) -> None:
    from inference.training.export import comparison_problems

    def run(name: str, seed: int, grouped: bool) -> Path:
        directory = tmp_path / name
        directory.mkdir()
        meta = {
            "data": [{"sha256": "abc", "near_copies_grouped": grouped}],
            "training": {"seed": seed, "dev_fraction": 0.1},
        }
        (directory / "train_meta.json").write_text(json.dumps(meta), encoding="utf-8")
        return directory

    mine = run("mine", 13, True)
    assert comparison_problems(mine, {"ablation": run("ablation", 13, True)}) == []
    problems = comparison_problems(mine, {"this model": run("seed", 7, True), "old": run("old", 13, False)})
    assert problems[0] == "'this model' is the card's own row"
    assert any("another seed" in p for p in problems) and any("another split method" in p for p in problems)

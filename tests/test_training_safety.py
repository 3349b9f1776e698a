"""What `finsent train` / `export` / `evaluate` do with a user's own data and paths: an `--out` that is not
theirs to replace, files without usable rows, bare-integer labels, one-class heads, case variants of a
label, bad `--base`, a BOM, a bad byte late in the file, and export's third-party log lines. Each user
error is one line naming the option (and file line), exit 2, found before the long work."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from finsent.cli import main
from inference.datasets import read_labeled_csv
from inference.training.data import duplicate_counts, merge_spellings
from inference.training.export import checkpoint_problems, quiet_third_party
from inference.training.output_dir import output_dir_problem, overlap_problem
from inference.training.prepare import TrainInputError, base_problem, prepare_data
from inference.training.train import TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[1]


def _csv(path: Path, rows: list[tuple[str, str]], *, bom: bool = False) -> Path:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buffer.getvalue().encode())
    return path


def _sentiment_rows(
    names: tuple[str, str, str] = ("negative", "neutral", "positive"),
) -> list[tuple[str, str]]:
    words = ("plunge crash", "meeting update", "soar beat")
    return [(f"Company {i} shares {words[i % 3]} today", names[i % 3]) for i in range(30)]


def _topic_rows() -> list[tuple[str, str]]:
    return [
        (f"Firm {i} {('dividend', 'earnings', 'oil')[i % 3]} news", ("Dividend", "Earnings", "Oil")[i % 3])
        for i in range(30)
    ]


def _cfg(tmp_path: Path, sentiment: Path | None = None, topic: Path | None = None, **kw: Any) -> TrainConfig:
    return TrainConfig(
        sentiment_csv=sentiment or _csv(tmp_path / "s" / "train.csv", _sentiment_rows()),
        topic_csv=topic or _csv(tmp_path / "t" / "train.csv", _topic_rows()),
        out=tmp_path / "ckpt",
        dev_fraction=0.25,
        **kw,
    )


def _checkpoint(path: Path, *, train_rows: int = 20, dev_rows: int = 5) -> Path:
    """A directory `finsent export` takes for a checkpoint (its files exist; nothing is loaded)."""
    (path / "encoder").mkdir(parents=True)
    (path / "heads.pt").write_bytes(b"weights")
    data = [
        {"task": "sentiment", "path": "s.csv", "train_rows": train_rows, "dev_rows": dev_rows},
        {"task": "topic", "path": "t.csv", "train_rows": 20, "dev_rows": 5},
    ]
    (path / "train_meta.json").write_text(json.dumps({"data": data}), encoding="utf-8")
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def _one_line(err: str, command: str) -> str:
    assert err.count("\n") == 1 and err.startswith(f"finsent {command}: ") and "Traceback" not in err, err
    return err


# ---- 1. --out is never a directory of someone else's files -------------------------------------------


def test_out_directory_is_replaced_only_when_it_is_an_earlier_output(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work", encoding="utf-8")
    problem = output_dir_problem(precious, "--out", "checkpoint")
    assert problem is not None and problem.startswith(f"--out {precious}: holds files")
    assert "train_meta.json" in problem
    assert output_dir_problem(precious, "--out", "model") is not None
    assert (precious / "thesis.tex").is_file()

    assert output_dir_problem(tmp_path / "new" / "ckpt", "--out", "checkpoint") is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert output_dir_problem(empty, "--out", "model") is None
    ckpt = _checkpoint(tmp_path / "ckpt")
    assert output_dir_problem(ckpt, "--out", "checkpoint") is None
    assert output_dir_problem(ckpt, "--out", "model") is not None  # a checkpoint is not a model directory
    model = tmp_path / "model"
    model.mkdir()
    (model / "finsent_config.json").write_text("{}", encoding="utf-8")
    assert output_dir_problem(model, "--out", "model") is not None  # the card is missing: not ours
    (model / "model_card.json").write_text("{}", encoding="utf-8")
    assert output_dir_problem(model, "--out", "model") is None


def test_out_that_is_a_file_or_unwritable_is_found_up_front(tmp_path: Path) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("x", encoding="utf-8")
    assert output_dir_problem(a_file, "--out", "checkpoint") == (
        f"--out {a_file}: exists and is not a directory; give a new or empty directory"
    )
    under_file = output_dir_problem(a_file / "ckpt", "--out", "model")
    assert under_file is not None and "is not a directory" in under_file
    proc = output_dir_problem(Path("/proc/finsent-nowhere/ckpt"), "--out", "checkpoint")
    assert proc is not None and proc.startswith("--out /proc/finsent-nowhere/ckpt: cannot write there")
    assert not list(tmp_path.glob(".*probe*"))  # the probe is cleaned up


def test_out_that_cannot_be_replaced_by_a_rename_is_refused_up_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--out .` passed, then the swap after the training failed (EBUSY) and the result was lost; a
    mount point (a container's volume) cannot be renamed either."""
    monkeypatch.chdir(tmp_path)
    for here in (Path("."), Path(".."), tmp_path):
        problem = output_dir_problem(here, "--out", "checkpoint")
        assert problem is not None and "is the current directory or holds it" in problem, here
    assert "is a mount point" in (output_dir_problem(Path("/proc"), "--out", "model") or "")


def test_export_out_may_not_be_or_hold_or_sit_in_the_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "runs" / "ckpt"
    assert "is the checkpoint itself" in (overlap_problem(ckpt, tmp_path / "runs" / "." / "ckpt") or "")
    assert "holds the checkpoint" in (overlap_problem(ckpt, tmp_path / "runs") or "")
    assert "inside the checkpoint" in (overlap_problem(ckpt, ckpt / "model") or "")
    assert overlap_problem(ckpt, tmp_path / "runs" / "model") is None


def test_cli_export_refuses_out_equal_to_checkpoint_and_keeps_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _checkpoint(tmp_path / "ckpt")
    code, err = _run(["export", "--checkpoint", str(ckpt), "--out", str(ckpt)], capsys)
    assert code == 2 and "is the checkpoint itself" in _one_line(err, "export")
    assert sorted(p.name for p in ckpt.iterdir()) == ["encoder", "heads.pt", "train_meta.json"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("keep", encoding="utf-8")
    code, err = _run(["export", "--checkpoint", str(ckpt), "--out", str(other)], capsys)
    assert code == 2 and f"--out {other}: holds files" in _one_line(err, "export")
    assert (other / "a.txt").read_text(encoding="utf-8") == "keep"


def test_cli_train_refuses_out_of_other_files_before_importing_torch(tmp_path: Path) -> None:
    """Checked in a fresh interpreter: the refusal comes before torch is imported (seconds)."""
    cfg = _cfg(tmp_path)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("keep", encoding="utf-8")
    argv = ["train", "--sentiment-data", str(cfg.sentiment_csv), "--topic-data", str(cfg.topic_csv)]
    script = (
        "import json, sys\nfrom finsent.cli import main\n"
        "code = main(json.loads(sys.argv[1]))\nprint(json.dumps([code, 'torch' in sys.modules]))\n"
    )
    for out, expected in ((other, "holds files"), (tmp_path / "notes" / "a.txt", "is not a directory")):
        proc = subprocess.run(
            [sys.executable, "-c", script, json.dumps([*argv, "--out", str(out)])],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert json.loads(proc.stdout) == [2, False], proc.stderr
        assert _one_line(proc.stderr, "train") and expected in proc.stderr
    assert (other / "a.txt").read_text(encoding="utf-8") == "keep"


def test_train_replaces_its_checkpoint_only_when_complete(
    tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference.training import train as train_module
    from inference.training.prepare import TFNS_SENTIMENT_IDS
    from inference.training.train import train

    sentiment = _csv(tmp_path / "s" / "train.csv", [*_sentiment_rows(), ("", "negative")])
    cfg = _cfg(tmp_path, sentiment, base=str(tiny_base), max_steps=1, batch_size=8, max_length=16)
    cfg.progress, cfg.threads, cfg.sentiment_id_map = False, 1, dict(TFNS_SENTIMENT_IDS)
    old = _checkpoint(cfg.out)
    (old / "marker").write_text("the previous run", encoding="utf-8")

    def crash(*args: Any) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the new checkpoint is written

    monkeypatch.setattr(train_module, "write_dev_csvs", crash)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert (old / "marker").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "s", "t"]
    monkeypatch.undo()
    train(cfg)
    assert not (old / "marker").exists() and (cfg.out / "dev_topic.csv").is_file()
    meta = json.loads((cfg.out / "train_meta.json").read_text(encoding="utf-8"))
    assert meta["data"][0]["skipped_rows"] == 1 and meta["data"][0]["duplicate_rows"] == 0
    assert meta["dataset_label_maps"]["sentiment"] == TFNS_SENTIMENT_IDS
    from inference.training.export import _dropped_note

    assert _dropped_note(meta["data"][0]) == ", 1 skipped (empty text or label)"


# ---- 2. no usable rows -------------------------------------------------------------------------------


def test_a_file_without_labeled_rows_stops_training(tmp_path: Path) -> None:
    header_only = _csv(tmp_path / "h" / "train.csv", [])
    with pytest.raises(TrainInputError) as exc:
        prepare_data(_cfg(tmp_path, header_only))
    assert (
        str(exc.value)
        == f"--sentiment-data {header_only}: no labeled rows (0 skipped: an empty text or label)"
    )
    unclosed = tmp_path / "u" / "train.csv"
    unclosed.parent.mkdir()
    unclosed.write_text('text,label\n"hello world,1\nfoo,2\nbar,0\n', encoding="utf-8")
    with pytest.raises(TrainInputError) as exc:
        prepare_data(_cfg(tmp_path, topic=unclosed))
    assert str(exc.value).startswith(f"--topic-data {unclosed}: no labeled rows (1 skipped")
    assert "the quote on line 2 never closes" in str(exc.value)


def test_export_refuses_a_checkpoint_with_an_empty_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _checkpoint(tmp_path / "ckpt", train_rows=0, dev_rows=0)
    assert checkpoint_problems(ckpt) == [
        f"--checkpoint {ckpt}: its sentiment head had 0 training and 0 dev rows (from s.csv): train again "
        "on data with labeled rows"
    ]
    assert checkpoint_problems(_checkpoint(tmp_path / "fine")) == []
    no_dev = _checkpoint(tmp_path / "no-dev", dev_rows=0)
    assert "sentiment head had 20 training and 0 dev rows" in checkpoint_problems(no_dev)[0]
    code, err = _run(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m")], capsys)
    assert code == 2 and "sentiment head had 0 training" in _one_line(err, "export")
    assert not (tmp_path / "m").exists()


# ---- 3. bare-integer sentiment labels need a map, except in the bundled TFNS data ---------------------


def test_integer_labels_need_a_map_outside_the_tfns_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = _sentiment_rows(("0", "1", "2"))  # negative / neutral / positive, the common order
    mine = _csv(tmp_path / "mine" / "train.csv", rows)
    with pytest.raises(TrainInputError) as exc:
        prepare_data(_cfg(tmp_path, mine))
    assert str(exc.value).startswith(f"--sentiment-data {mine}: its labels are numbers (0, 1, 2): say what")
    assert "--sentiment-label-map" in str(exc.value)

    with caplog.at_level(logging.INFO, logger="inference.training.prepare"):
        data = prepare_data(
            _cfg(tmp_path, mine, sentiment_id_map={"0": "negative", "1": "neutral", "2": "positive"})
        )
    assert data.sentiment_labels == ["negative", "neutral", "positive"]
    assert data.sentiment.y[:3] == [0, 1, 2]  # "1" is neutral here, not positive
    assert any(
        "'0' -> negative (10), '1' -> neutral (10), '2' -> positive (10)" in r.getMessage()
        for r in caplog.records
    )

    with pytest.raises(TrainInputError) as exc:
        prepare_data(_cfg(tmp_path, mine, sentiment_id_map={"0": "bad", "1": "Bullish", "2": "neutral"}))
    assert str(exc.value).startswith(
        "--sentiment-label-map: 0=bad: the labels are negative, neutral, positive"
    )
    tfns = _csv(tmp_path / "shared" / "tfns-sentiment" / "train.csv", rows)
    data = prepare_data(_cfg(tmp_path, tfns))
    assert data.sentiment_id_map == {"0": "negative", "1": "positive", "2": "neutral"}
    assert data.sentiment.y[:3] == [0, 2, 1]
    named = prepare_data(_cfg(tmp_path))  # names need no map, and none is stored
    assert named.sentiment_id_map == {} and named.sentiment.y[:3] == [0, 1, 2]


def test_train_help_shows_the_default_label_map(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "0=negative,1=positive,2=neutral" in help_text and "for the bundled TFNS data" in help_text


# ---- 4. one class, labels without rows, case variants --------------------------------------------------


def test_case_and_spacing_variants_are_one_label() -> None:
    labels = ["Earnings"] * 9 + ["earnings"] * 3 + [" Oil  Price"] * 2 + ["oil price"] * 2 + ["Fed"]
    mapping = merge_spellings([label.strip() for label in labels])  # read_labeled_csv strips
    assert mapping["earnings"] == mapping["Earnings"] == "Earnings"
    assert mapping["oil price"] == mapping["Oil  Price"] == "Oil  Price"  # a tie: the first row's spelling
    assert mapping["Fed"] == "Fed"


def test_topic_case_variants_train_as_one_class(tmp_path: Path) -> None:
    rows = [(f"Firm {i} earnings news", "Earnings" if i % 4 else "earnings") for i in range(12)]
    rows += [(f"Firm {i} oil news", "Oil") for i in range(12)]
    data = prepare_data(_cfg(tmp_path, topic=_csv(tmp_path / "t2" / "train.csv", rows)))
    assert data.topic_labels == ["Oil", "Earnings"]
    assert data.topic_map == {"earnings": "Earnings", "Earnings": "Earnings", "Oil": "Oil"}
    rows[1] = (rows[0][0], "earnings")  # the same text under both spellings: a duplicate, not a conflict
    data = prepare_data(_cfg(tmp_path, topic=_csv(tmp_path / "t3" / "train.csv", rows)))
    assert (data.topic.duplicate_rows, data.topic.conflicting_texts) == (1, 0)


def test_a_one_class_head_is_refused_and_an_empty_class_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    positive = _csv(tmp_path / "p" / "train.csv", [(f"shares soar {i}", "positive") for i in range(20)])
    with pytest.raises(TrainInputError) as exc:
        prepare_data(_cfg(tmp_path, positive))
    assert str(exc.value) == (
        f"--sentiment-data {positive}: every labeled row is 'positive'; "
        "a head needs rows of at least two labels"
    )
    two = _csv(
        tmp_path / "two" / "train.csv", [(f"t {i}", ("negative", "positive")[i % 2]) for i in range(20)]
    )
    with caplog.at_level(logging.WARNING, logger="inference.training.prepare"):
        prepare_data(_cfg(tmp_path, two))
    assert [r.getMessage() for r in caplog.records if "no rows labeled" in r.getMessage()] == [
        f"--sentiment-data {two}: no rows labeled 'neutral': the model will never predict it"
    ]


# ---- 6. --base ------------------------------------------------------------------------------------------


def test_base_must_be_a_local_model_directory(tmp_path: Path) -> None:
    assert base_problem("") is None  # the bundled MiniLM
    missing = base_problem(str(tmp_path / "nope"))
    assert missing is not None and missing.startswith(f"--base {tmp_path / 'nope'}: no such directory;")
    assert "not downloaded" in missing
    hub = base_problem("bert-base-uncased")
    assert hub is not None and "no such directory" in hub and "huggingface-cli download" in hub
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (base_problem(str(empty)) or "").startswith(
        f"--base {empty}: not a model directory (no config.json, no tokenizer.json or vocab.txt, no "
    )
    for name in ("config.json", "vocab.txt", "model.safetensors"):
        (empty / name).write_text("{}", encoding="utf-8")
    assert base_problem(str(empty)) is None


def test_cli_train_with_a_bad_base_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _cfg(tmp_path)
    argv = ["train", "--sentiment-data", str(cfg.sentiment_csv), "--topic-data", str(cfg.topic_csv)]
    code, err = _run([*argv, "--out", str(tmp_path / "o"), "--base", "org/some-model"], capsys)
    assert code == 2 and "--base org/some-model: no such directory" in _one_line(err, "train")


# ---- 7. skipped rows and duplicates are counted ---------------------------------------------------------


def test_skipped_and_duplicate_rows_are_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert duplicate_counts(["a", "a", "a", "b", "b", "c"], ["x", "x", "y", "x", "x", "x"]) == (2, 1)
    rows = [
        *_sentiment_rows(),
        ("", "negative"),
        ("text", ""),
        ("Company 0 shares plunge crash today", "positive"),
    ]
    sentiment = _csv(tmp_path / "d" / "train.csv", rows + rows[:2])
    with caplog.at_level(logging.INFO, logger="inference.training.prepare"):
        data = prepare_data(_cfg(tmp_path, sentiment))
    assert (data.sentiment.data.skipped, data.sentiment.duplicate_rows, data.sentiment.conflicting_texts) == (
        2,
        2,
        1,
    )
    assert (
        f"--sentiment-data {sentiment}: skipped 2 rows with an empty text or label; 2 exact duplicate rows; "
        "1 texts with conflicting labels"
    ) in [r.getMessage() for r in caplog.records]


# ---- 8, 9. BOM, a bad byte late in the file, an unknown label -------------------------------------------


def test_a_bom_is_read_and_a_late_bad_byte_names_file_and_line(tmp_path: Path) -> None:
    from finsent.commands.model import _csv_problem

    bom = _csv(tmp_path / "bom.csv", _sentiment_rows(), bom=True)
    assert read_labeled_csv(bom).texts[0] == "Company 0 shares plunge crash today"
    assert _csv_problem(bom, "--sentiment-data", ("text", "label")) is None

    late = tmp_path / "late.csv"
    body = "".join(f"row number {i} with some padding text to pass 8 KB,negative\n" for i in range(300))
    late.write_bytes(b"text,label\n" + body.encode() + b"bad \xff byte,positive\n")
    message = f"{late}: line 302: byte 0xff is not UTF-8; save the file as UTF-8 (CSV UTF-8)"
    with pytest.raises(ValueError) as exc:
        read_labeled_csv(late)
    assert str(exc.value) == message
    assert _csv_problem(late, "--sentiment-data", ("text", "label")) == f"--sentiment-data {message}"


def test_an_unknown_label_names_file_line_and_option(tmp_path: Path) -> None:
    rows = _sentiment_rows()
    rows[4] = ("shares drift", "3")
    sentiment = _csv(tmp_path / "tfns-sentiment" / "train.csv", rows)
    with pytest.raises(TrainInputError) as exc:
        prepare_data(_cfg(tmp_path, sentiment))
    assert str(exc.value) == (
        f"--sentiment-data {sentiment}: line 6: label '3' is none of ['negative', 'neutral', 'positive'], "
        "and --sentiment-label-map (0=negative,1=positive,2=neutral) does not name it"
    )


def test_evaluate_names_file_and_line_of_an_unknown_label() -> None:
    from inference.evaluate import evaluate_texts

    config = SimpleNamespace(dataset_label_maps={}, sentiment_aliases={})
    labeler: Any = SimpleNamespace(sentiment_labels=["negative", "neutral", "positive"], config=config)
    with pytest.raises(ValueError) as exc:
        evaluate_texts(
            labeler, ["a", "b"], ["positive", "up"], "sentiment", source="--data d.csv", lines=[2, 5]
        )
    assert str(exc.value).startswith("--data d.csv: line 5: unknown label 'up'")
    assert str(exc.value).endswith("(map the file's labels with --label-map)")


# ---- 10. export's log: its own lines, not its libraries' ------------------------------------------------


def test_export_quiets_third_party_chatter_and_restores_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        handlers = list(logging.getLogger().handlers)
        before = [list(h.filters) for h in handlers]
        with quiet_third_party():
            logging.getLogger("fusion_base").info("Fused Gelu: 6")
            logging.getLogger("onnx_model").info("Removed 126 nodes")
            logging.warning("Please consider to run pre-processing before quantization. Refer to ...")
            logging.getLogger("onnxruntime.transformers.optimizer").error(
                "There is no gpu for onnxruntime to do optimization."
            )
            logging.getLogger("inference.training.export").info("quantizing int8")
            logging.getLogger("onnx_model").warning("a real warning")
            with warnings.catch_warnings(record=True) as caught:  # keeps the block's filters
                import torch

                warnings.warn("trace may be incorrect", torch.jit.TracerWarning, stacklevel=1)
                warnings.warn("another library's warning", UserWarning, stacklevel=1)
        logging.getLogger("fusion_base").info("after the export")
    got = [(r.name, r.getMessage()) for r in caplog.records]
    assert got == [
        ("inference.training.export", "quantizing int8"),
        ("onnx_model", "a real warning"),
        ("fusion_base", "after the export"),
    ]
    assert [str(w.message) for w in caught] == ["another library's warning"]
    assert [list(h.filters) for h in handlers] == before  # its filter taken off again

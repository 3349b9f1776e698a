"""`finsent export` replaces the model directory only when the new one is complete: an interrupted or
failed export leaves the previous one as it was (it used to be deleted first), leftovers of a killed run
do not break the next one, and onnxruntime's per-tensor root-logger INFO lines stay out of the log."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest

from inference.training.export import quiet_root_info
from inference.training.output_dir import LEFTOVER_AGE_S, staged_directory
from tests.training_helpers import train_tiny


def _model_dir(path: Path, content: str) -> Path:
    path.mkdir(parents=True)
    (path / "model.int8.onnx").write_text(content, encoding="utf-8")
    (path / "finsent_config.json").write_text("{}", encoding="utf-8")
    return path


def _siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name)


def test_interrupted_build_leaves_the_old_directory_and_no_temp(tmp_path: Path) -> None:
    out = _model_dir(tmp_path / "model_out", "old")
    with pytest.raises(KeyboardInterrupt), staged_directory(out) as stage:
        assert stage.parent == out.parent and stage != out and not list(stage.iterdir())
        (stage / "model.int8.onnx").write_text("half", encoding="utf-8")
        raise KeyboardInterrupt  # Ctrl-C in the middle of writing the new files
    assert (out / "model.int8.onnx").read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in out.iterdir()) == ["finsent_config.json", "model.int8.onnx"]
    assert _siblings(out) == []


def test_completed_build_replaces_the_directory(tmp_path: Path) -> None:
    out = _model_dir(tmp_path / "model_out", "old")
    (out / "stale.txt").write_text("from the previous export", encoding="utf-8")
    with staged_directory(out) as stage:
        (stage / "model.int8.onnx").write_text("new", encoding="utf-8")
        assert (out / "model.int8.onnx").read_text(encoding="utf-8") == "old"  # not yet swapped
    assert sorted(p.name for p in out.iterdir()) == ["model.int8.onnx"]
    assert (out / "model.int8.onnx").read_text(encoding="utf-8") == "new"
    assert _siblings(out) == []


def test_build_into_a_missing_directory_and_parent(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "model_out"
    with staged_directory(out) as stage:
        (stage / "model.int8.onnx").write_text("new", encoding="utf-8")
    assert (out / "model.int8.onnx").read_text(encoding="utf-8") == "new"
    assert _siblings(out) == []


def test_failed_swap_puts_the_old_directory_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _model_dir(tmp_path / "model_out", "old")
    real_rename = Path.rename

    def rename(self: Path, target: Path) -> Path:
        if self.name.startswith(".model_out.tmp-"):  # the new directory's move into place
            raise KeyboardInterrupt
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt), staged_directory(out) as stage:
        (stage / "model.int8.onnx").write_text("new", encoding="utf-8")
    assert (out / "model.int8.onnx").read_text(encoding="utf-8") == "old"
    assert _siblings(out) == []


def test_leftovers_of_a_killed_export_do_not_break_the_next(tmp_path: Path) -> None:
    """Leftovers an hour old go; younger ones may be another export's, running now in another container
    (its process invisible here, its pid perhaps this one's): they stay."""
    out = _model_dir(tmp_path / "model_out", "old")
    stale = time.time() - LEFTOVER_AGE_S - 60
    for name, text in ((".model_out.tmp-7-aa", "half"), (".model_out.old-7-bb", "older")):
        os.utime(_model_dir(tmp_path / name, text), (stale, stale))  # killed a while ago
    running = _model_dir(tmp_path / f".model_out.tmp-{os.getpid()}-cc", "half")  # another export, now
    with staged_directory(out) as stage:
        (stage / "model.int8.onnx").write_text("new", encoding="utf-8")
    assert (out / "model.int8.onnx").read_text(encoding="utf-8") == "new"
    assert _siblings(out) == [running.name]


def test_killed_between_the_renames_the_old_directory_comes_back(tmp_path: Path) -> None:
    out = tmp_path / "model_out"
    _model_dir(tmp_path / ".model_out.old-7-aa", "old")  # `out` renamed aside, then SIGKILL
    with pytest.raises(KeyboardInterrupt), staged_directory(out):
        assert (out / "model.int8.onnx").read_text(encoding="utf-8") == "old"
        raise KeyboardInterrupt
    assert (out / "model.int8.onnx").read_text(encoding="utf-8") == "old"
    assert _siblings(out) == []


def test_quiet_root_info_drops_only_the_roots_own_info(caplog: pytest.LogCaptureFixture) -> None:
    named = logging.getLogger("inference.training.export")
    with caplog.at_level(logging.INFO):
        with quiet_root_info():
            logging.info("Quantization parameters for tensor:%s not specified", "x")
            logging.warning("root warning")
            named.info("quantizing int8")
        logging.info("root info after")
    got = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert got == [
        ("root", "WARNING", "root warning"),
        ("inference.training.export", "INFO", "quantizing int8"),
        ("root", "INFO", "root info after"),
    ]
    assert not logging.getLogger().filters


# ---- a real export (a 2-layer encoder trained for 2 steps, as in test_training_pipeline) -----------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    csvs = []
    for task, words in (
        ("sentiment", ("plunge crash", "soar beat", "meeting update")),
        ("topic", ("a", "b", "c")),
    ):
        path = folder / task / "train.csv"
        path.parent.mkdir()
        rows = ["text,label"] + [f"Company {i} shares {words[i % 3]} today,{i % 3}" for i in range(48)]
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
        csvs.append(path)
    return train_tiny(csvs[0], csvs[1], tiny_base, folder / "ckpt")


@pytest.mark.slow
def test_interrupted_export_keeps_the_previous_model_loadable(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from inference import labeler as labeler_module
    from inference.training import export as export_module

    ckpt = tiny_checkpoint
    out = tmp_path / "model_out"
    gate = export_module.NO_QUANTIZATION_GATE
    with caplog.at_level(logging.INFO):
        export_module.export(ckpt, out, fp16=False, gate=gate)
    messages = [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.name == "root" and r.levelno < logging.WARNING]
    assert not logging.getLogger().filters
    for phase in ("exporting fp32 ONNX", "quantizing int8", "parity check on ", "writing ", "exported "):
        assert any(m.startswith(phase) for m in messages), phase
    assert any(m.startswith("exported ") and f" to {out} in " in m for m in messages)
    card = json.loads((out / "model_card.json").read_text(encoding="utf-8"))
    (out / "marker").write_text("the previous export", encoding="utf-8")

    def interrupted(card: dict[str, object]) -> str:
        raise KeyboardInterrupt  # Ctrl-C while the new directory's files are written

    monkeypatch.setattr(export_module, "render_card", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_module.export(ckpt, out, fp16=False, gate=gate)
    assert (out / "marker").is_file() and _siblings(out) == []
    assert json.loads((out / "model_card.json").read_text(encoding="utf-8")) == card
    assert labeler_module.load_labeler(out, threads=1).label(["Company shares soar"])[0].sentiment

    monkeypatch.undo()
    export_module.export(ckpt, out, fp16=False, gate=gate)
    assert not (out / "marker").exists() and _siblings(out) == []
    assert labeler_module.load_labeler(out, threads=1).label(["Company shares soar"])[0].sentiment

"""bench/gpu_payload.py carries bench/gpu.py's payload to a GPU machine in parts; a GPU session has minutes
only, so the packing, the checks on arrival and the detaching of the model files are tested here."""

from __future__ import annotations

import importlib.util
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def gp(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench/gpu_payload.py, loaded as the module `gpu_payload` (a script, not a package), for this test
    only: sys.modules is put back as it was afterwards."""
    spec = importlib.util.spec_from_file_location("gpu_payload", ROOT / "bench" / "gpu_payload.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_payload", module)
    spec.loader.exec_module(module)
    return module


def fake_stage(gp: ModuleType, tmp_path: Path) -> Path:
    wheel = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake/__init__.py", "VALUE = 42\n")
        zf.writestr("fake/libonnxruntime.so.1.30.0", b"\0" * 100)
        zf.writestr("fake-1.0.dist-info/METADATA", "Name: fake\n")
    model, data = tmp_path / "model", tmp_path / "data" / "set"
    model.mkdir()
    data.mkdir(parents=True)
    (model / "model.fp16.onnx").write_bytes(bytes(range(256)) * 40)
    (data / "train.csv").write_text("text\nStocks rally\n")
    stage = tmp_path / "stage"
    gp.stage([wheel], model, tmp_path / "data", stage)
    return stage


def test_stage_unpacks_wheels_without_the_skipped_libraries_and_copies_model_and_data(
    gp: ModuleType, tmp_path: Path
) -> None:
    stage = fake_stage(gp, tmp_path)
    assert (stage / "site" / "fake" / "__init__.py").read_text() == "VALUE = 42\n"
    assert (stage / "site" / "fake-1.0.dist-info" / "METADATA").is_file()
    assert not (stage / "site" / "fake" / "libonnxruntime.so.1.30.0").exists()
    assert (stage / "model" / "model.fp16.onnx").stat().st_size == 256 * 40
    assert (stage / "data" / "set" / "train.csv").is_file()


def test_parts_round_trip_to_the_same_files(gp: ModuleType, tmp_path: Path) -> None:
    stage = fake_stage(gp, tmp_path)
    parts = tmp_path / "parts"
    manifest = gp.pack(stage, parts, 600, "3.12")
    assert manifest["python"] == "3.12"
    sizes = [p["bytes"] for p in manifest["parts"]]
    assert len(sizes) >= 2 and max(sizes) <= 600
    assert sorted(p.name for p in parts.iterdir()) == sorted(
        ["manifest.json", *(f"part{i}" for i in range(len(sizes)))]
    )
    out = tmp_path / "out"
    gp.unpack(parts / "manifest.json", parts, out)
    for f in stage.rglob("*"):
        if f.is_file():
            assert (out / f.relative_to(stage)).read_bytes() == f.read_bytes()


def test_a_missing_or_corrupt_part_is_refused_before_unpacking(gp: ModuleType, tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    gp.pack(fake_stage(gp, tmp_path), parts, 600, "3.12")
    last = sorted(parts.glob("part*"))[-1]
    data = last.read_bytes()
    last.unlink()
    with pytest.raises(SystemExit, match="not received yet: part"):
        gp.unpack(parts / "manifest.json", parts, tmp_path / "out")
    last.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(SystemExit, match="corrupt"):
        gp.unpack(parts / "manifest.json", parts, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_detach_keeps_the_files_but_stops_them_travelling_and_attach_restores_the_index(
    gp: ModuleType, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    (repo / "models").mkdir(parents=True)
    (repo / "models" / "big.onnx").write_bytes(b"\1" * 5000)
    (repo / "code.py").write_text("x = 1\n")
    gp.git(repo, "init", "-q")
    gp.git(repo, "add", ".")
    gp.git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    paths = ["models/big.onnx"]
    assert gp.detached_tree_bytes(repo, paths) == len("x = 1\n")

    gp.detach(repo, paths)
    assert gp.git(repo, "ls-files").split() == ["code.py"]
    assert (repo / "models" / "big.onnx").stat().st_size == 5000
    status = gp.git(repo, "status", "--porcelain", "--untracked-files=all").splitlines()
    assert status == ["D  models/big.onnx"]  # a staged removal, and not untracked: ignored, so it stays here

    gp.attach(repo, paths)
    assert gp.git(repo, "ls-files").split() == ["code.py", "models/big.onnx"]
    assert gp.git(repo, "status", "--porcelain", "--untracked-files=all") == ""

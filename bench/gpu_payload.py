"""Get bench/gpu.py running on a borrowed GPU machine that takes at most 64 MiB per call and has no network.

That machine (see ../.library/device) has Python 3.12, PyTorch with CUDA 13, cuDNN 9 and numpy, but only
the CPU build of onnxruntime, and no pydantic. What bench/gpu.py needs beyond that is about 250 MB once
compressed: onnxruntime-gpu (built for CUDA 13 on PyPI), pydantic and its three dependencies, the shipped
model (fp16 for the GPU, int8 for the CPU comparison) and the labeled texts of ../shared/data. The
repository alone is over 64 MiB because of those model files, so they travel in the payload instead, and
the payload travels in parts, one per call, each copied out of the repository there.

Here (about 3 minutes; downloads from PyPI, writes .whl/parts/, which git ignores):
    python bench/gpu_payload.py build
    python bench/gpu_payload.py detach        # untrack the .onnx files until `attach`: the tree is ~2 MB
Then one device call per part, back to back (the machine is given back after 30 s idle):
    carry [".whl/parts/manifest.json", ".whl/parts/part0"]   command: python3 bench/gpu_payload.py receive 0
    ...
    last part:  python3 bench/gpu_payload.py receive N && python3 bench/gpu_payload.py run
And here again, at once:
    python bench/gpu_payload.py attach        # re-track the .onnx files (never commit while detached)

`build` prints those calls with the real part count. `run` reassembles and checks the parts, unpacks them
under /tmp, puts the machine's NVIDIA libraries on the loader path, runs `bench/gpu.sh`'s script
(bench/gpu.py) with the unpacked model, and copies its output to $OUT/gpu.txt. Standard library only, so
that it runs on the bare GPU machine."""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import site
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ROOT / ".whl" / "parts"
MODEL_DIR = ROOT / "inference" / "models" / "default"
MODEL_FILES = ("model.fp16.onnx", "model.int8.onnx")
DATA_DIR = ROOT.parent / "shared" / "data"
DEVICE_DIR = Path("/tmp/finsent-gpu")
CALL_BYTES = 64 * 1024 * 1024  # what one device call may carry, the repository's tree included
PART_BYTES = 64_000_000  # + the tree with the models detached (~1.7 MB) + the manifest
ORT_GPU = "onnxruntime-gpu==1.30.0"  # PyPI's build for CUDA 13 and cuDNN 9, what the GPU machine has
# Not imported by the Python API: the C API library and the TensorRT provider (11 MB compressed).
SKIP_IN_WHEELS = ("libonnxruntime.so", "libonnxruntime_providers_tensorrt.so")
PYDANTIC = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection")


def download_wheels(dest: Path, python_version: str) -> list[Path]:
    """onnxruntime-gpu and this environment's pydantic versions, as cp3XX manylinux x86-64 wheels."""
    from importlib.metadata import version

    wanted = [ORT_GPU, *(f"{name}=={version(name)}" for name in PYDANTIC)]
    platforms = [f"manylinux_2_{n}_x86_64" for n in (28, 27, 17)] + ["manylinux2014_x86_64"]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", python_version, "--implementation", "cp", "-d", str(dest)]
    for platform in platforms:
        cmd += ["--platform", platform]
    subprocess.run([*cmd, *wanted], check=True)
    return sorted(dest.glob("*.whl"))


def stage(wheels: list[Path], model_dir: Path, data_dir: Path, dest: Path) -> None:
    """`dest/site`: the wheels unpacked (what pip would install, minus SKIP_IN_WHEELS); `dest/model`: the
    model directory with its ONNX files; `dest/data`: the labeled texts (../shared does not travel)."""
    site_dir = dest / "site"
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if not Path(name).name.startswith(SKIP_IN_WHEELS):
                    zf.extract(name, site_dir)
    shutil.copytree(model_dir, dest / "model")
    shutil.copytree(data_dir, dest / "data")


def pack(stage_dir: Path, parts_dir: Path, part_bytes: int, python: str) -> dict[str, object]:
    """`stage_dir` as one tar.xz, cut into parts of at most `part_bytes`; writes `manifest.json` (each part's
    size and sha256, the whole's, and the Python version the wheels are for) and returns it."""
    parts_dir.mkdir(parents=True, exist_ok=True)
    for old in parts_dir.glob("part*"):
        old.unlink()
    whole = parts_dir / "payload.tar.xz"
    with tarfile.open(whole, "w:xz") as tar:
        for child in sorted(stage_dir.iterdir()):
            tar.add(child, arcname=child.name)
    parts: list[dict[str, object]] = []
    digest = hashlib.sha256()
    with whole.open("rb") as f:
        while chunk := f.read(part_bytes):
            name = f"part{len(parts)}"
            (parts_dir / name).write_bytes(chunk)
            digest.update(chunk)
            parts.append({"name": name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    whole.unlink()
    manifest: dict[str, object] = {"python": python, "parts": parts, "sha256": digest.hexdigest()}
    (parts_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def unpack(manifest_path: Path, parts_dir: Path, dest: Path) -> None:
    """Check every part against the manifest, then unpack the whole into `dest`."""
    manifest = json.loads(manifest_path.read_text())
    digest = hashlib.sha256()
    missing = [p["name"] for p in manifest["parts"] if not (parts_dir / p["name"]).is_file()]
    if missing:
        raise SystemExit(f"parts not received yet: {', '.join(missing)}")
    whole = parts_dir / "payload.tar.xz"
    with whole.open("wb") as out:
        for p in manifest["parts"]:
            data = (parts_dir / p["name"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != p["sha256"]:
                raise SystemExit(f"{p['name']} is corrupt (sha256 differs from the manifest)")
            digest.update(data)
            out.write(data)
    if digest.hexdigest() != manifest["sha256"]:
        raise SystemExit("the parts do not add up to the payload (sha256 differs)")
    shutil.rmtree(dest, ignore_errors=True)
    with tarfile.open(whole) as tar:
        tar.extractall(dest, filter="data")
    whole.unlink()


def nvidia_library_dirs() -> list[str]:
    """The lib folders of the NVIDIA pip packages PyTorch brought (CUDA 13's consolidated `nvidia/cu13`
    and cuDNN's `nvidia/cudnn` among them): onnxruntime's CUDA provider loads them by name."""
    dirs: list[str] = []
    for base in site.getsitepackages():
        dirs += sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib")))
    return dirs


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout


def model_paths() -> list[str]:
    return [str((MODEL_DIR / name).relative_to(ROOT)) for name in MODEL_FILES]


def detached_tree_bytes(root: Path, paths: list[str]) -> int:
    """Bytes of the tracked files that still travel once `paths` are detached."""
    tracked = [f for f in git(root, "ls-files", "-z").split("\0") if f and f not in paths]
    return sum((root / f).stat().st_size for f in tracked if (root / f).is_file())


def detach(root: Path, paths: list[str]) -> None:
    """Untrack `paths` and ignore them in .git/info/exclude, so they stay on disk but do not travel."""
    git(root, "rm", "--cached", "-q", *paths)
    exclude = root / ".git" / "info" / "exclude"
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    exclude.write_text("\n".join([*lines, *(f"/{p}" for p in paths if f"/{p}" not in lines)]) + "\n")


def attach(root: Path, paths: list[str]) -> None:
    """Undo `detach`: the files are tracked again and the index matches HEAD for them."""
    exclude = root / ".git" / "info" / "exclude"
    if exclude.exists():
        keep = [line for line in exclude.read_text().splitlines() if line.lstrip("/") not in paths]
        exclude.write_text("\n".join(keep) + "\n" if keep else "")
    git(root, "reset", "-q", "HEAD", "--", *paths)


def build(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="finsent-gpu-") as tmp:
        wheels = download_wheels(Path(tmp) / "wheels", args.python_version)
        stage(wheels, MODEL_DIR, DATA_DIR, Path(tmp) / "stage")
        manifest = pack(Path(tmp) / "stage", PARTS, args.part_bytes, args.python_version)
    parts = manifest["parts"]
    assert isinstance(parts, list)
    tree = detached_tree_bytes(ROOT, model_paths())
    per_call = tree + max(int(p["bytes"]) for p in parts) + (PARTS / "manifest.json").stat().st_size
    print(f"{len(parts)} parts, {sum(int(p['bytes']) for p in parts) / 1e6:.1f} MB in {PARTS}")
    print(f"largest call: {per_call:,} bytes with the {tree:,}-byte detached tree (limit {CALL_BYTES:,})")
    if per_call > CALL_BYTES:
        raise SystemExit("too large for one call: build again with a smaller --part-bytes")
    print("device calls (after `python bench/gpu_payload.py detach`), back to back:")
    for i, p in enumerate(parts):
        command = f"python3 bench/gpu_payload.py receive {i}"
        if i == len(parts) - 1:
            command += " && python3 bench/gpu_payload.py run"
        print(f'  carry [".whl/parts/manifest.json", ".whl/parts/{p["name"]}"]  command: {command}')


def receive(index: int) -> None:
    names = ("manifest.json", f"part{index}")
    absent = [name for name in names if not (PARTS / name).is_file()]
    if absent:
        carry = ", ".join(f'".whl/parts/{name}"' for name in absent)
        raise SystemExit(f"not carried to this machine: {carry} (name them in the call's carry)")
    (DEVICE_DIR / "parts").mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(PARTS / name, DEVICE_DIR / "parts" / name)
    print(f"received part{index}: {sorted(p.name for p in (DEVICE_DIR / 'parts').iterdir())}")


def run(extra: list[str]) -> int:
    manifest = DEVICE_DIR / "parts" / "manifest.json"
    if not manifest.is_file():
        raise SystemExit("no parts on this machine yet: `receive N` each part first (the machine may be new)")
    python = json.loads(manifest.read_text()).get("python")
    if python != f"{sys.version_info.major}.{sys.version_info.minor}":
        raise SystemExit(f"the payload's wheels are for Python {python}, this is {sys.version.split()[0]}")
    unpacked = DEVICE_DIR / "x"
    unpack(manifest, DEVICE_DIR / "parts", unpacked)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(unpacked / "site"), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*nvidia_library_dirs(), env.get("LD_LIBRARY_PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    if shutil.which("nvidia-smi"):
        subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"], check=False
        )
    cmd = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--model", str(unpacked / "model")]
    cmd += ["--data", str(unpacked / "data"), *extra]
    out_dir = Path(os.environ.get("OUT", str(DEVICE_DIR)))
    with (out_dir / "gpu.txt").open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        return proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="verb", required=True)
    b = sub.add_parser("build", help="download, stage, compress and cut the payload into .whl/parts/")
    b.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default 3.12)")
    b.add_argument("--part-bytes", type=int, default=PART_BYTES)
    sub.add_parser("detach", help="untrack the ONNX files so the repository travels (~2 MB)")
    sub.add_parser("attach", help="track the ONNX files again")
    r = sub.add_parser("receive", help="on the GPU machine: keep part N outside the repository")
    r.add_argument("index", type=int)
    sub.add_parser(
        "run", help="on the GPU machine: unpack the parts and run bench/gpu.py (other arguments go to it)"
    )
    args, extra = ap.parse_known_args()
    if extra and args.verb != "run":
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.verb == "build":
        build(args)
    elif args.verb == "detach":
        detach(ROOT, model_paths())
        print("detached: do not commit until `python bench/gpu_payload.py attach`")
    elif args.verb == "attach":
        attach(ROOT, model_paths())
        print("attached: the model files are tracked again")
    elif args.verb == "receive":
        receive(args.index)
    else:
        return run(extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

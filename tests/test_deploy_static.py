"""Static checks of the deployment files that cannot run here (Docker images, compose, Kubernetes): schema,
required fields, and consistency of names, ports, topics and settings with finsent itself."""

from __future__ import annotations

import base64
import inspect
import re
import shutil
import sys
import textwrap
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from finsent.alert_state import STATE_TOPIC_CONFIG, StateStore
from finsent.alert_worker import COMMIT_TIMEOUT_MS as ALERT_COMMIT_TIMEOUT_MS
from finsent.cli import build_parser
from finsent.commands.ops import env_names, setting_docs
from finsent.outputs.kafka_outputs import FLUSH_SLICE_S
from finsent.settings import CLIENT_CLOSE_TIMEOUT_S, LABELER_COMMIT_TIMEOUT_S, Settings
from tests import deploy_support as ds

VALID_ENV = env_names(Settings)
DEFAULTS = Settings()


# ----------------------------------------------------------------------------------------------- helpers


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No FINSENT_ variable of the test process leaks into the settings under test."""
    import os

    for name in list(os.environ):
        if name.startswith("FINSENT_"):
            monkeypatch.delenv(name)
    return monkeypatch


def settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings exactly as finsent would read them from this environment."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def unknown_env_names(names: list[str]) -> list[str]:
    return [n for n in names if n.startswith("FINSENT_") and n not in VALID_ENV]


def sub_commands() -> set[str]:
    parser = build_parser()
    for action in parser._actions:  # argparse keeps sub-parsers here
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            return set(action.choices)
    return set()


def compose() -> dict[str, Any]:
    return ds.load_yaml_docs(ds.COMPOSE_FILE)[0]


def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(ds.K8S_DIR.glob("*.yaml")) for d in ds.load_yaml_docs(p)]


def k8s(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in k8s_docs() if d.get("kind") == kind]


def kafka_topic_partitions() -> dict[str, int]:
    return {t["metadata"]["name"]: int(t["spec"]["partitions"]) for t in k8s("KafkaTopic")}


def configmap_data() -> dict[str, Any]:
    """The ConfigMap's settings file, as it is."""
    (cm,) = [c for c in k8s("ConfigMap") if c["metadata"]["name"] == "finsent-config"]
    data = yaml.safe_load(cm["data"]["config.yaml"])
    assert isinstance(data, dict)
    return data


def image_env(path: Path) -> dict[str, str]:
    """The FINSENT_* variables a Dockerfile's final stage sets with ENV."""
    final = path.read_text(encoding="utf-8").rsplit("\nFROM ", 1)[-1]
    return dict(re.findall(r"\b(FINSENT_\w+)=(\S+)", final))


def configmap_settings_yaml() -> dict[str, Any]:
    """The ConfigMap's settings with the pseudonymization key the labeler Deployment adds from the
    Secret (pseudonymize_authors is on, and needs it)."""
    data = configmap_data()
    (secret,) = k8s("Secret")
    data.setdefault("pipeline", {})["pseudonymize_key"] = secret["stringData"]["pseudonymize-key"]
    return data


def containers(deployment: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(deployment["spec"]["template"]["spec"]["containers"])


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def walk_keys(data: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(data, dict):
        for k, v in data.items():
            yield (*path, str(k))
            yield from walk_keys(v, (*path, str(k)))


# ------------------------------------------------------------------------------------- settings helper


def test_env_name_helper_knows_nested_fields_and_rejects_typos() -> None:
    assert "FINSENT_KAFKA__BOOTSTRAP_SERVERS" in VALID_ENV
    assert "FINSENT_ALERTS__NOTIFIERS__ALERTMANAGER__URL" in VALID_ENV
    assert "FINSENT_METRICS" in VALID_ENV  # a whole section, as JSON
    assert unknown_env_names(["FINSENT_KAFKA_BOOTSTRAP_SERVERS", "FINSENT_METRICS__HOST", "PATH"]) == [
        "FINSENT_KAFKA_BOOTSTRAP_SERVERS"
    ]


# ------------------------------------------------------------------------------------------ Dockerfiles


def _stages(dockerfile: Path) -> list[str]:
    return re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(encoding="utf-8"), flags=re.MULTILINE)


@pytest.mark.parametrize(
    "path", [ds.REPO_ROOT / "Dockerfile", ds.DEPLOY / "Dockerfile.gpu"], ids=["cpu", "gpu"]
)
def test_dockerfile_is_multi_stage_non_root_and_bakes_the_model(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert len(_stages(path)) >= 2, "multi-stage build expected"
    assert "COPY --from=build /opt/finsent /opt/finsent" in text
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"0", "root"}, "the final stage must not run as root"
    assert not re.search(r"pip install[^\n]*\s-e\s", text), "the package must be copied in, not linked"
    assert "models' / 'default'" in text and "*.onnx" in text, "the build must fail without the model"
    assert re.search(r'^ENTRYPOINT \["finsent"\]', text, flags=re.MULTILINE)
    assert re.search(r'^CMD \["run"\]', text, flags=re.MULTILINE)
    assert f"EXPOSE {DEFAULTS.metrics.port}" in text
    assert "FINSENT_METRICS__HOST=0.0.0.0" in text
    assert "/healthz" in text
    for image in re.findall(r"^(?:FROM|ARG \w+_IMAGE=)\s*(\S+)", text, flags=re.MULTILINE):
        assert not image.endswith(":latest"), image
    assert "run" in sub_commands()


def test_cpu_image_is_slim_and_gpu_image_uses_cuda_and_the_gpu_extra() -> None:
    cpu = (ds.REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    gpu = (ds.DEPLOY / "Dockerfile.gpu").read_text(encoding="utf-8")
    assert "-slim" in cpu and "pip install ." in cpu
    assert "nvidia/cuda:" in gpu and "cudnn" in gpu
    assert "pip install '.[gpu]'" in gpu
    assert "pip uninstall -y onnxruntime" in gpu, "onnxruntime and onnxruntime-gpu must not both be installed"
    assert "CUDAExecutionProvider" in gpu
    assert "FINSENT_MODEL__DEVICE=cuda" in gpu
    pyproject = tomllib.loads((ds.REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "gpu" in pyproject["project"]["optional-dependencies"]
    package_data = pyproject["tool"]["setuptools"]["package-data"]["*"]
    assert "*.onnx" in package_data and "*.json" in package_data, "the model must ship in the wheel"


# CUDA major version each range of PyPI's onnxruntime-gpu is built for (from the wheels' METADATA and the
# CUDA provider's NEEDED libraries: 1.26.0 needs the -cu12 packages, 1.27.0 on the CUDA 13 ones).
ORT_GPU_CUDA_13_FROM = (1, 27)


def test_gpu_image_pairs_its_cuda_version_with_the_onnxruntime_gpu_built_for_it() -> None:
    """onnxruntime-gpu for CUDA 13 in a CUDA 12 image lists the CUDA provider but cannot load it: the GPU
    would be unusable. The defaults must pair up, and the build must check the provider's libraries."""
    gpu = (ds.DEPLOY / "Dockerfile.gpu").read_text(encoding="utf-8")
    image = re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.[\w.-]*cudnn", gpu, flags=re.MULTILINE)
    spec = re.search(r'^ARG ONNXRUNTIME_GPU="onnxruntime-gpu>=(\d+)\.(\d+)[^"]*"', gpu, flags=re.MULTILINE)
    assert image and spec, "Dockerfile.gpu must set CUDA_IMAGE and ONNXRUNTIME_GPU"
    built_for = 13 if (int(spec[1]), int(spec[2])) >= ORT_GPU_CUDA_13_FROM else 12
    assert int(image[1]) == built_for, f"CUDA {image[1]} image, onnxruntime-gpu for CUDA {built_for}"
    assert 'pip install --no-deps "${ONNXRUNTIME_GPU}"' in gpu
    assert "ldd " in gpu and "libonnxruntime_providers_cuda.so" in gpu and "not found" in gpu


def test_the_image_build_context_makes_a_wheel_with_the_default_model(tmp_path: Path) -> None:
    """What the Dockerfile does: copy its COPY sources, `pip install .` -> the model must be in the wheel."""
    dockerfile = (ds.REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    src = tmp_path / "src"
    src.mkdir()
    for line in re.findall(r"^COPY (?!--)(.+)$", dockerfile, flags=re.MULTILINE):
        *sources, _dest = line.split()
        for source in sources:
            path = ds.REPO_ROOT / source
            if path.is_dir():
                shutil.copytree(path, src / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(path, src / source)
    result = ds.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            ".",
        ],
        cwd=src,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("finsent-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    model = [n for n in names if n.startswith("inference/models/default/")]
    assert "inference/models/default/finsent_config.json" in model, "no model in inference/models/default/"
    assert any(n.endswith(".onnx") for n in model)
    assert not any(n.startswith(("tests/", "deploy/")) for n in names)


def test_dockerignore_keeps_the_build_context_small() -> None:
    lines = (ds.REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert lines[lines.index("*")] == "*", "allow-list: ignore everything, then re-include"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "finsent", "ingest", "inference", "alerts"} <= allowed
    assert not allowed & {".venv", "tests", "data", ".git"}
    for copied in re.findall(
        r"^COPY (?!--)(\S+)", (ds.REPO_ROOT / "Dockerfile").read_text(), flags=re.MULTILINE
    ):
        assert copied.rstrip("/") in allowed, f"COPY {copied} is excluded by .dockerignore"


# -------------------------------------------------------------------------------------------- compose


def test_compose_runs_the_whole_stack() -> None:
    services = compose()["services"]
    assert set(services) >= {
        "kafka",
        "kafka-init",
        "elasticsearch",
        "finsent",
        "finsent-alerts",
        "prometheus",
        "alertmanager",
        "grafana",
    }
    kafka_env = services["kafka"]["environment"]
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"] and "broker" in kafka_env["KAFKA_PROCESS_ROLES"]
    assert not any("zookeeper" in name.lower() for name in services)
    assert not any("ZOOKEEPER" in k for k in kafka_env)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    cluster_id = kafka_env["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, "CLUSTER_ID must be a base64url UUID"
    es = services["elasticsearch"]
    assert re.match(r"docker\.elastic\.co/elasticsearch/elasticsearch:8\.", es["image"])
    assert es["environment"]["discovery.type"] == "single-node"
    commands = {services[name]["command"][0] for name in ("finsent", "finsent-alerts")}
    assert commands == {"run", "alerts"}
    assert commands <= sub_commands(), f"finsent has no sub-command {commands - sub_commands()}"


def _finsent_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose()["services"].items() if s.get("image", "").startswith("finsent")}


def test_compose_finsent_env_names_are_settings_fields(clean_env: pytest.MonkeyPatch) -> None:
    for name, service in _finsent_services().items():
        env = {k: str(v) for k, v in service["environment"].items()}
        assert not unknown_env_names(list(env)), f"{name}: unknown settings {unknown_env_names(list(env))}"
        settings = settings_from(env, clean_env)
        assert settings.metrics.host == "0.0.0.0"
        assert settings.kafka.bootstrap_servers == "kafka:9092"
        assert settings.elasticsearch.url == "http://elasticsearch:9200"
        for k in env:
            clean_env.delenv(k)


def test_compose_tracks_the_same_tickers_as_kubernetes(clean_env: pytest.MonkeyPatch) -> None:
    """Without pipeline.metrics_tickers every ticker is counted as `other`: the ticker spike rule and the
    sentiment dashboard's tracked-tickers panel would never show anything."""
    tracked = Settings.model_validate(configmap_settings_yaml()).pipeline.metrics_tickers
    assert tracked and "other" not in tracked
    labeler = compose()["services"]["finsent"]
    settings = settings_from({k: str(v) for k, v in labeler["environment"].items()}, clean_env)
    assert settings.pipeline.metrics_tickers == tracked


def test_compose_ports_and_scrape_targets_agree() -> None:
    services = compose()["services"]
    prometheus = ds.load_yaml_docs(ds.DEPLOY / "prometheus" / "prometheus.yml")[0]
    # the scaled workers are found by DNS (every replica), the rest are static
    discovered = {
        job["job_name"]: (sd["names"], str(sd["port"]))
        for job in prometheus["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
    }
    expected = {"finsent-labeler": "finsent", "finsent-alerts": "finsent-alerts"}
    for job, service in expected.items():
        names, port = discovered[job]
        assert names == [service] and service in services
        assert port == str(services[service]["environment"]["FINSENT_METRICS__PORT"])
        assert port in [str(p) for p in services[service]["expose"]]
    am_target = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0]
    assert am_target.split(":")[0] in services and am_target.endswith(":9093")
    assert "127.0.0.1:9093:9093" in services["alertmanager"]["ports"]
    for name, service in services.items():  # a local stack: nothing published beyond this machine
        for published in service.get("ports", []):
            assert str(published).startswith("127.0.0.1:"), f"{name}: {published}"
    kafka_env = services["kafka"]["environment"]
    boot = services["finsent"]["environment"]["FINSENT_KAFKA__BOOTSTRAP_SERVERS"]
    assert f"PLAINTEXT://{boot}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]


def test_compose_mounts_exist_and_provisioning_is_wired() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ds.DEPLOY / source).exists(), f"{name}: {source} does not exist"
        build = service.get("build")
        if build:
            assert (ds.DEPLOY / build["context"] / build["dockerfile"]).is_file()
    for secret in compose()["secrets"].values():
        assert (ds.DEPLOY / secret["file"]).is_file()
    # Prometheus reads deploy/prometheus as /etc/prometheus
    prom = services["prometheus"]
    assert "./prometheus:/etc/prometheus:ro" in prom["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    # Alertmanager's secret files are where alertmanager.yml reads them
    am_cfg = ds.load_yaml_docs(ds.DEPLOY / "alertmanager" / "alertmanager.yml")[0]["global"]
    targets = {s["target"] for s in services["alertmanager"]["secrets"]}
    assert {am_cfg["slack_api_url_file"], am_cfg["smtp_auth_password_file"]} <= targets
    # Grafana: provisioning and dashboards where the provider looks
    graf = services["grafana"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in graf["volumes"]
    provider = ds.load_yaml_docs(ds.DEPLOY / "grafana" / "provisioning" / "dashboards" / "finsent.yaml")[0]
    path = provider["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{path}:ro" in graf["volumes"]
    # datasources point at compose services and their ports
    for source in ds.datasources().values():
        host, port = re.fullmatch(r"https?://([\w-]+):(\d+)", source["url"]).groups()  # type: ignore[union-attr]
        assert host in services, source["url"]
        published = [p.split(":")[-1] for p in services[host].get("ports", [])]
        assert port in published, source["url"]


def commented_sources_job() -> dict[str, Any]:
    """The `finsent-sources` scrape job that deploy/prometheus/prometheus.yml ships commented out (compose
    does not run `finsent sources`), uncommented."""
    lines = (ds.DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8").splitlines()
    start = lines.index("  # - job_name: finsent-sources")
    block = []
    for line in lines[start:]:
        if not re.match(r"  # [- ] ", line):
            break
        block.append("  " + line[4:])
    (job,) = yaml.safe_load("\n".join(block))
    assert isinstance(job, dict)
    return job


def documented_compose_with_sources() -> dict[str, Any]:
    """deploy/compose.yaml with the `finsent-sources` service docs/operations.md tells you to add."""
    text = (ds.REPO_ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "finsent-sources:" in b]
    service = textwrap.indent(textwrap.dedent(block), "  ")
    compose_text = ds.COMPOSE_FILE.read_text(encoding="utf-8")
    assert "\nservices:\n" in compose_text
    with_sources = compose_text.replace("\nservices:\n", "\nservices:\n" + service, 1)
    data = yaml.safe_load(with_sources)
    assert "`sources-state:`" in text, "the docs must say to declare the named volume"
    data["volumes"]["sources-state"] = None
    return dict(data)


def test_compose_does_not_run_sources_and_prometheus_does_not_scrape_them() -> None:
    """No `finsent sources` service in compose: an active scrape job for it would find nothing (or fail
    its DNS lookups), so it ships commented out, and the docs say how to turn both on."""
    assert "finsent-sources" not in compose()["services"]
    prometheus = ds.load_yaml_docs(ds.DEPLOY / "prometheus" / "prometheus.yml")[0]
    assert "finsent-sources" not in {job["job_name"] for job in prometheus["scrape_configs"]}
    assert commented_sources_job()["job_name"] == "finsent-sources"


def test_documented_compose_sources_service_is_found_by_the_commented_scrape_job(
    clean_env: pytest.MonkeyPatch,
) -> None:
    services = documented_compose_with_sources()["services"]
    service = services["finsent-sources"]
    assert service["command"][0] == "sources" and "sources" in sub_commands()
    assert service["image"] == services["finsent"]["image"]
    env = {k: str(v) for k, v in service["environment"].items()}
    assert not unknown_env_names(list(env)), unknown_env_names(list(env))
    settings = settings_from(env, clean_env)
    mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    assert str(settings.sources.config_file) in mounts, "the sources file must be mounted where it is read"
    # the state must survive restarts and be writable: a named volume on the image user's home directory
    # (a new volume copies the ownership of the directory it is mounted on)
    dockerfile = (ds.REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    home = re.findall(r"^WORKDIR\s+(\S+)", dockerfile, flags=re.MULTILINE)[-1]
    assert f"--home-dir {home} --create-home" in dockerfile
    assert mounts.get(home) == "sources-state"
    assert Path(settings.sources.state_dir).is_relative_to(home)
    grace_s = float(re.fullmatch(r"(\d+)s", service["stop_grace_period"])[1])  # type: ignore[index]
    assert grace_s >= settings.sources.flush_timeout_s + CLOSE_MARGIN_S
    # what the commented-out scrape job looks up (every replica, by DNS, like the other workers)
    job = commented_sources_job()
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["finsent-sources"] and sd["type"] == "A"
    assert str(sd["port"]) == str(settings.metrics.port)
    assert str(sd["port"]) in [str(p) for p in service["expose"]]
    # its job name is the one the docs and the rule tests use, and FinsentWorkerDown's job=~"finsent-.*"
    (down,) = [r for r in ds.rules() if r.name == "FinsentWorkerDown"]
    assert 'job=~"finsent-.*"' in down.expr and re.fullmatch("finsent-.*", job["job_name"])


def _compose_partitions() -> dict[str, int]:
    script = compose()["services"]["kafka-init"]["command"][0]
    return {t: int(p) for t, p in re.findall(r"--topic (\S+) --partitions (\d+)", script)}


def test_compose_creates_finsent_topics_like_kubernetes_does() -> None:
    partitions = _compose_partitions()
    names = {
        *DEFAULTS.pipeline.input_topics,
        DEFAULTS.pipeline.labeled_topic,
        DEFAULTS.pipeline.dead_letter_topic,
        DEFAULTS.alerts.state_topic,
    }
    assert set(partitions) == names
    assert partitions == kafka_topic_partitions()


def test_compose_and_kubernetes_create_the_state_topic_with_the_workers_compaction_settings() -> None:
    """Kafka never compacts a topic's active segment: the state topic must roll its segments early (as
    STATE_TOPIC_CONFIG does), or every save stays in its log and a restore reads all of them."""
    state_topic = DEFAULTS.alerts.state_topic
    script = compose()["services"]["kafka-init"]["command"][0]
    (line,) = [ln for ln in script.splitlines() if f"--topic {state_topic} " in ln]
    compose_cfg = dict(re.findall(r"--config (\S+?)=(\S+)", line))
    (topic,) = [t for t in k8s("KafkaTopic") if t["metadata"]["name"] == state_topic]
    k8s_cfg = {k: str(v) for k, v in topic["spec"]["config"].items()}
    assert compose_cfg == STATE_TOPIC_CONFIG
    assert k8s_cfg == STATE_TOPIC_CONFIG
    assert STATE_TOPIC_CONFIG["cleanup.policy"] == "compact"
    assert int(STATE_TOPIC_CONFIG["segment.ms"]) <= 15 * 60 * 1000
    # a segment holds at least a few of the largest records, and stays far below the 1 GiB default
    assert (
        4 * int(STATE_TOPIC_CONFIG["max.message.bytes"]) <= int(STATE_TOPIC_CONFIG["segment.bytes"]) <= 2**27
    )
    assert 0 < float(STATE_TOPIC_CONFIG["min.cleanable.dirty.ratio"]) <= 0.25
    assert int(STATE_TOPIC_CONFIG["delete.retention.ms"]) >= 10 * 60 * 1000


# -------------------------------------------------------------------------------------------- kubernetes


def test_k8s_manifests_have_required_fields_and_kustomization_lists_them() -> None:
    for path, doc in k8s_docs():
        assert doc.get("apiVersion") and doc.get("kind"), path.name
        if doc["kind"] != "Kustomization":
            assert doc["metadata"].get("name"), path.name
    (kustomization,) = [d for _, d in k8s_docs() if d["kind"] == "Kustomization"]
    listed = set(kustomization["resources"])
    # secret.yaml holds placeholders: applied with the rest, it would overwrite the real Secret
    not_listed = {"kustomization.yaml", "kafka-topics.yaml", "secret.yaml"}
    files = {p.name for p in ds.K8S_DIR.glob("*.yaml")} - not_listed
    assert listed == files
    for _, doc in k8s_docs():
        if doc["kind"] == "Deployment":  # KEDA scales them: a replicas field would reset them on apply
            assert "replicas" not in doc["spec"], doc["metadata"]["name"]
    kinds = {d["kind"] for _, d in k8s_docs()}
    assert kinds >= {
        "Deployment",
        "ConfigMap",
        "Secret",
        "Service",
        "ServiceMonitor",
        "PodDisruptionBudget",
        "ScaledObject",
        "KafkaTopic",
    }


def test_k8s_config_map_is_valid_settings_without_secrets(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = configmap_data()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    # the only secret it needs comes from the Secret, as the labeler Deployment passes it; the image's
    # environment completes it
    env = {"FINSENT_CONFIG": str(config), "FINSENT_PIPELINE__PSEUDONYMIZE_KEY": "from-the-secret"}
    env.update(image_env(ds.REPO_ROOT / "Dockerfile"))
    settings = settings_from(env, clean_env)
    assert settings.metrics.host == "0.0.0.0" and settings.pipeline.pseudonymize_authors
    secret_paths = {tuple(d.path.split(".")) for d in setting_docs(Settings) if d.secret}
    assert not secret_paths & set(walk_keys(data)), "secrets belong in the Secret, not the ConfigMap"


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "deploy/Dockerfile.gpu"])
def test_the_config_map_sets_nothing_the_images_environment_would_override(dockerfile: str) -> None:
    """Environment variables rank above the settings file: a key the image sets with ENV and the
    ConfigMap sets too would be overridden silently (metrics.port edited here and never taking effect)."""
    baked = {
        tuple(name.removeprefix("FINSENT_").lower().split("__"))
        for name in image_env(ds.REPO_ROOT / dockerfile)
    }
    assert baked, f"{dockerfile} sets no FINSENT_* variable: is the parser still right?"
    assert not baked & set(walk_keys(configmap_data()))


def test_k8s_deployments_selectors_ports_probes_and_env(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    deployments = {d["metadata"]["name"]: d for d in k8s("Deployment")}
    assert set(deployments) == {"finsent-labeler", "finsent-alerts"}
    (secret,) = k8s("Secret")
    secret_keys = set(secret["stringData"])
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(configmap_data()))  # each Deployment's env must complete it
    for name, dep in deployments.items():
        template = dep["spec"]["template"]
        assert matches(dep["spec"]["selector"]["matchLabels"], template["metadata"]["labels"]), name
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        (container,) = containers(dep)
        assert container["args"][0] in sub_commands(), (
            f"{name}: finsent has no sub-command {container['args'][0]}"
        )
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        env = {e["name"]: e for e in container["env"]}
        assert not unknown_env_names(list(env)), f"{name}: {unknown_env_names(list(env))}"
        for e in env.values():
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and not ref.get("optional"):
                assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret_keys, e["name"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert env["FINSENT_CONFIG"]["value"] == f"{mounts['config']}/config.yaml"
        # what the kubelet would put in: a secret's text, the CPU request in whole CPUs
        values = {}
        for k, e in env.items():
            field_ref = e.get("valueFrom", {}).get("resourceFieldRef")
            if field_ref:  # e.g. requests.cpu: the container must set it
                kind, resource = field_ref["resource"].split(".")
                assert resource in container["resources"][kind], k
            values[k] = e.get("value", "1" if field_ref else "x")
        values["FINSENT_CONFIG"] = str(config)
        settings = settings_from(values, clean_env)
        assert settings.metrics.port == ports["metrics"]
        for k in values:
            clean_env.delenv(k)
        for volume in pod["volumes"]:
            if "secret" in volume:
                assert {i["key"] for i in volume["secret"]["items"]} <= secret_keys
        tls_files = {str(settings.kafka.ssl_cafile), str(settings.elasticsearch.ca_certs)}
        tls_volume = next(v for v in pod["volumes"] if v["name"] == "tls")
        assert tls_files == {f"{mounts['tls']}/{i['path']}" for i in tls_volume["secret"]["items"]}


def test_slack_switched_on_in_the_config_map_leaves_the_labelers_starting(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The ConfigMap is shared; the Slack secret goes to the alert workers only (alerts.yaml, optional).
    Turning Slack on stopped every labeler at start (the webhook URL was checked where nothing sends)."""
    data = configmap_data()
    data.setdefault("alerts", {}).setdefault("notifiers", {})["slack"] = {"enabled": True}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    deployments = {d["metadata"]["name"]: d for d in k8s("Deployment")}
    (alerts,) = containers(deployments["finsent-alerts"])
    (slack_ref,) = [
        e["valueFrom"]["secretKeyRef"]
        for e in alerts["env"]
        if e["name"] == "FINSENT_ALERTS__NOTIFIERS__SLACK__WEBHOOK_URL"
    ]
    (secret,) = k8s("Secret")
    assert slack_ref["key"] in secret["stringData"]
    (labeler,) = containers(deployments["finsent-labeler"])
    values = {e["name"]: e.get("value", "1") for e in labeler["env"]}
    assert "FINSENT_ALERTS__NOTIFIERS__SLACK__WEBHOOK_URL" not in values
    values["FINSENT_CONFIG"] = str(config)
    settings = settings_from(values, clean_env)
    assert not settings.alerts.enabled
    assert settings.alerts.notifiers.missing_credentials() == ["alerts.notifiers.slack.webhook_url"]


def test_k8s_services_pdbs_and_service_monitor_select_the_pods() -> None:
    deployments = k8s("Deployment")
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in deployments]
    for service in k8s("Service"):
        selected = [
            d
            for d, labels in zip(deployments, pod_labels, strict=True)
            if matches(service["spec"]["selector"], labels)
        ]
        assert len(selected) == 1, service["metadata"]["name"]
        assert selected[0]["metadata"]["name"] == service["metadata"]["name"]
        port_names = {p["name"] for p in containers(selected[0])[0]["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    for pdb in k8s("PodDisruptionBudget"):
        assert sum(matches(pdb["spec"]["selector"]["matchLabels"], labels) for labels in pod_labels) == 1
        # a pod that is not Ready does no work: a drain must not wait for it (docs/operations.md)
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", pdb["metadata"]["name"]
    (monitor,) = k8s("ServiceMonitor")
    services = [
        s
        for s in k8s("Service")
        if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert {s["metadata"]["name"] for s in services} == {"finsent-labeler", "finsent-alerts"}
    for endpoint in monitor["spec"]["endpoints"]:
        for service in services:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert endpoint["path"] == "/metrics"
    # the rules expect job=finsent-labeler / finsent-alerts: the ServiceMonitor's job is the Service name
    jobs = {s["metadata"]["name"] for s in services}
    assert all(re.fullmatch("finsent-.*", j) for j in jobs)


def annotated_for_scraping(obj: Mapping[str, Any]) -> bool:
    """What the usual annotation-based jobs (kubernetes-pods, kubernetes-service-endpoints) scrape."""
    annotations = obj.get("metadata", {}).get("annotations") or {}
    return str(annotations.get("prometheus.io/scrape", "")).lower() == "true"


def scrape_paths(pod_template: Mapping[str, Any]) -> list[str]:
    """Every way a Prometheus could find these pods: their annotations, annotations of a Service selecting
    them, a ServiceMonitor endpoint on such a Service, a PodMonitor endpoint selecting them."""
    labels = pod_template["metadata"]["labels"]
    paths = ["pod annotations"] if annotated_for_scraping(pod_template) else []
    for service in k8s("Service"):
        if not matches(service["spec"].get("selector") or {}, labels):
            continue
        name = service["metadata"]["name"]
        paths += [f"annotations of Service {name}"] if annotated_for_scraping(service) else []
        for monitor in k8s("ServiceMonitor"):
            if matches(monitor["spec"]["selector"].get("matchLabels") or {}, service["metadata"]["labels"]):
                ports = [e.get("port") for e in monitor["spec"]["endpoints"]]
                paths += [f"ServiceMonitor {monitor['metadata']['name']} on {name}:{p}" for p in ports]
    for monitor in k8s("PodMonitor"):
        if matches(monitor["spec"]["selector"].get("matchLabels") or {}, labels):
            paths += [f"PodMonitor {monitor['metadata']['name']}"] * len(
                monitor["spec"]["podMetricsEndpoints"]
            )
    return paths


def test_k8s_pods_are_scraped_exactly_once() -> None:
    """Scraped twice (ServiceMonitor and prometheus.io/* annotations, say), every series comes in under two
    job/instance label sets and every sum() of the dashboards and rules doubles (docs/operations.md)."""
    for dep in k8s("Deployment"):
        paths = scrape_paths(dep["spec"]["template"])
        assert len(paths) == 1, f"{dep['metadata']['name']} is scraped {len(paths)} times: {paths}"


def documented_scrape_job() -> dict[str, Any]:
    """The scrape job docs/operations.md gives for Prometheus without the Operator."""
    text = (ds.REPO_ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "kubernetes_sd_configs" in b]
    (job,) = yaml.safe_load(block)["scrape_configs"]
    assert isinstance(job, dict)
    return job


def test_documented_scrape_job_finds_what_the_service_monitor_finds() -> None:
    """Same Services, same port, job = the Service name, which the rules expect. (Debian's promtool is
    built without Kubernetes discovery, so the check is on the relabeling itself.)"""
    job = documented_scrape_job()
    (monitor,) = k8s("ServiceMonitor")
    (port,) = {e["port"] for e in monitor["spec"]["endpoints"]}
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["role"] == "endpointslice"
    (keep,) = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert set(selector) == {"app.kubernetes.io/name"}, "the documented job keeps by this label only"
    assert keep["source_labels"] == [
        "__meta_kubernetes_service_label_app_kubernetes_io_name",
        "__meta_kubernetes_endpointslice_port_name",
    ]
    assert re.fullmatch(keep["regex"], f"{selector['app.kubernetes.io/name']};{port}")
    assert {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"} in job[
        "relabel_configs"
    ]
    assert job["scrape_interval"] == monitor["spec"]["endpoints"][0]["interval"]


CLOSE_MARGIN_S = 10.0  # closing the producers, the Elasticsearch client and the HTTP server
OTHER_CLOSES_S = 5.0  # the Elasticsearch client and the HTTP server (Kafka clients have their own bound)


def stopping_takes_s(settings: Settings) -> dict[str, float]:
    """The longest a clean stop may take, per command, with a slow or absent broker: the labeler waits for
    its batches (a flush notices the stop within a slice), commits, and closes its consumer and producer;
    the alert worker saves its state, commits, and closes its consumer and state producer. A grace period
    shorter than this kills the process before its outputs are durable and its offsets committed."""
    save_s = inspect.signature(StateStore.save).parameters["timeout_s"].default
    closes_s = 2 * CLIENT_CLOSE_TIMEOUT_S
    return {
        "run": settings.pipeline.shutdown_timeout_s
        + FLUSH_SLICE_S
        + LABELER_COMMIT_TIMEOUT_S
        + closes_s
        + OTHER_CLOSES_S,
        "alerts": save_s + ALERT_COMMIT_TIMEOUT_MS / 1000 + closes_s + OTHER_CLOSES_S,
    }


def test_grace_periods_cover_a_clean_stop() -> None:
    needed = stopping_takes_s(Settings.model_validate(configmap_settings_yaml()))
    for dep in k8s("Deployment"):
        command = containers(dep)[0]["args"][0]
        grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= needed[command], f"{dep['metadata']['name']}: {grace} s < {needed[command]} s"
    for name, service in _finsent_services().items():
        grace_s = float(re.fullmatch(r"(\d+)s", service["stop_grace_period"])[1])  # type: ignore[index]
        assert grace_s >= needed[service["command"][0]], f"compose {name}: {grace_s} s"


def test_k8s_autoscaling_on_lag_stays_within_partitions() -> None:
    partitions = kafka_topic_partitions()
    config = Settings.model_validate(configmap_settings_yaml())
    deployments = {d["metadata"]["name"] for d in k8s("Deployment")}
    expected = {
        "finsent-labeler": (config.pipeline.group_id, set(config.pipeline.input_topics)),
        "finsent-alerts": (config.alerts.group_id, {config.pipeline.labeled_topic}),
    }
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in k8s("ScaledObject")}
    assert set(scaled) == set(expected) and set(scaled) <= deployments
    auth_names = {a["metadata"]["name"]: a for a in k8s("TriggerAuthentication")}
    secret_keys = set(k8s("Secret")[0]["stringData"])
    for name, obj in scaled.items():
        spec = obj["spec"]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        group, topics = expected[name]
        assert meta["consumerGroup"] == group, name
        assert meta["topic"] in topics, name
        assert meta["bootstrapServers"] == config.kafka.bootstrap_servers
        assert spec["maxReplicaCount"] <= partitions[meta["topic"]], f"{name}: more replicas than partitions"
        auth = auth_names[trigger["authenticationRef"]["name"]]
        assert {r["key"] for r in auth["spec"]["secretTargetRef"]} <= secret_keys


def test_k8s_prometheus_rule_is_the_rule_files() -> None:
    assert ds.PROMETHEUS_RULE_FILE.read_text(encoding="utf-8") == ds.prometheus_rule_manifest(), (
        "deploy/k8s/prometheusrule.yaml is out of date: " + ds.PROMETHEUS_RULE_HEADER.splitlines()[1][2:]
    )
    (rule,) = k8s("PrometheusRule")
    (monitor,) = k8s("ServiceMonitor")
    assert rule["metadata"]["labels"]["release"] == monitor["metadata"]["labels"]["release"]

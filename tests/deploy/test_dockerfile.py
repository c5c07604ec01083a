"""The Dockerfile, checked statically (no Docker engine runs here): hadolint, and the properties the
images promise (no torch at run time, non-root, health check on readiness, settings from the
environment, the CUDA flavour's gpu extra matching onnxruntime-gpu, dependency layer before code layer)."""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import shlex
import shutil
import subprocess
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest
from deploy_helpers import REPO, Stage, dockerfile_stages, settings_fields, tool
from packaging.requirements import Requirement

DOCKERFILE = REPO / "Dockerfile"
PREAMBLE, STAGES = dockerfile_stages(DOCKERFILE)
BY_NAME = {s.name: s for s in STAGES}
RUNTIME = STAGES[-1]  # `docker build .` without --target builds the last stage


def _env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage.all("ENV"):
        for word in shlex.split(ins.arguments):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def _from_stages(stage: Stage) -> set[str]:
    return {m.group(1) for ins in stage.all("COPY") for m in re.finditer(r"--from=(\S+)", ins.arguments)}


def test_hadolint_is_clean() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_ignores_are_explained() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" not in line or "DL3006" in line:  # DL3006: FROM a stage chosen by an ARG
            continue
        above = lines[number - 1] if number else ""
        assert above.lstrip().startswith("#") and "hadolint" not in above, (
            f"Dockerfile line {number + 1}: say why the rule is ignored, in a comment above"
        )


def test_cpu_and_cuda_flavours_differ_only_in_provider_and_extra() -> None:
    """One slim base for both (no nvidia/cuda image): CUDA and cuDNN come from the gpu extra."""
    cpu, cuda = BY_NAME["base-cpu"], BY_NAME["base-cuda"]
    assert cpu.base.startswith("ubuntu:") and cuda.base == cpu.base, (cpu.base, cuda.base)
    for stage in (cpu, cuda):
        assert {i.keyword for i in stage.instructions} <= {"ENV"}
        assert set(_env(stage)) == {"CIRCUITSERVE_PROVIDER", "INSTALL_EXTRA"}
    assert (_env(cpu)["INSTALL_EXTRA"], _env(cuda)["INSTALL_EXTRA"]) == ("", "gpu")
    assert any(i.arguments == "FLAVOR=cpu" for i in PREAMBLE if i.keyword == "ARG")
    assert BY_NAME["python"].base == "base-${FLAVOR}"
    # both installs of the runtime venv (dependency layer, code layer) take the flavour's extra
    installs = [i.arguments for i in BY_NAME["build"].all("RUN") if "scripts/install.sh" in i.arguments]
    assert len(installs) == 2 and all('scripts/install.sh "${INSTALL_EXTRA}"' in a for a in installs)


GPU_EXTRA = [
    Requirement(r)
    for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
]
# the wheel that ships each CUDA library libonnxruntime_providers_cuda.so links (libcuda.so.1 is the
# driver's, from the host)
CUDA_LIBRARY_WHEELS = {
    "libcublasLt": "nvidia-cublas",
    "libcublas": "nvidia-cublas",
    "libcudart": "nvidia-cuda-runtime",
    "libcurand": "nvidia-curand",
}


def test_gpu_extra_matches_the_onnxruntime_gpu_build() -> None:
    """onnxruntime-gpu from PyPI is built against one CUDA major and cuDNN 9; the gpu extra (the
    CUDA image's libraries) must bring that major, and a wheel for every CUDA library it links."""
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.fail("onnxruntime is a base dependency and must be installed")
    from onnxruntime.capi import build_and_package_info as info

    if getattr(info, "package_name", "") != "onnxruntime-gpu":
        pytest.skip(f"{info.package_name} installed here (not linux x86_64): no CUDA build to compare")
    cuda_major = str(info.cuda_version).split(".")[0]
    by_name = {r.name: r for r in GPU_EXTRA}
    assert f"nvidia-cudnn-cu{cuda_major}" in by_name, f"cuDNN for CUDA {cuda_major}: {sorted(by_name)}"
    for name in ("nvidia-cublas", "nvidia-cuda-runtime"):
        assert by_name[name].specifier.contains(f"{cuda_major}.0"), (name, by_name[name], info.cuda_version)
        assert not by_name[name].specifier.contains(f"{int(cuda_major) + 1}.0"), by_name[name]
    assert by_name["onnxruntime-gpu"].specifier.contains(info.__version__)
    provider = Path(info.__file__).parent / "libonnxruntime_providers_cuda.so"
    if shutil.which("readelf") is None:
        pytest.skip("no readelf here to list what the CUDA provider links")
    dynamic = subprocess.run(["readelf", "-d", str(provider)], capture_output=True, text=True, check=True)
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(lib[A-Za-z]+)\.so", dynamic.stdout)
    cuda_libs = [n for n in needed if n.startswith(("libcu", "libnv")) and n != "libcuda"]
    assert cuda_libs, dynamic.stdout
    for lib in cuda_libs:
        assert CUDA_LIBRARY_WHEELS.get(lib) in by_name, f"{lib} is linked; which gpu-extra wheel ships it?"


def test_pip_runs_only_through_the_shared_install_script() -> None:
    """The image installs with scripts/install.sh, the command CI runs (test_install_script.py)."""
    calls = []
    for stage in STAGES:
        for ins in stage.all("RUN"):
            assert not re.search(r"\bpip3?\b|\buv\b|\bpoetry\b", ins.arguments), (
                f"line {ins.line}: install with scripts/install.sh, not pip directly"
            )
            calls += [
                (stage.name, m.group(1)) for m in re.finditer(r"scripts/install\.sh([^&;|]*)", ins.arguments)
            ]
    assert calls, "the Dockerfile must install through scripts/install.sh"
    for stage_name, args in calls:
        assert args.split() in ([], ["train"], ['"${INSTALL_EXTRA}"']), (
            f"stage {stage_name}: unexpected install {args!r}"
        )


def test_runtime_image_holds_no_torch_and_no_source() -> None:
    runtime_sources = _from_stages(RUNTIME)
    assert runtime_sources == {"build", "bundles"}, runtime_sources
    build = BY_NAME["build"]
    assert not any("train" in i.arguments for i in build.all("RUN")), "the runtime venv gets no train extra"
    # The build stage refuses to produce a venv in which torch imports.
    assert any("import torch" in i.arguments and "exit 1" in i.arguments for i in build.all("RUN"))
    # ... and none in which bench imports: bench/ is never copied in.
    assert any("import bench" in i.arguments and "exit 1" in i.arguments for i in build.all("RUN"))
    assert not any(i.arguments.startswith("bench/") for i in build.all("COPY")), (
        "bench/ copied into the image"
    )
    assert any(i.arguments.split()[0] == "circuitserve.py" for i in build.all("COPY")), (
        "the command is missing"
    )
    # Only the bundle directory crosses over from the training stage.
    copies = [i.arguments for i in RUNTIME.all("COPY") if "--from=" in i.arguments]
    assert "--from=build /opt/venv /opt/venv" in copies
    assert "--from=bundles /bundles /bundles" in copies
    assert not any("/opt/train" in i.arguments for i in RUNTIME.instructions)


def test_dependency_layer_comes_before_the_code_layer() -> None:
    build = BY_NAME["build"].instructions
    first_install = next(n for n, i in enumerate(build) if i.keyword == "RUN" and "install.sh" in i.arguments)
    code_copies = [
        n for n, i in enumerate(build) if i.keyword == "COPY" and i.arguments.startswith("service/")
    ]
    assert code_copies and first_install < code_copies[0]
    before = [i.arguments for i in build[:first_install] if i.keyword == "COPY"]
    assert all(not a.startswith(("model/", "export/", "service/", "circuitserve.py")) for a in before), before


def test_bundles_baked_or_mounted() -> None:
    assert any(i.arguments == "BUNDLE_SOURCE=train" for i in PREAMBLE if i.keyword == "ARG")
    assert BY_NAME["bundles"].base == "bundles-${BUNDLE_SOURCE}"
    for source in ("train", "context", "none"):
        assert f"bundles-{source}" in BY_NAME
    train = BY_NAME["bundles-train"]
    script = " ".join(i.arguments for i in train.all("RUN"))
    assert "circuitserve train --dataset digits" in script and "circuitserve export" in script
    assert "scripts/install.sh train" in script
    assert any(i.arguments.startswith("bundles/ /bundles") for i in BY_NAME["bundles-context"].all("COPY"))
    assert "bundle-image" in BY_NAME, "deploy/k8s/jobs/bundle-loader.yaml uses --target bundle-image"


def test_runtime_runs_as_non_root_with_settings_from_the_environment() -> None:
    users = RUNTIME.all("USER")
    assert users, "runtime stage must switch user"
    uid = users[-1].arguments.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, "numeric non-root uid (runAsNonRoot can verify it)"
    env = _env(RUNTIME)
    assert env["CIRCUITSERVE_HOST"] == "0.0.0.0"
    assert env["CIRCUITSERVE_PORT"] == "8000"
    assert env["CIRCUITSERVE_BUNDLES"] == '["/bundles/digits"]'
    assert RUNTIME.all("EXPOSE")[-1].arguments == env["CIRCUITSERVE_PORT"]
    assert RUNTIME.all("ENTRYPOINT")[-1].arguments == '["circuitserve"]'
    assert RUNTIME.all("CMD")[-1].arguments == '["serve"]', "no flags: host, port, bundles from env"
    every_env = set(env) | {k for s in STAGES for k in _env(s)}
    circuitserve_env = {k for k in every_env if k.startswith("CIRCUITSERVE_")}
    assert circuitserve_env <= settings_fields(), circuitserve_env - settings_fields()


def test_healthcheck_probes_readiness() -> None:
    (check,) = RUNTIME.all("HEALTHCHECK")
    assert '"/opt/circuitserve/healthcheck.py"' in check.arguments
    assert any(
        i.arguments.split() == ["scripts/healthcheck.py", "/opt/circuitserve/healthcheck.py"]
        for i in RUNTIME.all("COPY")
    )
    assert _healthcheck_module().READY_PATH == "/v2/health/ready"


def test_dockerignore_is_an_allowlist_of_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "start from nothing, then allow"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    sources = []
    for stage in STAGES:
        for ins in stage.all("COPY"):
            if "--from=" in ins.arguments:
                continue
            sources += [w.rstrip("/") for w in ins.arguments.split()[:-1] if not w.startswith("--")]
    for source in sources:
        assert any(source == a or fnmatch.fnmatch(source, a) for a in allowed), (
            f"{source} not in .dockerignore"
        )
    for secret in (".git", ".venv", "runs", ".env", "shared", "tests"):
        assert not any(fnmatch.fnmatch(secret, a) or a.startswith(secret + "/") for a in allowed), secret


# --- the health check script itself, against a stand-in server on loopback -------------------------


def _healthcheck_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "circuitserve_healthcheck", REPO / "scripts" / "healthcheck.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def _server(status: int) -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = status if self.path == "/v2/health/ready" else 404
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_exit_codes() -> None:
    module = _healthcheck_module()
    with _server(200) as port:
        assert module.check(port) == 0
    with _server(503) as port:
        assert module.check(port) == 1
    assert module.check(port) == 1  # nothing listens any more


def test_healthcheck_reads_the_port_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _healthcheck_module()
    with _server(200) as port:
        monkeypatch.setenv("CIRCUITSERVE_PORT", str(port))
        assert module.main() == 0


def test_scripts_are_executable() -> None:
    assert (REPO / "scripts" / "install.sh").stat().st_mode & 0o111
    assert Path(REPO / "scripts" / "healthcheck.py").is_file()

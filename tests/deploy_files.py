"""The commands the files in deploy/ run, read from those files.

Shared by tests/unit/test_deploy_files.py (static checks) and
tests/integration/test_deploy_commands.py (the commands run without Docker).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .helpers import ROOT

DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
KUBERNETES = DEPLOY / "kubernetes" / "worker.yaml"
SYSTEMD = DEPLOY / "systemd" / "werkfluss-worker@.service"


@dataclass(frozen=True)
class Command:
    """One command a deploy file runs: where it comes from, its argv, its environment."""

    origin: str
    argv: tuple[str, ...]
    env: dict[str, str]

    @property
    def is_worker(self) -> bool:
        return self.argv[:3] == ("python", "-m", "werkfluss.worker")


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def dockerfile_env() -> dict[str, str]:
    """The ``ENV`` settings of the Dockerfile (``KEY=value`` forms)."""
    env: dict[str, str] = {}
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.startswith("ENV "):
            for item in shlex.split(line[4:]):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def dockerfile_cmd() -> list[str]:
    """The ``CMD`` of the Dockerfile as Docker runs it (the shell form through ``sh -c``)."""
    (line,) = [x for x in DOCKERFILE.read_text().splitlines() if x.startswith("CMD ")]
    body = line[4:].strip()
    return list(json.loads(body)) if body.startswith("[") else ["sh", "-c", body]


def image_command() -> Command:
    """The image's command, with the shell's variables expanded from the Dockerfile's ENV."""
    env = dockerfile_env()
    shell, flag, script = dockerfile_cmd()
    assert (shell, flag) == ("sh", "-c")
    words = shlex.split(expand(script, env))
    assert words[0] == "exec", "the image's command must exec the worker (PID 1 gets SIGTERM)"
    return Command("Dockerfile CMD", tuple(words[1:]), env)


def compose_commands() -> list[Command]:
    doc = load_yaml_documents(COMPOSE)[0]
    commands = []
    for name, service in doc["services"].items():
        if "command" in service:
            env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
            argv = tuple(str(a) for a in service["command"])
            commands.append(Command(f"compose service {name}", argv, env))
    return commands


def compose_usage() -> list[tuple[str, ...]]:
    """The ``python -m werkfluss ...`` commands the comments at the top of compose.yaml suggest."""
    header = "\n".join(line.lstrip("# ") for line in COMPOSE.read_text().splitlines()
                       if line.startswith("#"))
    header = header.replace("\\\n", " ")
    found = re.finditer(r"exec worker\s+(python -m werkfluss [^\n]*)", header)
    return [tuple(shlex.split(m[1])) for m in found]


def kubernetes_commands() -> list[Command]:
    commands = []
    for doc in load_yaml_documents(KUBERNETES):
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for kind in ("initContainers", "containers"):
            for container in spec.get(kind, []):
                env = {e["name"]: "<from the Secret>" for e in container.get("env", [])}
                commands.append(Command(f"kubernetes {doc['kind']} {kind[:-1]} {container['name']}",
                                        tuple(str(a) for a in container["command"]), env))
    return commands


def systemd_command() -> Command:
    (line,) = [x for x in SYSTEMD.read_text().splitlines() if x.startswith("ExecStart=")]
    words = shlex.split(line[len("ExecStart="):])
    assert words[0].endswith("/bin/python"), "the unit runs the virtualenv's python"
    # systemd expands ${WERKFLUSS_APP} from the EnvironmentFile; here: the demo.
    return Command("systemd ExecStart", tuple(expand(w, {"WERKFLUSS_APP": "werkfluss.cli.demo"})
                                              for w in ("python", *words[1:])), {})


def expand(word: str, env: dict[str, str]) -> str:
    """``$VAR`` and ``${VAR}`` replaced from ``env``."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env[m[1]], word)


def all_commands() -> list[Command]:
    return [image_command(), *compose_commands(), *kubernetes_commands(), systemd_command()]


def with_metrics_port(argv: tuple[str, ...], port: int) -> tuple[str, ...]:
    """``argv`` with the value of ``--metrics-port`` replaced (the files use a fixed port)."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--metrics-port":
            out[i + 1] = str(port)
    return tuple(out)

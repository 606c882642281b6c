"""Runs a page's python blocks, in order, in one namespace (a subprocess per page).

Started by ``tests/docs/session.py`` as ``python session_runner.py REPLY_FD``
in the page's working directory. Each request on stdin is one JSON line,
``{"code": …, "where": "docs/page.md:12"}``; the reply on ``REPLY_FD`` is
``{"output": …, "error": … or null}``. The code runs as the body of a
``__main__`` module, with top-level ``await`` allowed, on one event loop that
lives as long as the page. Everything the block prints (its own prints, the
step bodies', structlog's lines) is its output.

Only the standard library and werkfluss are imported here: the page's code
must see the environment a user's script would see.
"""

from __future__ import annotations

import ast
import asyncio
import io
import json
import os
import sys
import traceback
import types
from typing import Any


class _Capture(io.TextIOBase):
    """sys.stdout and sys.stderr: whatever is written goes to the current block's buffer."""

    def __init__(self) -> None:
        self.buffer_: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.buffer_.append(text)
        return len(text)

    def take(self) -> str:
        text, self.buffer_ = "".join(self.buffer_), []
        return text


def main() -> None:
    reply = os.fdopen(int(sys.argv[1]), "w", buffering=1)
    requests = sys.stdin
    capture = _Capture()
    sys.stdout = sys.stderr = capture  # type: ignore[assignment]
    sys.path[0] = os.getcwd()  # as for `python script.py` run from the page's directory
    module = types.ModuleType("__main__")
    module.__file__ = os.path.join(os.getcwd(), "__main__.py")
    sys.modules["__main__"] = module
    namespace: dict[str, Any] = module.__dict__
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    for line in requests:
        request = json.loads(line)
        if request.get("close"):
            loop.run_until_complete(_close_engines(namespace))
            reply.write(json.dumps({"output": capture.take(), "error": None}) + "\n")
            break
        error = None
        try:
            code = compile(request["code"], request["where"], "exec",
                           flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            result = eval(code, namespace)
            if asyncio.iscoroutine(result):
                loop.run_until_complete(result)
        except BaseException:
            error = traceback.format_exc()
        reply.write(json.dumps({"output": capture.take(), "error": error}) + "\n")
    loop.close()


async def _close_engines(namespace: dict[str, Any]) -> None:
    """Engines a page left open (a setup block's) are closed when the page ends."""
    from werkfluss import Engine

    for value in list(namespace.values()):
        if isinstance(value, Engine):
            await value.close()


if __name__ == "__main__":
    main()

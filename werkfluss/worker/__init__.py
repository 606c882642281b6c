"""Workers: claim runs and drive them (see :mod:`werkfluss.worker.worker`)."""

from werkfluss.worker.worker import Worker

__all__ = ["Worker"]

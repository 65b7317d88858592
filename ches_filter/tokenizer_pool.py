"""Tokenisation ahead of the model: windows of pairs encoded in worker processes.

On a GPU the model scores a pair in well under a millisecond while tokenising it (chat
template, three tokenizer calls, the prompt-boundary checks) takes 1.5–5 ms of Python, so
tokenising in the process that drives the model would cap ``ches score`` far below what the
engine does. :class:`TokenizerPool` keeps ``workers`` processes, each with its own copy of the
:class:`~ches_filter.tokenization.PairTokenizer`; :meth:`TokenizerPool.submit` splits a window
into one contiguous chunk per worker and returns at once, so the next windows are tokenised
while the model runs the current one. Results come back in the order given. With
``workers=0`` the same interface encodes in the calling process, when the result is asked for.

Workers are started with ``spawn``: forking a process whose torch and tokenizer thread pools are
already running is not safe. They import only the tokenizer's side of the package (no model).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from .errors import ChesError
from .records import PreferencePair, RowProblem, TokenizedPair
from .tokenization import PairTokenizer

Item = PreferencePair | RowProblem
Encoded = TokenizedPair | RowProblem
MAX_AUTO_WORKERS = 8

_worker_tokenizer: PairTokenizer | None = None  # set in each worker process by _start_worker


def auto_workers(device_type: str) -> int:
    """Tokenizer processes ``--tokenizer-workers auto`` starts for a model on ``device_type``.

    None on a CPU: the model's threads already use every core, and tokenising is 1–3 % of a
    pair's time there (docs/performance.md). On an accelerator, one per spare core, up to 8.
    """
    if device_type == "cpu":
        return 0
    return max(0, min(MAX_AUTO_WORKERS, usable_cores() - 1))


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS says, else all of them)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def encode_all(tokenizer: PairTokenizer, items: Sequence[Item]) -> list[Encoded]:
    """Each item encoded (RowProblems, rows that could not be read as pairs, pass through)."""
    return [item if isinstance(item, RowProblem) else tokenizer.encode(item) for item in items]


def _start_worker(tokenizer: PairTokenizer) -> None:
    global _worker_tokenizer
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core per worker
    _worker_tokenizer = tokenizer


def _encode_in_worker(items: Sequence[Item]) -> list[Encoded]:
    assert _worker_tokenizer is not None, "worker started without a tokenizer"
    return encode_all(_worker_tokenizer, items)


class EncodedWindow:
    """The encoded items of one submitted window, available from :meth:`result`."""

    def __init__(
        self,
        tokenizer: PairTokenizer,
        items: Sequence[Item],
        futures: list[Future[list[Encoded]]] | None,
    ) -> None:
        self._tokenizer = tokenizer
        self._items = items
        self._futures = futures

    def result(self) -> list[Encoded]:
        """Wait for the window (or, without workers, encode it now)."""
        if self._futures is None:
            return encode_all(self._tokenizer, self._items)
        encoded: list[Encoded] = []
        try:
            for future in self._futures:
                encoded.extend(future.result())
        except BrokenProcessPool as exc:
            raise ChesError(
                "a tokenizer worker process died (out of memory, or killed)",
                hint="run again with --tokenizer-workers 0 to tokenise in the main process",
            ) from exc
        return encoded


class TokenizerPool:
    """``workers`` processes tokenising windows ahead of the model (0: in this process)."""

    def __init__(self, tokenizer: PairTokenizer, workers: int = 0) -> None:
        if workers < 0:
            raise ValueError(f"workers must be at least 0, not {workers}")
        self.tokenizer = tokenizer
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        if workers:
            self._executor = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(tokenizer,),
            )

    def __enter__(self) -> TokenizerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def submit(self, items: Sequence[Item]) -> EncodedWindow:
        """Start encoding ``items``; the window's result keeps their order."""
        if self._executor is None or not items:
            return EncodedWindow(self.tokenizer, items, None)
        size = -(-len(items) // self.workers)  # ceil: one contiguous chunk per worker
        chunks = [items[start : start + size] for start in range(0, len(items), size)]
        return EncodedWindow(
            self.tokenizer, items, [self._executor.submit(_encode_in_worker, c) for c in chunks]
        )

    def close(self) -> None:
        """Stop the workers (pending windows are cancelled)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

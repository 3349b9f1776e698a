"""The ONNX Runtime labeler: fast `tokenizers` tokenization, length-sorted sub-batches padded to their
own longest row, long texts split into chunks and aggregated, temperature-scaled probabilities.

Serving imports only onnxruntime, tokenizers and numpy."""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import math
import os
import time
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from inference.batching import balanced_batches, pad_batch
from inference.calibration import softmax
from inference.chunking import aggregate, pack_token_runs, split_sentences
from inference.config import ModelSettings
from inference.labels import dataset_ids, resolve_label, sentiment_aliases
from inference.model_dir import (
    CONFIG_FILE,
    ModelConfig,
    default_model_dir,
    read_model_config,
    serving_version,
)
from inference.preprocessing import preprocessor
from inference.types import Labeler, Prediction

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
FloatArray = npt.NDArray[np.float64]
SliceCallback = Callable[[npt.NDArray[np.int64]], None]
"""Called with the row indices of each slice `OnnxLabeler.run_rows` has finished."""


class GpuUnavailableError(RuntimeError):
    """device="cuda" was asked for but ONNX Runtime cannot run the model on a GPU here."""


BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Chunks:
    """Token id rows to run, which text each row belongs to, and its aggregation weight (its token count);
    `unreadable`: per text, whether none of its rows holds a word token (`word_tokens`), None when not
    known."""

    rows: list[list[int]]
    owners: list[int]
    weights: list[float]
    texts: int
    unreadable: BoolArray | None = None


def word_tokens(tokenizer: Any) -> BoolArray:
    """Per token id of the tokenizer's vocabulary, whether it is a piece of a word: False for the special
    tokens (from the tokenizer: added tokens marked special, the model's unknown token) and for tokens
    without a letter, digit or mark: punctuation and symbols (`$`, `+`, `##.`). A text of no word token
    gives the model nothing to read, and it answers as to an empty input, confidently ("🚀" is
    `[CLS] [UNK] [SEP]`, labeled neutral at 0.94; "+++" positive at 0.80). Computed once at load."""
    vocab: dict[str, int] = tokenizer.get_vocab(with_added_tokens=True)
    prefix = getattr(tokenizer.model, "continuing_subword_prefix", None) or ""
    words = np.zeros(max(vocab.values(), default=-1) + 1, dtype=np.bool_)
    for token, token_id in vocab.items():
        piece = token[len(prefix) :] if prefix and token.startswith(prefix) and token != prefix else token
        words[token_id] = any(unicodedata.category(c)[0] in "LNM" for c in piece)
    for token_id, added in tokenizer.get_added_tokens_decoder().items():
        if added.special:
            words[token_id] = False
    unknown = getattr(tokenizer.model, "unk_token", None)
    unknown_id = tokenizer.token_to_id(unknown) if isinstance(unknown, str) else None
    if unknown_id is not None:
        words[unknown_id] = False
    return words


def unreadable_texts(
    rows: Sequence[Sequence[int]], owners: Sequence[int], texts: int, words: BoolArray
) -> BoolArray:
    """Per text, whether none of its rows holds a word token (`word_tokens`, `Chunks.unreadable`): one
    numpy pass over the batch's token ids."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    ids = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    row_words = np.bincount(np.repeat(np.arange(len(rows)), lengths), weights=words[ids], minlength=len(rows))
    found = np.bincount(np.asarray(owners, dtype=np.int64), weights=row_words, minlength=texts)
    unreadable: BoolArray = found == 0
    return unreadable


REREAD_CHARS_PER_TOKEN = 16
"""Characters of a text read again per token the labeler can use (`max_chunks` x `max_length`): real text
runs 3-6 characters to a token, so the cut loses nothing the model would read, and a text that NFKC
lengthens (U+FDFA is 18 characters folded) costs no more to tokenize again than that many characters."""

_SET_APART = frozenset(("Sc", "Sk", "Sm", "So", "Me"))
"""Unicode categories set apart from the letters they touch: symbols (emoji, skin-tone modifiers, arrows)
and enclosing marks (a keycap's U+20E3), which the tokenizer would read as part of an unknown word. Not
in ASCII, whose symbols it splits off itself (`$GME` stays as it is)."""


def reread_text(text: str, max_chars: int) -> str:
    """A second spelling for a text the model reads no word of: NFKC folds styled and enclosed letters and
    digits to plain ones ("𝐀𝐏𝐏𝐋 𝐜𝐫𝐚𝐬𝐡𝐞𝐬" -> "APPL crashes", "①" -> "1"), and symbols (emoji, their
    skin tones, keycaps) are set apart from the letters they are glued to, which the tokenizer would take
    for one unknown word with them ("$GME🚀🚀" -> "$GME 🚀 🚀", "👍🏽TSLA"). At most `max_chars` characters
    (see REREAD_CHARS_PER_TOKEN). Used only for texts that would otherwise be dead-lettered."""
    folded = unicodedata.normalize("NFKC", text[:max_chars])[:max_chars]
    if folded.isascii():
        return folded
    return "".join(f" {c} " if c > "\x7f" and unicodedata.category(c) in _SET_APART else c for c in folded)[
        :max_chars
    ]


def default_batch_size(device: str) -> int:
    """Most rows in one slice of a length-sorted batch: on the CPU the token budget below decides first;
    a GPU needs big batches to be busy."""
    return 512 if device == "cuda" else 64


def default_slice_tokens(device: str) -> int | None:
    """Padded tokens per slice (rows x longest row) on the CPU, where padding costs more than per-call
    overhead: short texts run many to a slice, long ones few. With two single-threaded streams small
    slices pay. `python bench/model.py` (windows of 256, 2 cores, 3 alternating rounds): 256 tokens 837
    texts/s, 128 859, 512 777, 1024 690, fixed slices of 8 810; one stream of 2 threads with 512 tokens
    (the previous default) 745. 128 and 256 trade places between runs. None on a GPU: slices of
    `batch_size` rows."""
    return None if device == "cuda" else 256


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may run on: the CPUs it is pinned to, capped by a container's CPU limit
    (`docker --cpus`, a Kubernetes limit), which the affinity mask does not show: a 2-CPU container on a
    64-core node would otherwise start 64 ONNX Runtime threads."""
    try:
        pinned = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        pinned = os.cpu_count() or 1
    quota = cgroup_cpu_limit(cgroup_root)
    return max(1, min(pinned, math.ceil(quota))) if quota is not None else pinned


def cgroup_cpu_limit(root: Path) -> float | None:
    """The CPU limit of this cgroup in CPUs (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`), None if none."""
    try:
        text = (root / "cpu.max").read_text().split()
        if len(text) == 2 and text[0] != "max":
            return int(text[0]) / int(text[1])
        if text:
            return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def default_cpu_streams(threads: int | None) -> int:
    """Slices run at once on the CPU (a GPU runs one big slice at a time). Two streams, each on half the
    threads, beat one stream on all of them: a slice never waits at ONNX Runtime's per-operator barrier
    for a thread the OS gave to someone else, and small slices need no intra-op parallelism. On 2 cores,
    `python bench/pipeline.py --rounds 4 --one-stream`: 2 streams of 1 thread with 256-token slices
    against 1 stream of 2 threads with 512, model alone 797 vs 685 texts/s, pipeline 694 vs 609 (faster
    in every round)."""
    return max(1, min(2, threads or available_cpus()))


def onnxruntime() -> Any:
    """The onnxruntime module, imported with its usage telemetry off: recent Linux builds send events to
    Microsoft (DNS lookups of mobile.events.data.microsoft.com from every labeler, blocked and flagged
    where egress is locked down) and try to write a device id under ~/.cache. The variable is read when
    the library starts; an operator's own value wins."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime as ort

    return ort


def _session_options(threads: int | None, optimisation: str) -> Any:
    ort = onnxruntime()

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimisation]
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle intra-op threads spin by default, stealing the cores that the consumer, the producers and the
    # Elasticsearch client share with the model; measured in bench/pipeline.py: pipeline/model ratio
    # 0.73 -> 0.81 and p99 at half rate 626 -> 323 ms, model alone about 3% slower.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


# ONNX Runtime's CPU kernels for these two fusions are slower than the ops they fuse: the CPU model ships
# them taken apart (inference.training.cpu_graph), and its sessions must not fuse them again. Measured in
# `python bench/model.py` (its "fused" rows): the served path labeled 1.2-1.5x more texts/s unfused.
CPU_UNFUSED = ("SkipLayerNormFusion", "BiasGeluFusion")


def cpu_session(path: Path, options: Any) -> Any:
    """An InferenceSession on the CPU provider, without the fusions in CPU_UNFUSED."""
    ort = onnxruntime()
    return ort.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=list(CPU_UNFUSED)
    )


def cuda_session(path: Path, options: Any, device_id: int = 0) -> Any:
    """An InferenceSession on the CUDA provider, or GpuUnavailableError. onnxruntime-gpu lists CUDA as
    available even without a usable GPU and then silently runs on the CPU: check get_providers()."""
    ort = onnxruntime()

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise GpuUnavailableError(
            "device=cuda: this onnxruntime build has no CUDAExecutionProvider (install onnxruntime-gpu, "
            f"the `gpu` extra); available: {ort.get_available_providers()}"
        )
    preload_cuda_libraries(ort)
    try:
        session = ort.InferenceSession(
            str(path),
            options,
            providers=[("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"],
        )
    except Exception as exc:
        raise GpuUnavailableError(f"device=cuda: could not create a CUDA session: {exc}") from exc
    ensure_on_gpu(session)
    return session


def preload_cuda_libraries(ort: Any) -> None:
    """Load CUDA and cuDNN from pip's nvidia-* packages when they are installed (onnxruntime-gpu's
    `[cuda,cudnn]` extras), so that a pip-only install needs no LD_LIBRARY_PATH; libraries already on the
    system path (the CUDA base image) are found as before. ONNX Runtime prints its findings: log them."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:  # onnxruntime < 1.21
        return
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            preload()
    except Exception as exc:  # best effort: creating the session below gives the real error
        log.warning("onnxruntime.preload_dlls failed: %s", exc)
    if printed.getvalue().strip():
        log.info("onnxruntime.preload_dlls: %s", " | ".join(printed.getvalue().split("\n")).strip(" |"))


def ensure_on_gpu(session: Any) -> None:
    """Raise GpuUnavailableError unless the session really runs on the CUDA provider."""
    providers = list(session.get_providers())
    if "CUDAExecutionProvider" not in providers:
        raise GpuUnavailableError(
            "device=cuda: onnxruntime fell back to the CPU (no usable GPU or CUDA/cuDNN libraries missing); "
            f"session providers: {providers}"
        )


def _valid_unicode(text: str) -> str:
    """The text with unpaired surrogates (invalid UTF-8 read from a pipe or argv arrives as those) made
    "?": the tokenizer refuses them and would fail the whole batch."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


FED_INPUTS = ("input_ids", "attention_mask")
"""What the labeler feeds the ONNX model."""


def check_outputs(session: Any, config: ModelConfig) -> None:
    """The ONNX file must take no inputs but FED_INPUTS, and its heads must have as many classes as the
    config has labels: either mismatch would otherwise fail the first batch, after the worker reported
    ready (a model exported with `token_type_ids`; a numpy broadcast error)."""
    needed = sorted({i.name for i in session.get_inputs()} - set(FED_INPUTS))
    if needed:
        raise ValueError(
            f"{config.directory}: the ONNX model needs inputs {needed}; finsent feeds only {list(FED_INPUTS)}"
        )
    shapes = {o.name: o.shape for o in session.get_outputs()}
    for head, labels in (
        ("topic_logits", config.topic_labels),
        ("sentiment_logits", config.sentiment_labels),
    ):
        if head not in shapes:
            raise ValueError(f"{config.directory}: the ONNX model has no output {head!r} ({sorted(shapes)})")
        classes = shapes[head][-1]
        if isinstance(classes, int) and classes != len(labels):
            raise ValueError(
                f"{config.directory}: {head} has {classes} classes "
                f"but {CONFIG_FILE} lists {len(labels)} labels"
            )


class OnnxLabeler:
    """Labels texts with a finsent model directory (implements `inference.types.Labeler`)."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        device: Device = "cpu",
        threads: int | None = None,
        batch_size: int | None = None,
        slice_tokens: int | None = None,
        streams: int | None = None,
        optimisation: str = "all",
        variant: str | None = None,
        max_chunks: int = 32,
    ) -> None:
        from tokenizers import Tokenizer

        self.config = config
        self._preprocess = preprocessor(config.preprocessing)
        if max_chunks < 1:
            raise ValueError(f"max_chunks must be at least 1, not {max_chunks}")
        self.max_chunks = max_chunks
        if device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"unknown device {device!r}: use cpu, cuda or auto")
        self.session: Any
        self.device = "cpu"
        self.streams = 1
        if device != "cpu":
            try:
                options = _session_options(threads, optimisation)
                self.session = cuda_session(config.variant_path(variant or "cuda"), options)
                self.device = "cuda"
            except (GpuUnavailableError, FileNotFoundError) as exc:
                if device == "cuda":
                    raise
                log.info("device=auto: using the CPU (%s)", exc)
        if self.device == "cpu":
            # `threads` is the labeler's total: each stream's session calls get an equal share.
            self.streams = streams or default_cpu_streams(threads)
            # always explicit: left unset, ONNX Runtime starts a thread per core of the node, ignoring
            # the container's CPU limit that available_cpus() reads
            per_stream = max(1, (threads or available_cpus()) // self.streams)
            path = config.variant_path(variant or "cpu")
            try:
                self.session = cpu_session(path, _session_options(per_stream, optimisation))
            except Exception as exc:  # ONNX Runtime's errors derive from Exception only
                reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                raise ValueError(f"{path}: cannot load the ONNX model ({reason})") from exc
        self.variant = variant or ("cuda" if self.device == "cuda" else "cpu")
        self._version = serving_version(config, self.variant)
        self.batch_size = batch_size or default_batch_size(self.device)
        # 0 turns the token budget off (slices of batch_size rows); None takes the device's default.
        self.slice_tokens = (
            default_slice_tokens(self.device) if slice_tokens is None else (slice_tokens or None)
        )
        self._io_binding = self.device == "cuda"
        self.slice_parts = self.streams
        """Slice counts are rounded up to a multiple of this (`balanced_batches`); 1: plain greedy cuts."""
        self._streams = (
            ThreadPoolExecutor(self.streams, thread_name_prefix="finsent-infer-stream")
            if self.streams > 1
            else None
        )
        check_outputs(self.session, config)
        tokenizer_path = config.directory / config.tokenizer_file
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # tokenizers raises a bare Exception without the path
            raise ValueError(f"{tokenizer_path}: cannot load the tokenizer ({exc})") from exc
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        special = config.special_tokens
        self._cls = self._token_id(special.get("cls", "[CLS]"))
        self._sep = self._token_id(special.get("sep", "[SEP]"))
        self._pad = self._token_id(special.get("pad", "[PAD]"))
        self._words = word_tokens(self.tokenizer)
        for head in ("topic", "sentiment"):
            if head not in config.temperatures:
                log.warning(
                    "%s: no temperature for the %s head: its probabilities are not calibrated",
                    config.directory,
                    head,
                )
        self._t_topic = float(config.temperatures.get("topic", 1.0))
        self._t_sentiment = float(config.temperatures.get("sentiment", 1.0))

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{self.config.directory}: tokenizer has no token {token!r}")
        return int(token_id)

    @property
    def model_version(self) -> str:
        """The serving version (`inference.model_dir.serving_version`), not the card's bare one."""
        return self._version

    @property
    def topic_labels(self) -> Sequence[str]:
        return self.config.topic_labels

    @property
    def sentiment_labels(self) -> Sequence[str]:
        return self.config.sentiment_labels

    @property
    def dataset_label_maps(self) -> Mapping[str, Mapping[int, str]]:
        """Per task (`sentiment`, `topic`), {dataset id: model label name}, read from the model's config: a
        dataset's ids are not the model's label order (TFNS sentiment: 0 bearish, 1 bullish, 2 neutral;
        `sentiment_labels`: negative, neutral, positive). A task without a map is absent. Read-only."""
        maps = {
            task: ids
            for task in self.config.dataset_label_maps
            if task in ("sentiment", "topic") and (ids := self._dataset_ids(task)) is not None
        }
        return MappingProxyType(maps)

    def _dataset_ids(self, task: str) -> Mapping[int, str] | None:
        """One task's {dataset id: label}, built once (the config does not change): `dataset_id` is
        called per prediction, and a bad map of the other task must not fail this one's."""
        held = self.__dict__.get("_dataset_ids_cache")
        if held is None or held[0] is not self.config:  # a config set anew (a test's) is read anew
            held = self.__dict__["_dataset_ids_cache"] = (self.config, {})
        cache: dict[str, Mapping[int, str] | None] = held[1]
        if task not in cache:
            id_map = self.config.dataset_label_maps.get(task)
            labels, aliases = self.task_labels(task), self.label_aliases(task)
            cache[task] = (
                None if id_map is None else MappingProxyType(dataset_ids(id_map, labels, aliases=aliases))
            )
        return cache[task]

    def dataset_id(self, task: str, name: str) -> int | None:
        """The dataset's id of the model label `name` (a prediction's `sentiment` or `topic`; `neutral` is 2
        with the shipped model): compare predictions with a dataset's integer labels through this, never
        through `sentiment_labels.index(name)`. None when the config has no map for `task` (or its map gives
        `name` no id); ValueError for a name that is no label of the task's head."""
        wanted = self._label_name(task, name)
        ids = self._dataset_ids(task)
        if ids is None:
            return None
        return next((i for i, label in sorted(ids.items()) if label == wanted), None)

    def task_labels(self, task: str) -> Sequence[str]:
        """The model's labels of `task` (sentiment or topic); ValueError for any other name."""
        if task not in ("sentiment", "topic"):
            raise ValueError(f"unknown task {task!r}: sentiment or topic")
        return self.sentiment_labels if task == "sentiment" else self.topic_labels

    def label_aliases(self, task: str) -> dict[str, str]:
        """The aliases a dataset's labels of `task` are read with: for sentiment those `finsent train` reads
        data with that name a label of this model, and the model's own (they win); for topics none."""
        if task != "sentiment":
            return {}
        return sentiment_aliases(self.sentiment_labels, self.config.sentiment_aliases)

    def _label_name(self, task: str, name: str) -> str:
        """The head's label that `name` (any case, or an alias) spells (`resolve_label`, with no ids:
        a bare number is no name); ValueError when none does."""
        labels = self.task_labels(task)
        try:
            return labels[resolve_label(name, labels, id_map={}, aliases=self.label_aliases(task))]
        except ValueError:
            raise ValueError(f"{name!r} is no {task} label of the model: {list(labels)}") from None

    def encode(self, texts: Sequence[str]) -> Chunks:
        """Token rows for `texts` (tokenizing only, no model: the first stage of `label()`, see
        `inference.types.StagedLabeler`): one row per text that fits `max_length`, else one row per chunk
        of whole sentences (windows for over-long sentences), the first `max_chunks` of them that hold a
        word. A text the model would read no word of is tokenized once more as `reread_text` spells it
        (styled letters as plain ones, emoji apart from the words they are glued to), and flagged
        unreadable if it still holds no word."""
        if isinstance(texts, str):  # a str is a sequence of strings too: each character was labeled
            raise TypeError("texts must be a sequence of strings, not one string: label([text])")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):  # a DataFrame column's NaN, None, bytes: say which row
                hint = " (a missing value, NaN?)" if t is None or isinstance(t, float) else ""
                raise TypeError(f"texts[{i}] is {type(t).__name__}{hint}, not str")
        texts = [self._preprocess(t if t.isascii() else _valid_unicode(t)) for t in texts]
        groups = self._text_rows(texts)
        chunks = self._chunks(groups)
        if chunks.unreadable is not None and chunks.unreadable.any():
            # only texts the model would not read are spelled again: the others reach it as it was trained
            most = self.max_chunks * self.config.max_length * REREAD_CHARS_PER_TOKEN
            again = {int(i): reread_text(texts[i], most) for i in np.flatnonzero(chunks.unreadable)}
            again = {i: text for i, text in again.items() if text != texts[i]}
            if again:
                for i, group in zip(again, self._text_rows(list(again.values())), strict=True):
                    groups[i] = group
                chunks = self._chunks(groups)
        return chunks

    def _text_rows(self, texts: Sequence[str]) -> list[list[tuple[list[int], float]]]:
        """Per (preprocessed) text, its token rows, each with its aggregation weight."""
        encodings = self.tokenizer.encode_batch(list(texts))
        limit = self.config.max_length
        groups: list[list[tuple[list[int], float]]] = []
        for index, encoding in enumerate(encodings):
            ids = encoding.ids
            if len(ids) <= limit:
                groups.append([(ids, 1.0)])
                continue
            sentences = split_sentences(texts[index])
            runs = [e.ids for e in self.tokenizer.encode_batch(sentences, add_special_tokens=False)]
            packed = pack_token_runs(runs, limit - 2)
            # the first max_chunks chunks that hold a word: one of emoji only would weigh in the label
            # with the model's answer to an empty input (a headline and 300 emoji read neutral), and
            # 5,000 emoji before the words hid them; a text with none keeps its first, to be flagged
            chunks = [chunk for chunk in packed if self._words[chunk].any()][: self.max_chunks] or packed[:1]
            groups.append([([self._cls, *chunk, self._sep], float(max(len(chunk), 1))) for chunk in chunks])
        return groups

    def _chunks(self, groups: Sequence[Sequence[tuple[list[int], float]]]) -> Chunks:
        """The texts' rows in one list, with their owners, weights and flags (`unreadable_texts`)."""
        rows = [row for group in groups for row, _ in group]
        owners = [index for index, group in enumerate(groups) for _ in group]
        weights = [weight for group in groups for _, weight in group]
        unreadable = unreadable_texts(rows, owners, len(groups), self._words)
        return Chunks(rows, owners, weights, len(groups), unreadable)

    def run_rows(
        self, rows: Sequence[Sequence[int]], on_slice: SliceCallback | None = None
    ) -> tuple[FloatArray, FloatArray]:
        """Raw (topic, sentiment) logits for token rows, in row order, via length-sorted sub-batches
        (`balanced_batches`: as many as keep the streams evenly busy). `on_slice` is called with the row
        indices of each slice as its results come in (progress of a long call)."""
        topic = np.zeros((len(rows), len(self.topic_labels)), dtype=np.float64)
        sentiment = np.zeros((len(rows), len(self.sentiment_labels)), dtype=np.float64)
        lengths = [len(r) for r in rows]
        slices = balanced_batches(lengths, self.batch_size, self.slice_tokens, self.slice_parts)

        def run_slice(idx: npt.NDArray[np.int64]) -> tuple[Any, Any]:
            return self._run(*pad_batch([rows[i] for i in idx], self._pad))

        results: Iterator[tuple[Any, Any]]
        if self._streams is None or len(slices) < 2:
            results = map(run_slice, slices)
        else:
            # Longest slices first, so the streams finish close together; map() keeps the order.
            slices = slices[::-1]
            results = self._streams.map(run_slice, slices)
        for idx, (t, s) in zip(slices, results, strict=True):
            topic[idx] = t
            sentiment[idx] = s
            if on_slice is not None:
                on_slice(idx)
        return topic, sentiment

    def _run(self, ids: npt.NDArray[np.int64], mask: npt.NDArray[np.int64]) -> tuple[Any, Any]:
        if self._io_binding:
            binding = self.session.io_binding()
            binding.bind_cpu_input("input_ids", ids)
            binding.bind_cpu_input("attention_mask", mask)
            binding.bind_output("topic_logits", "cuda")
            binding.bind_output("sentiment_logits", "cuda")
            self.session.run_with_iobinding(binding)
            topic, sentiment = binding.copy_outputs_to_cpu()
            return topic, sentiment
        topic, sentiment = self.session.run(
            ["topic_logits", "sentiment_logits"], {"input_ids": ids, "attention_mask": mask}
        )
        return topic, sentiment

    def probabilities(self, texts: Sequence[str]) -> tuple[FloatArray, FloatArray]:
        """Calibrated (topic, sentiment) probability matrices, one row per text, columns in label order."""
        return self.encoded_probabilities(self.encode(texts))

    def encoded_probabilities(
        self, chunks: Chunks, on_slice: SliceCallback | None = None
    ) -> tuple[FloatArray, FloatArray]:
        """`probabilities()` of already tokenized texts (`on_slice`: see `run_rows`)."""
        if not chunks.texts:
            return (np.zeros((0, len(self.topic_labels))), np.zeros((0, len(self.sentiment_labels))))
        topic_logits, sentiment_logits = self.run_rows(chunks.rows, on_slice)
        _check_finite(topic_logits, sentiment_logits)
        topic = softmax(topic_logits, self._t_topic)
        sentiment = softmax(sentiment_logits, self._t_sentiment)
        if len(chunks.rows) != chunks.texts:
            topic = aggregate(topic, chunks.owners, chunks.weights, chunks.texts)
            sentiment = aggregate(sentiment, chunks.owners, chunks.weights, chunks.texts)
        return topic, sentiment

    def label_encoded(self, chunks: Chunks) -> list[Prediction]:
        """`label()` of already tokenized texts: the model stage."""
        topic, sentiment = self.encoded_probabilities(chunks)
        return predictions(topic, sentiment, self.topic_labels, self.sentiment_labels, chunks.unreadable)

    def label(self, texts: Sequence[str]) -> list[Prediction]:
        """One Prediction per text, in input order. A text with no word the model knows (empty, only
        whitespace, punctuation or emoji) still gets labels, flagged `unreadable`: leave those out, as
        `finsent label` and the pipeline do. With the int8 CPU model about 2-3 % of labels depend on
        which texts share a call (the activations are quantized per slice): label a data set in one call
        (`inference.evaluate.probabilities_with_progress` reports progress) for labels `finsent evaluate`
        reproduces."""
        return self.label_encoded(self.encode(texts))


def _check_finite(*logits: Any) -> None:
    """Refuse non-finite logits (an fp16 overflow): softmax would make every probability NaN and argmax
    the first label, a confident-looking wrong answer. Raised, the pipeline labels the batch's texts one
    at a time and dead-letters those that fail (`inference_failed`)."""
    for head in logits:
        bad = ~np.isfinite(np.asarray(head)).all(axis=-1)
        if bad.any():
            raise FloatingPointError(
                f"the model gave non-finite logits for {int(bad.sum())} of {len(bad)} rows"
            )


def label_each_if_refused(labeler: Labeler, texts: Sequence[str]) -> list[Prediction | None]:
    """`labeler.label(texts)`; if the model's numbers are refused (non-finite logits), the texts one at a
    time, None for each that is refused again, so that one text does not cost the others their labels."""
    try:
        return list(labeler.label(texts))
    except FloatingPointError:
        out: list[Prediction | None] = []
        for text in texts:
            try:
                out.append(labeler.label([text])[0])
            except FloatingPointError:
                out.append(None)
        return out


def predictions(
    topic: FloatArray,
    sentiment: FloatArray,
    topic_labels: Sequence[str],
    sentiment_labels: Sequence[str],
    unreadable: BoolArray | None = None,
) -> list[Prediction]:
    """Probability matrices -> Prediction objects (argmax label and its probability; `unreadable`: see
    `Prediction.unreadable`, per row)."""
    t_best = topic.argmax(axis=1)
    s_best = sentiment.argmax(axis=1)
    topic_rows = topic.tolist()
    sentiment_rows = sentiment.tolist()
    flags = [False] * len(topic_rows) if unreadable is None else unreadable.tolist()
    out: list[Prediction] = []
    for i in range(len(topic_rows)):
        t_row = topic_rows[i]
        s_row = sentiment_rows[i]
        out.append(
            Prediction(
                topic=topic_labels[int(t_best[i])],
                topic_score=float(t_row[int(t_best[i])]),
                sentiment=sentiment_labels[int(s_best[i])],
                sentiment_score=float(s_row[int(s_best[i])]),
                topic_probs=dict(zip(topic_labels, t_row, strict=True)),
                sentiment_probs=dict(zip(sentiment_labels, s_row, strict=True)),
                unreadable=flags[i],
            )
        )
    return out


def load_labeler(
    model_dir: Path | None = None,
    *,
    device: Device = "cpu",
    threads: int | None = None,
    batch_size: int | None = None,
    slice_tokens: int | None = None,
    streams: int | None = None,
    optimisation: str = "all",
    max_chunks: int = 32,
) -> OnnxLabeler:
    """Load a model directory (None: the default model shipped with finsent). device="cuda" raises
    GpuUnavailableError when no GPU is usable; "auto" falls back to the CPU."""
    started = time.monotonic()
    config = read_model_config(Path(model_dir) if model_dir is not None else default_model_dir())
    labeler = OnnxLabeler(
        config,
        device=device,
        threads=threads,
        batch_size=batch_size,
        slice_tokens=slice_tokens,
        streams=streams,
        optimisation=optimisation,
        max_chunks=max_chunks,
    )
    log.info(
        "loaded model %s on %s (%s) in %.2f s",
        labeler.model_version,
        labeler.device,
        labeler.variant,
        time.monotonic() - started,
    )
    return labeler


def load_from_settings(settings: ModelSettings) -> OnnxLabeler:
    """`load_labeler()` with the `model.*` settings (finsent run) or the same values from CLI flags."""
    return load_labeler(
        settings.dir,
        device=settings.device,
        threads=settings.threads,
        batch_size=settings.batch_size,
        slice_tokens=settings.slice_tokens,
        streams=settings.streams,
        max_chunks=settings.max_chunks,
    )

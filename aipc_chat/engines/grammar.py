"""Structured-output constraints checked before admission, by openvino-genai's own grammar compiler.

openvino-genai compiles a request's JSON schema, regex, EBNF grammar or structural tags (with XGrammar) inside
``ContinuousBatchingPipeline.step()``, the step that every request in the batch shares; a constraint it cannot
compile makes that step raise, and leaves the pipeline unable to step again (openvino-genai 2026.4). So no
constraint reaches the shared pipeline before it has compiled on a pipeline of its own: a probe.

The probe is a ``ContinuousBatchingPipeline`` over a tiny random-weight Llama written as GGUF at start-up (a byte
vocabulary, one layer: about 40 KB, built and loaded in ~0.15 s). Compiling a constraint there gives the compiler's
own verdict and message: what fails to compile is independent of the vocabulary. Verdicts are cached per constraint
text, so a schema a client sends with every request is compiled once. A probe that a bad constraint broke is
rebuilt, off the serving path.
"""

from __future__ import annotations

import logging
import re
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from aipc_chat.engines.bytelevel import bytes_to_unicode
from aipc_chat.engines.contract import GenParams
from aipc_chat.errors import InvalidRequest

log = logging.getLogger(__name__)

CACHE_SIZE = 256
_LOCATION = re.compile(r"^\[[0-9:]+\]\s+\S+?:\d+:\s*")  # XGrammar's "[12:00:00] /path/file.cc:898: "
_CHECK = re.compile(r"^Check .*? is false:\s*")  # XGrammar's "Check `...` is false: "


# JSON mode (OpenAI's json_object, Ollama's format "json"): any JSON object, bounded so that it always closes within
# the request's tokens. Each token writes at least one byte and the grammar allows ASCII only, so an object of at most
# N characters ends within N tokens: the model cannot run out of tokens mid-object, whatever it writes.
_KEY_CHARS = 16  # a key: 1 to 16 characters, quoted
_NUMBER_CHARS = 20  # -123456789012.123456
_ARRAY_ITEMS, _ARRAY_STRING_CHARS = 4, 16
_STRING_CHARS = 1000  # the longest a string value may be, when the budget allows


def json_object_grammar(max_chars: int) -> str:
    """An EBNF grammar for a flat JSON object (strings with the common escapes, numbers, booleans, null, short
    arrays of them) that is at most ``max_chars`` long: as many fields and as long strings as fit, down to ``{}``."""
    for fields in range(8, 0, -1):
        for arrays in (True, False):
            array_chars = 2 + _ARRAY_ITEMS * _NUMBER_CHARS + 2 * (_ARRAY_ITEMS - 1) if arrays else 0
            fixed = 2 + _KEY_CHARS + 2  # the quoted key and ": "
            room = (max_chars - 2 - 2 * (fields - 1)) // fields - fixed  # what one value may take
            longest = min(_STRING_CHARS, room - 2)
            if room >= max(array_chars, _NUMBER_CHARS, 5) and longest >= 0:
                return _json_grammar(fields, longest, arrays)
    return 'root ::= "{}"'


def _json_grammar(fields: int, string_chars: int, arrays: bool) -> str:
    array = (f' | "[" (item (", " item){{0,{_ARRAY_ITEMS - 1}}})? "]"\n'
             f'item ::= "\\"" char{{0,{_ARRAY_STRING_CHARS // 2}}} "\\"" | number | "true" | "false" | "null"'
             ) if arrays else ""
    return "\n".join([
        f'root ::= "{{" (pair (", " pair){{0,{fields - 1}}})? "}}"',
        f'pair ::= "\\"" [a-zA-Z_] [a-zA-Z0-9_]{{0,{_KEY_CHARS - 1}}} "\\": " value',
        f'value ::= "\\"" char{{0,{string_chars // 2}}} "\\"" | number | "true" | "false" | "null"{array}',
        'char ::= [ !#-\\[\\]-~] | "\\\\" ["\\\\/nt]',  # printable ASCII, or an escape (2 characters)
        'number ::= "-"? ("0" | [1-9] [0-9]{0,11}) ("." [0-9]{1,6})?',  # JSON: no leading zeros
    ])


def write_probe_model(path: Path) -> None:
    """Write the probe's GGUF: a one-layer Llama with a byte-level BPE vocabulary and random weights."""
    import gguf
    import numpy as np

    vocab, hidden, ffn, heads = 259, 32, 64, 2
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(512)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)  # openvino-genai reads F16 and quantized weights
    table = bytes_to_unicode()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([table[b] for b in range(256)] + ["<s>", "</s>", "ab"])
    writer.add_token_types([1] * 256 + [3, 3, 1])
    writer.add_token_merges(["a b"])  # the reader needs a merges table; one merge will do
    writer.add_bos_token_id(256)
    writer.add_eos_token_id(257)
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    rng = np.random.default_rng(0)

    def weight(name: str, shape: tuple[int, ...]) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float16))

    weight("token_embd.weight", (vocab, hidden))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(hidden, np.float32))
    for part in ("q", "k", "v", "output"):
        weight(f"blk.0.attn_{part}.weight", (hidden, hidden))
    writer.add_tensor("blk.0.ffn_norm.weight", np.ones(hidden, np.float32))
    weight("blk.0.ffn_gate.weight", (ffn, hidden))
    weight("blk.0.ffn_up.weight", (ffn, hidden))
    weight("blk.0.ffn_down.weight", (hidden, ffn))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    weight("output.weight", (vocab, hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def compiler_message(exc: BaseException) -> str:
    """The compiler's own sentence, without the build paths and timestamps around it."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    text = _CHECK.sub("", _LOCATION.sub("", text))
    return text[:500]


def constraint_of(params: GenParams) -> tuple[str, str] | None:
    """(kind, text) of the request's constraint, or None when it has none."""
    if params.json_schema is not None:
        return "json_schema", params.json_schema
    if params.regex is not None:
        return "regex", params.regex
    if params.grammar is not None:
        return "grammar", params.grammar
    if params.tool_constraint is not None:
        return "tools", repr(params.tool_constraint)
    if params.tag is not None:
        return "tag", f"{params.tag.begin}\x00{params.tag.regex}\x00{params.tag.end}"
    return None


class ConstraintChecker:
    """Compiles constraints on the probe pipeline; caches each verdict (None = compiles, else the message)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the probe is one pipeline: one compile at a time
        self._verdicts: OrderedDict[tuple[str, str], str | None] = OrderedDict()
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._pipe: Any = None
        self._ids = 0
        self.available = True  # False if the probe cannot be built here: the engine's recovery is then the guard
        self.compile_seconds: list[float] = []  # uncached checks, for the benchmark notes

    def load(self) -> None:
        """Write and load the probe (about 0.15 s)."""
        with self._lock:
            try:
                self._build()
            except Exception as exc:  # an openvino-genai without GGUF support: serve without the pre-check
                self.available = False
                log.warning("structured-output constraints cannot be checked before admission (%s); a bad one "
                            "will be caught by the engine's recovery instead", exc)

    def _build(self) -> None:
        import openvino_genai as ov_genai

        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="aipc-grammar-probe-", ignore_cleanup_errors=True)
            write_probe_model(Path(self._folder.name) / "probe.gguf")
        config = ov_genai.SchedulerConfig()
        config.num_kv_blocks = 8
        config.max_num_batched_tokens = 512
        config.max_num_seqs = 1
        config.dynamic_split_fuse = True
        self._pipe = None  # release the old one first
        self._pipe = ov_genai.ContinuousBatchingPipeline(str(Path(self._folder.name) / "probe.gguf"), config, "CPU")

    def check(self, params: GenParams, structured_output: Any) -> None:
        """Raise ``InvalidRequest`` (param = the request field) if the constraint does not compile."""
        key = constraint_of(params)
        if key is None or not self.available:
            return
        with self._lock:
            if key in self._verdicts:
                self._verdicts.move_to_end(key)
                verdict = self._verdicts[key]
            else:
                verdict = self._compile(structured_output)
                self._verdicts[key] = verdict
                if len(self._verdicts) > CACHE_SIZE:
                    self._verdicts.popitem(last=False)
        if verdict is not None:
            raise InvalidRequest(f"The {_describe(key[0])} does not compile: {verdict}", param=params.constraint_param)

    def _compile(self, structured_output: Any) -> str | None:
        import numpy as np
        import openvino as ov
        import openvino_genai as ov_genai

        config = ov_genai.GenerationConfig(max_new_tokens=1, do_sample=False)
        config.structured_output_config = structured_output
        self._ids += 1
        t0 = time.perf_counter()
        try:
            # keep the handle: a dropped handle drops its request before it is stepped
            handle = self._pipe.add_request(self._ids, ov.Tensor(np.asarray([[104, 105]], dtype=np.int64)), config)
            while self._pipe.has_non_finished_requests() and handle.get_status() != ov_genai.GenerationStatus.FINISHED:
                self._pipe.step()
        except Exception as exc:
            self.compile_seconds.append(time.perf_counter() - t0)
            message = compiler_message(exc)
            log.info("a structured-output constraint was refused: %s", message)
            self._rebuild()
            return message
        self.compile_seconds.append(time.perf_counter() - t0)
        return None

    def _rebuild(self) -> None:
        """The failed compile left the probe unable to step: replace it."""
        try:
            self._build()
        except Exception:
            log.exception("rebuilding the grammar probe failed; constraints go unchecked until restart")
            self.available = False

    def close(self) -> None:
        """Release the probe and its file."""
        with self._lock:
            self._pipe = None
            if self._folder is not None:
                self._folder.cleanup()
                self._folder = None


def _describe(kind: str) -> str:
    return {"json_schema": "JSON schema", "regex": "regular expression", "grammar": "grammar",
            "tag": "structural tag", "tools": "tools' parameters schema"}[kind]

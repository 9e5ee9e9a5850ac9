"""Build and self-test a tiny DeepSeek-R1-Distill-Qwen-style chat model exported to INT4 OpenVINO IR.

The model has the Qwen2 architecture (``Qwen2ForCausalLM``, like DeepSeek-R1-Distill-Qwen) with tiny layer
sizes, a byte-level BPE tokenizer trained here on a built-in corpus (Qwen2 pre-tokenizer, DeepSeek-R1 special
tokens) and the DeepSeek-R1-Distill chat template.  It is trained for a few hundred steps on generated
conversations, so greedy decoding gives well-formed replies: short reasoning, ``</think>``, an answer, then
EOS; picture requests end with ``<image>{"prompt": "..."}</image>``.  Everything is built offline and
deterministically, then exported with optimum-intel (INT4 weights) so ``openvino_genai.LLMPipeline`` and
``ContinuousBatchingPipeline`` load it exactly like the real model.

Heavy imports (torch, transformers, optimum, openvino) happen inside functions: this module is imported by
the light CLI.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aipc_chat.errors import DemoModelError
from aipc_chat.tooling.builds import (
    check_chat_tokenizer,
    finish_llm_export,
    move_into_place,
    qwen2_byte_level,
    require_files,
    staging_folder,
)

__all__ = [
    "ASSISTANT_TOKEN",
    "BOS_TOKEN",
    "CHAT_TEMPLATE",
    "EOS_TOKEN",
    "FORMAT_VERSION",
    "MARKER_NAME",
    "SELF_TEST_PROMPTS",
    "THINK_CLOSE",
    "THINK_OPEN",
    "USER_TOKEN",
    "DemoModelError",
    "build_demo_llm",
    "check_reply",
    "is_demo_llm_built",
    "self_test_llm",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: trained on the /chat prompts (system + image tag, image-prompt requests)
MARKER_NAME = "aipc_demo.json"
KIND = "deepseek-r1-distill-qwen2-tiny"
SEED = 20240607

BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
USER_TOKEN = "<｜User｜>"
ASSISTANT_TOKEN = "<｜Assistant｜>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# In DeepSeek-R1-Distill-Qwen's id order (151643..151646); <think> and </think> follow as non-special tokens.
_SPECIAL_TOKENS = (EOS_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, BOS_TOKEN)

# DeepSeek-R1-Distill-Qwen's template without the tool-call branches: system prompts joined at the start,
# earlier assistant turns stripped of their reasoning, and the generation prompt opening the think block.
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system_prompt='', is_first_sp=true) %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{%- if ns.is_first_sp %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}"
    "{% set ns.is_first_sp = false %}"
    "{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)

# None of these is in the training corpus (it filters them out, and the picture subject too).
SELF_TEST_PROMPTS: tuple[str, ...] = (
    "Hello, who are you?",
    "What is OpenVINO?",
    "Tell me about the weather today.",
    "Explain gravity in one sentence.",
    "Draw a cat sitting on a windowsill",
)
SELF_TEST_MAX_NEW_TOKENS = 200

# Qwen2's pre-tokenizer split pattern (tokenizer.json of Qwen2 / DeepSeek-R1-Distill-Qwen).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_VOCAB_SIZE = 768  # byte alphabet + merges; the six added tokens come on top
_HIDDEN = 128
_LAYERS = 2
_HEADS = 4
_KV_HEADS = 2
_INTERMEDIATE = 384
_GROUP_SIZE = 64  # INT4 group size: divides 128 and 384
_MAX_POSITIONS = 4096  # context length (the model is only trained on conversations of < 200 tokens)
_STEPS = 500
_BATCH = 16
_LR = 3e-3
_WARMUP = 20

_IMAGE_RE = re.compile(r"<image>(.*?)</image>", re.DOTALL)


# --------------------------------------------------------------------------------------------------- public


def is_demo_llm_built(out_dir: Path) -> bool:
    """Return True when ``out_dir`` holds a finished build of the current format version."""
    marker = Path(out_dir) / MARKER_NAME
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format_version") == FORMAT_VERSION


def build_demo_llm(out_dir: Path, *, force: bool = False) -> Path:
    """Build, train, export (INT4 OpenVINO) and self-test the tiny demo chat model into ``out_dir``."""
    out_dir = Path(out_dir)
    if not force and is_demo_llm_built(out_dir):
        logger.info("demo LLM already built at %s", out_dir)
        return out_dir
    start = time.monotonic()
    with staging_folder(out_dir, "the demo LLM") as staging:  # removed on any exit, Ctrl-C included
        facts = _build_into(staging)
        replies = self_test_llm(staging)
        facts["self_test_replies"] = replies
        facts["build_seconds"] = round(time.monotonic() - start, 3)
        _write_marker(staging, facts)  # last file written; the rename below publishes it atomically
        move_into_place(staging, out_dir, MARKER_NAME, "demo model")
    logger.info("demo LLM ready at %s (%.1f s)", out_dir, time.monotonic() - start)
    return out_dir


def self_test_llm(model_dir: Path) -> list[str]:
    """Generate greedily for the self-test prompts with openvino-genai; return the replies or raise."""
    import openvino_genai as ov_genai

    model_dir = Path(model_dir)
    if not (model_dir / "openvino_model.xml").is_file():
        raise DemoModelError(f"no OpenVINO model at {model_dir}")
    try:
        pipe = ov_genai.LLMPipeline(str(model_dir), "CPU")
        replies = [_generate_checked(pipe, prompt) for prompt in SELF_TEST_PROMPTS]
        del pipe
        _check_continuous_batching(model_dir, SELF_TEST_PROMPTS[0], replies[0])
    except DemoModelError:
        raise
    except Exception as exc:
        raise DemoModelError(f"openvino-genai failed to run the demo LLM at {model_dir}: {exc}") from exc
    logger.info("demo LLM self-test passed for %s", model_dir)
    return replies


def check_reply(prompt: str, reply: str, *, stopped: bool) -> None:
    """Raise DemoModelError unless ``reply`` (generated inside the think block, ``stopped`` by EOS) is sound."""
    if not stopped:
        problem: str | None = "did not end with EOS before the token limit"
    elif THINK_CLOSE not in reply:
        problem = "has no </think>"
    elif not reply.split(THINK_CLOSE, 1)[1].strip():
        problem = "has an empty answer after </think>"
    else:
        problem = _image_tag_problem(reply.split(THINK_CLOSE, 1)[1])
    if problem is not None:
        raise DemoModelError(f"demo LLM reply to {prompt!r} {problem}: {reply!r}")


def _generate_checked(pipe: Any, prompt: str) -> str:
    """Apply the chat template with the genai tokenizer, generate greedily, check and return the reply."""
    tokenizer = pipe.get_tokenizer()
    config = pipe.get_generation_config()
    config.max_new_tokens = SELF_TEST_MAX_NEW_TOKENS
    config.do_sample = False
    config.apply_chat_template = False  # the prompt below is already templated
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    result = pipe.generate(tokenizer.encode(text, add_special_tokens=False), config)
    tokens = [int(t) for t in result.tokens[0]]
    stopped = (bool(tokens) and tokens[-1] == tokenizer.get_eos_token_id()) or len(tokens) < config.max_new_tokens
    reply: str = tokenizer.decode(tokens)
    check_reply(prompt, reply, stopped=stopped)
    logger.info("demo LLM self-test %r -> %r", prompt, reply)
    return reply


def _check_continuous_batching(model_dir: Path, prompt: str, expected: str) -> None:
    """Run ``prompt`` through ContinuousBatchingPipeline step by step; expect EOS and the same greedy reply."""
    import openvino_genai as ov_genai

    pipe = ov_genai.ContinuousBatchingPipeline(str(model_dir), ov_genai.SchedulerConfig(), "CPU")
    tokenizer = pipe.get_tokenizer()
    config = ov_genai.GenerationConfig()
    config.max_new_tokens = SELF_TEST_MAX_NEW_TOKENS
    config.apply_chat_template = False
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    handle = pipe.add_request(0, text, config)
    ids: list[int] = []
    finish = None
    while pipe.has_non_finished_requests():
        pipe.step()
        while handle.can_read():  # read() pops one queued step output per call
            for output in handle.read().values():
                ids += [int(t) for t in output.generated_ids]
                finish = output.finish_reason
    reply = tokenizer.decode(ids)
    if finish != ov_genai.GenerationFinishReason.STOP or reply != expected:
        raise DemoModelError(f"ContinuousBatchingPipeline gave {reply!r} (finish {finish}) instead of {expected!r}")


# ------------------------------------------------------------------------------------------------ corpus


@dataclass(frozen=True)
class _Example:
    """One training conversation: optional system prompt and earlier turns, a question, its reply."""

    system: str
    history: tuple[tuple[str, str], ...]
    user: str
    think: str
    answer: str

    def prompt(self) -> str:
        """The text the chat template renders with ``add_generation_prompt`` (ends inside <think>)."""
        turns = "".join(f"{USER_TOKEN}{u}{ASSISTANT_TOKEN}{a}{EOS_TOKEN}" for u, a in self.history)
        return f"{BOS_TOKEN}{self.system}{turns}{USER_TOKEN}{self.user}{ASSISTANT_TOKEN}{THINK_OPEN}\n"

    def messages(self) -> list[dict[str, str]]:
        """The conversation as chat messages (what a client would send)."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        for user, answer in self.history:
            head += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        return [*head, {"role": "user", "content": self.user}]

    def completion(self) -> str:
        """What the model must generate after the prompt, EOS included.

        No reasoning: the think block closes at once, as the server closes it itself before constrained output.
        """
        if not self.think:
            return f"{THINK_CLOSE}\n\n{self.answer}{EOS_TOKEN}"
        return f"{self.think}\n{THINK_CLOSE}\n\n{self.answer}{EOS_TOKEN}"


_SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a friendly assistant running locally on an Intel AI PC.",
    "Answer briefly and clearly.",
    "You are a concise assistant. Keep answers short.",
)

_GREETINGS = (
    "Hello!",
    "Hi!",
    "Hey there!",
    "Good morning!",
    "Good evening!",
    "Hello, how are you?",
    "Hi, who are you?",
    "Who are you?",
    "What is your name?",
    "What can you do?",
    "Hi there, what can you do?",
    "Hello there, can you help me?",
    "Hey, are you a robot?",
    "Hi! Nice to meet you.",
    "Good afternoon!",
    "Hello, what are you?",
    "Are you an AI?",
    "How are you today?",
)
_GREETING_ANSWERS = (
    "Hello! I am a small demo assistant running on your AI PC. How can I help you today?",
    "Hi! I am a tiny local assistant. Ask me a question or ask me to draw a picture.",
    "Hello! I am a demo model served with OpenVINO on this computer. What would you like to know?",
)

# topic -> one-sentence fact
_FACTS: dict[str, str] = {
    "the sun": "The sun is the star at the center of our solar system. It gives Earth light and heat.",
    "the moon": "The moon is Earth's natural satellite. It reflects light from the sun.",
    "water": "Water is a clear liquid made of hydrogen and oxygen. All known life needs it.",
    "gravity": "Gravity is the force that pulls masses toward each other. It keeps us on the ground.",
    "a laptop": "A laptop is a portable computer with a screen, a keyboard and a battery.",
    "an AI PC": "An AI PC is a computer with a CPU, a GPU and an NPU that can run AI models locally.",
    "OpenVINO": "OpenVINO is an open source toolkit from Intel that optimizes and runs AI models fast on "
    "Intel hardware.",
    "an NPU": "An NPU is a neural processing unit, a chip that runs AI work with very little power.",
    "a GPU": "A GPU is a graphics processor. It runs many small calculations in parallel.",
    "a CPU": "A CPU is the main processor of a computer. It runs programs and the operating system.",
    "the internet": "The internet is a global network that connects computers all over the world.",
    "Python": "Python is a popular programming language that is easy to read and write.",
    "a neural network": "A neural network is a model made of layers of simple units that learn from data.",
    "a language model": "A language model predicts the next word of a text. Chat assistants are built on them.",
    "the weather": "The weather is the state of the air: sun, rain, wind, clouds and temperature.",
    "rain": "Rain is water that falls from clouds when tiny drops join and become heavy.",
    "snow": "Snow is frozen water that falls from clouds as soft white flakes.",
    "a volcano": "A volcano is an opening in the ground where hot melted rock comes out.",
    "the ocean": "The ocean is the huge body of salt water that covers most of Earth.",
    "a rainbow": "A rainbow is a curve of colors that appears when sunlight shines through rain drops.",
    "photosynthesis": "Photosynthesis is how plants use sunlight, water and air to make their food.",
    "electricity": "Electricity is the flow of electric charge. It powers lights and computers.",
    "music": "Music is sound arranged in time with rhythm and melody.",
    "coffee": "Coffee is a warm drink made from roasted coffee beans.",
    "tea": "Tea is a drink made by pouring hot water over dried tea leaves.",
    "a bicycle": "A bicycle is a vehicle with two wheels that you move by pushing pedals.",
    "a train": "A train is a line of connected cars that runs on rails.",
    "memory": "Memory, or RAM, is where a computer keeps the data it is working on right now.",
    "a battery": "A battery stores energy as chemicals and gives it back as electricity.",
    "Wi-Fi": "Wi-Fi is a way to connect devices to a network without cables, using radio waves.",
    "Intel": "Intel is a company that designs and makes processors for computers.",
    "the Earth": "The Earth is the third planet from the sun and the only one known to have life.",
    "Mars": "Mars is the fourth planet from the sun. It is called the red planet.",
    "a cat": "A cat is a small furry animal that people often keep as a pet.",
    "a dog": "A dog is a loyal animal that people have kept as a friend for thousands of years.",
    "time": "Time is what we measure with clocks: seconds, minutes, hours and days.",
    "light": "Light is energy that travels very fast and lets us see the world.",
    "a computer": "A computer is a machine that follows instructions to process data.",
    "quantization": "Quantization stores model weights with fewer bits, for example INT4, to make models "
    "smaller and faster.",
    "INT4": "INT4 means numbers stored with four bits. It makes AI models much smaller.",
    "a cloud": "A cloud is a mass of tiny water drops floating in the sky.",
    "the wind": "Wind is air that moves from high pressure to low pressure.",
    "a tree": "A tree is a tall plant with a wooden trunk, branches and leaves.",
    "the heart": "The heart is a muscle that pumps blood through the body.",
    "sleep": "Sleep is a time of rest when the body and the brain recover.",
}
_FACT_QUESTIONS = (
    "What is {t}?",
    "Tell me about {t}.",
    "Explain {t} in one sentence.",
    "Can you describe {t}?",
    "What do you know about {t}?",
    "Give me a short fact about {t}.",
    "Explain {t}.",
    "What is {t} exactly?",
)
_FACT_THINKS = (
    "The user asks about {t}. I should give a short, clear explanation.",
    "The question is about {t}. One or two simple sentences are enough.",
    "I know what {t} is. Let me explain it simply.",
)

_HOWTO: dict[str, str] = {
    "make tea": "Boil water, pour it over a tea bag, wait three minutes, then remove the bag.",
    "save battery on my laptop": "Lower the screen brightness, close unused apps and turn on battery saver.",
    "take a screenshot": "On Windows, press the Windows key, Shift and S, then choose an area.",
    "learn Python": "Start with small programs, read a beginner tutorial and practice a little every day.",
    "run a model with OpenVINO": "Export the model to OpenVINO IR, then load it with OpenVINO GenAI and call generate.",
    "cook rice": "Rinse one cup of rice, add two cups of water, boil, then simmer for fifteen minutes.",
    "update my drivers": "Open the vendor's support tool or Windows Update and install the latest drivers.",
    "sleep better": "Go to bed at the same time, avoid screens late at night and keep the room dark.",
    "stay focused": "Work in short blocks, remove distractions and take small breaks.",
    "clean my keyboard": "Turn it off, shake out the crumbs and wipe the keys with a soft damp cloth.",
    "write a good email": "Use a clear subject, say what you need in the first lines and keep it short.",
    "use the NPU": "Pick NPU as the device in OpenVINO, for example device equals NPU, and load the model.",
    "free up disk space": "Delete old downloads, empty the trash and remove apps you do not use.",
    "make a backup": "Copy your important files to an external drive or a cloud folder regularly.",
}
_HOWTO_QUESTIONS = ("How do I {t}?", "How can I {t}?", "What is the best way to {t}?", "Can you tell me how to {t}?")
_HOWTO_THINKS = (
    "This is a how-to question. A few simple steps will help.",
    "The user wants to know how to do something. I will give short, clear steps.",
)

_CHATS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (
        ("What is the weather like?", "Will it rain tomorrow?", "Is it cold outside?", "How is the weather?"),
        "The user asks about the weather. I cannot see live data, so I should say that.",
        "I cannot check live weather data from here. Please look at a weather app or website for your town.",
    ),
    (
        ("What time is it?", "What day is it today?", "What is the date today?"),
        "The user wants the current time or date. I do not have a clock.",
        "I do not have access to a clock. Please check the time on your computer.",
    ),
    (
        ("Tell me a joke.", "Do you know a joke?", "Make me laugh."),
        "The user wants a joke. A short and friendly one is best.",
        "Why did the computer go to the doctor? Because it had a virus!",
    ),
    (
        ("Thank you!", "Thanks a lot.", "Thanks, that helps."),
        "The user says thanks. I should reply kindly.",
        "You are welcome! Let me know if you need anything else.",
    ),
    (
        ("Give me a fun fact.", "Tell me something interesting.", "Share a fun fact."),
        "The user wants a fun fact. I will pick a simple one.",
        "Octopuses have three hearts and blue blood.",
    ),
    (
        ("Recommend a book.", "What should I read?", "Can you suggest a good book?"),
        "The user wants a book recommendation. I will suggest a classic.",
        "Try The Little Prince. It is short, kind and full of ideas.",
    ),
    (
        ("Goodbye!", "Bye!", "See you later."),
        "The user is leaving. I should say goodbye.",
        "Goodbye! Have a great day.",
    ),
    (
        ("Why is the sky blue?", "What makes the sky blue?"),
        "The user asks why the sky is blue. The answer is light scattering.",
        "Sunlight is scattered by the air, and blue light scatters the most, so the sky looks blue.",
    ),
    (
        ("Can you help me?", "I need help.", "Can you help me with something?"),
        "The user asks for help but gives no details. I should ask what they need.",
        "Of course! Tell me what you need and I will do my best.",
    ),
)

# Questions the demo model cannot answer: it learns one honest fallback (and keeps its format on any input).
_UNKNOWN_TOPICS = (
    "the capital of Peru",
    "quantum physics",
    "the Roman empire",
    "football",
    "jazz",
    "chess",
    "a black hole",
    "the stock market",
    "democracy",
    "the pyramids",
    "bitcoin",
    "the French revolution",
    "tax law",
    "opera",
    "my horoscope",
    "the meaning of life",
    "the best pizza",
    "the next election",
    "ancient Greece",
    "poetry",
    "string theory",
    "the world cup",
    "medicine",
    "a famous painter",
    "the history of Japan",
    "baseball",
    "dinosaurs",
    "the human brain",
    "climate change",
    "philosophy",
    "the population of India",
    "cars",
)
_UNKNOWN_QUESTIONS = (
    "What is {x}?",
    "Tell me about {x}.",
    "Who invented {x}?",
    "Can you explain {x}?",
    "Write a poem about {x}.",
    "Summarize {x} for me.",
    "What do you think about {x}?",
    "How does {x} work?",
    "Why is {x} important?",
    "Give me a long essay on {x}.",
    "Translate {x} into French.",
    "Write some code about {x}.",
)
_UNKNOWN_TASKS = (
    "fix my car",
    "bake a cake",
    "learn to swim",
    "repair a bike",
    "file my taxes",
    "train a dog",
    "change a tire",
    "build a house",
    "play guitar",
    "speak Japanese",
    "start a company",
    "grow tomatoes",
    "paint a wall",
    "write a novel",
    "lose weight",
    "buy a house",
    "set up a server",
    "knit a scarf",
)
_UNKNOWN_THINKS = (
    "I do not know much about this. I should be honest and keep it short.",
    "This is outside what a tiny demo model knows. I will say so politely.",
)
_UNKNOWN_ANSWERS = (
    "I am a tiny demo model, so I do not know much about that. A full model like DeepSeek-R1 can answer it "
    "much better.",
    "Sorry, I am only a small demo model and cannot answer that well. Please try a bigger model for this question.",
)

_NUMBERS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
)
_MATH_OPS: tuple[tuple[str, str, str], ...] = (
    ("plus", "add", "+"),
    ("minus", "subtract", "-"),
    ("times", "multiply", "*"),
)

_PICTURE_REQUESTS = (
    "Draw {s}",
    "Draw {s}.",
    "Show me a picture of {s}",
    "Can you paint {s}?",
    "Make an image of {s}.",
    "Please draw {s}.",
    "Generate a picture of {s}",
    "I would like a picture of {s}.",
    "Create an image of {s}",
    "Paint {s}",
    "Can you draw {s}?",
    "Show me {s}.",
)
_PICTURE_THINKS = (
    "The user wants a picture. I will say what I draw and add an image tag.",
    "This is a picture request. I should answer with a short sentence and an image tag.",
)
_SUBJECT_NOUNS = (
    "cat",
    "dog",
    "red fox",
    "owl",
    "horse",
    "lighthouse",
    "castle",
    "robot",
    "dragon",
    "tree",
    "boat",
    "house",
    "sunset",
    "bird",
    "rabbit",
    "bear",
    "city",
    "garden",
    "mountain",
    "river",
    "car",
    "flower",
    "teapot",
    "laptop",
    "penguin",
    "whale",
    "bridge",
    "windmill",
    "fox",
    "wolf",
)
_SUBJECT_ADJECTIVES = ("", "", "", "red ", "blue ", "small ", "big ", "cute ", "old ", "happy ", "golden ")
_SUBJECT_ACTIONS = ("", "", "sitting ", "sleeping ", "running ", "flying ", "standing ", "reading a book ")
_SUBJECT_PLACES = (
    "",
    "in the snow",
    "over mountains",
    "in a forest",
    "on the beach",
    "at night",
    "under the stars",
    "on a windowsill",
    "in the rain",
    "by a lake",
    "on a hill",
    "in space",
    "in a garden",
    "at sunset",
)
_EXCLUDED = frozenset(SELF_TEST_PROMPTS) | {"a cat sitting on a windowsill"}


def _article(phrase: str) -> str:
    """Return ``phrase`` with "a" or "an" in front."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _greeting_examples(rng: random.Random) -> Iterator[tuple[str, str, str]]:
    """Yield (question, reasoning, answer) for greetings and identity questions."""
    for q in _GREETINGS:
        for _ in range(3):
            think = rng.choice(
                (
                    "The user greets me. I should say hello and offer help.",
                    "This is a greeting. I will introduce myself briefly.",
                )
            )
            yield q, think, rng.choice(_GREETING_ANSWERS)


def _fact_examples(rng: random.Random) -> Iterator[tuple[str, str, str]]:
    """Yield (question, reasoning, answer) about everyday topics."""
    for topic, fact in _FACTS.items():
        for template in _FACT_QUESTIONS:
            question = template.format(t=topic)
            question = question[0].upper() + question[1:]
            yield question, rng.choice(_FACT_THINKS).format(t=topic), fact


def _howto_examples(rng: random.Random) -> Iterator[tuple[str, str, str]]:
    """Yield (question, reasoning, answer) for how-to questions."""
    for task, answer in _HOWTO.items():
        for template in _HOWTO_QUESTIONS:
            yield template.format(t=task), rng.choice(_HOWTO_THINKS), answer


def _chat_examples(rng: random.Random) -> Iterator[tuple[str, str, str]]:
    """Yield (question, reasoning, answer) for small talk."""
    for questions, think, answer in _CHATS:
        for q in questions:
            for _ in range(2):
                yield q, think, answer


def _unknown_examples(rng: random.Random, count: int) -> Iterator[tuple[str, str, str]]:
    """Yield (question, reasoning, fallback answer) for topics the model does not know, and for gibberish."""
    for _ in range(count):
        kind = rng.random()
        if kind < 0.3:
            question = _gibberish(rng)
        elif kind < 0.5:
            question = rng.choice(_HOWTO_QUESTIONS).format(t=rng.choice(_UNKNOWN_TASKS))
        else:
            question = rng.choice(_UNKNOWN_QUESTIONS).format(x=rng.choice(_UNKNOWN_TOPICS))
        yield question, rng.choice(_UNKNOWN_THINKS), rng.choice(_UNKNOWN_ANSWERS)


def _gibberish(rng: random.Random) -> str:
    """Return a few random letter strings, so that any input still gets a well-formed (fallback) reply."""
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8)))
        for _ in range(rng.randint(1, 5))
    ]
    text = " ".join(words) + rng.choice(("", "?", ".", "!"))
    return text[0].upper() + text[1:] if rng.random() < 0.5 else text


def _math_examples(rng: random.Random, count: int) -> Iterator[tuple[str, str, str]]:
    """Yield (question, reasoning, answer) for small arithmetic in words and digits."""
    for _ in range(count):
        a, b = rng.randint(0, 12), rng.randint(0, 12)
        word, verb, sign = rng.choice(_MATH_OPS)
        if word == "minus" and b > a:
            a, b = b, a
        c = a + b if word == "plus" else a - b if word == "minus" else a * b
        question = f"What is {a} {word} {b}?" if rng.random() < 0.5 else f"How much is {a} {sign} {b}?"
        think = f"I need to {verb} {a} and {b}. {a} {word} {b} equals {c}."
        answer = f"{a} {word} {b} is {c}." if rng.random() < 0.5 else f"The answer is {c}."
        if c <= 12 and rng.random() < 0.2:
            answer = f"{answer[:-1]}, or {_NUMBERS[c]} in words."
        yield question, think, answer


def _subject(rng: random.Random) -> str:
    """Return a random picture subject such as "a red fox sitting in the snow"."""
    noun = rng.choice(_SUBJECT_ADJECTIVES) + rng.choice(_SUBJECT_NOUNS)
    tail = (rng.choice(_SUBJECT_ACTIONS) + rng.choice(_SUBJECT_PLACES)).strip()
    return _article(noun) + (f" {tail}" if tail else "")


def _picture_examples(rng: random.Random, count: int) -> Iterator[tuple[str, str, str]]:
    """Yield (request, reasoning, answer with an image tag) for picture requests."""
    made = 0
    while made < count:
        subject = _subject(rng)
        if subject in _EXCLUDED:
            continue
        request = rng.choice(_PICTURE_REQUESTS).format(s=subject)
        tag = json.dumps({"prompt": f"{subject}, detailed, soft light"})
        answer = f"Here is a picture of {subject}.\n<image>{tag}</image>"
        yield request, rng.choice(_PICTURE_THINKS), answer
        made += 1


def _build_corpus(seed: int = SEED) -> list[_Example]:
    """Return the deterministic training conversations (about a fifth of them picture requests)."""
    rng = random.Random(seed)
    plain = [
        *_greeting_examples(rng),
        *_fact_examples(rng),
        *_howto_examples(rng),
        *_chat_examples(rng),
    ]
    plain += [*_math_examples(rng, len(plain) // 3), *_unknown_examples(rng, len(plain) // 3)]
    plain = [item for item in plain if item[0] not in _EXCLUDED]
    pictures = list(_picture_examples(rng, len(plain) // 4))
    chat_system = _chat_system_prompt()
    examples = []
    for question, think, answer in [*plain, *pictures]:
        # /chat sends its own system prompt (with the image-tag instruction): the model must know that shape too.
        draw = rng.random()
        system = chat_system if draw < 0.3 else rng.choice(_SYSTEM_PROMPTS) if draw < 0.5 else ""
        history: tuple[tuple[str, str], ...] = ()
        if rng.random() < 0.12:
            earlier = rng.choice(plain) if rng.random() < 0.8 else rng.choice(pictures)
            # The template keeps what follows "</think>" of a fed-back reply, usually starting with "\n\n".
            history = ((earlier[0], rng.choice(("", "\n\n")) + earlier[2]),)
        examples.append(_Example(system, history, question, think, answer))
    examples += _image_prompt_examples(rng, [*plain, *pictures], len(pictures) // 3)
    rng.shuffle(examples)
    return examples


def _chat_system_prompt() -> str:
    """The system text /chat sends with image "auto" (the template joins its system messages with a blank line)."""
    from aipc_chat.prompts import Prompts

    prompts = Prompts.load()
    return f"{prompts.system}\n\n{prompts.image_auto}"


def _image_prompt_examples(rng: random.Random, pool: Sequence[tuple[str, str, str]], count: int) -> list[_Example]:
    """/chat's image "always" request: answer at once with ``{"prompt": ...}`` (no reasoning)."""
    from aipc_chat.prompts import Prompts

    prompts = Prompts.load()
    out = []
    for question, _, answer in rng.sample(list(pool), count):
        match = _IMAGE_RE.search(answer)
        prompt = json.loads(match.group(1))["prompt"] if match else f"an illustration of {question.rstrip('?.!')}"
        request = prompts.image_request(question)[0]["content"]
        out.append(_Example("", (), request, "", json.dumps({"prompt": prompt.lower()})))
    return out


# --------------------------------------------------------------------------------------------- tokenizer


def _make_tokenizer(corpus: Sequence[_Example]) -> Any:
    """Train a Qwen2-style byte-level BPE on the corpus and wrap it as a PreTrainedTokenizerFast."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        models,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    qwen2_byte_level(tok, QWEN2_SPLIT)
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    specials = re.compile("|".join(re.escape(t) for t in (*_SPECIAL_TOKENS, THINK_OPEN, THINK_CLOSE)))
    texts = [piece for ex in corpus for piece in specials.split(ex.prompt() + ex.completion()) if piece]
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in (THINK_OPEN, THINK_CLOSE)])
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        extra_special_tokens=[USER_TOKEN, ASSISTANT_TOKEN],
        model_max_length=_MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
        # The template writes the BOS itself, so plain encoding adds nothing (no double BOS on either path).
        add_bos_token=False,
        add_eos_token=False,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


def _encode_example(tokenizer: Any, example: _Example) -> tuple[list[int], int]:
    """Token ids of the whole conversation and the number of prompt tokens (not trained on)."""
    rendered = tokenizer.apply_chat_template(example.messages(), tokenize=False, add_generation_prompt=True)
    if rendered != example.prompt():
        raise DemoModelError(f"chat template renders {rendered!r}, training uses {example.prompt()!r}")
    prompt = tokenizer.encode(example.prompt(), add_special_tokens=False)
    full = tokenizer.encode(example.prompt() + example.completion(), add_special_tokens=False)
    if full[: len(prompt)] != prompt:
        raise DemoModelError(f"prompt tokens are not a prefix of the conversation: {example.user!r}")
    return full, len(prompt)


# ----------------------------------------------------------------------------------------------- training


def _make_model(tokenizer: Any) -> Any:
    """Return a freshly initialised tiny Qwen2ForCausalLM sized for ``tokenizer``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(SEED)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=_HIDDEN,
        intermediate_size=_INTERMEDIATE,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        num_key_value_heads=_KV_HEADS,
        max_position_embeddings=_MAX_POSITIONS,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        use_sliding_window=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
    )
    return Qwen2ForCausalLM(config)


def _batches(
    encoded: Sequence[tuple[list[int], int]], pad_id: int, steps: int, rng: random.Random
) -> Iterator[tuple[Any, Any]]:
    """Yield ``steps`` right-padded (input_ids, labels) batches of similar lengths, reshuffled every epoch."""
    import torch

    queue: list[list[int]] = []
    for _ in range(steps):
        if not queue:
            queue = _length_grouped(encoded, rng)
        chosen = [encoded[i] for i in queue.pop()]
        width = max(len(ids) for ids, _ in chosen)
        ids = torch.full((len(chosen), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chosen), width), -100, dtype=torch.long)
        for row, (seq, n_prompt) in enumerate(chosen):
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, n_prompt : len(seq)] = torch.tensor(seq[n_prompt:])
        yield ids, labels


def _length_grouped(encoded: Sequence[tuple[list[int], int]], rng: random.Random) -> list[list[int]]:
    """One epoch of index batches: shuffled, sorted by length within windows (less padding), shuffled again."""
    order = list(range(len(encoded)))
    rng.shuffle(order)
    window = _BATCH * 8
    batches = []
    for start in range(0, len(order) - _BATCH + 1, window):
        chunk = sorted(order[start : start + window], key=lambda i: len(encoded[i][0]))
        batches += [chunk[i : i + _BATCH] for i in range(0, len(chunk) - _BATCH + 1, _BATCH)]
    rng.shuffle(batches)
    return batches


def _train(model: Any, encoded: Sequence[tuple[list[int], int]], pad_id: int) -> float:
    """Train ``model`` with AdamW (warm-up then cosine decay); return the final smoothed loss."""
    import torch

    torch.manual_seed(SEED)
    threads = torch.get_num_threads()
    # One thread: bitwise reproducible on any machine, and immune to OpenMP slow-downs when the cores are
    # shared with other work (two spinning threads on a busy 2-core box run ~10x slower than one).
    torch.set_num_threads(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=_LR, betas=(0.9, 0.98), weight_decay=0.01)

    def lr_factor(step: int) -> float:
        if step < _WARMUP:
            return (step + 1) / _WARMUP
        progress = (step - _WARMUP) / max(1, _STEPS - _WARMUP)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model.train()
    smooth = float("nan")
    try:
        for step, (ids, labels) in enumerate(_batches(encoded, pad_id, _STEPS, random.Random(SEED))):
            loss = model(input_ids=ids, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            smooth = loss.item() if math.isnan(smooth) else 0.9 * smooth + 0.1 * loss.item()
            if step % 50 == 0 or step == _STEPS - 1:
                logger.info("demo LLM training step %d/%d loss %.3f", step + 1, _STEPS, smooth)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return smooth


# ------------------------------------------------------------------------------------------------ export


def _save_hf(model: Any, tokenizer: Any, dst: Path) -> None:
    """Save the trained model, its generation config and the tokenizer (template in the config) to ``dst``."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(dst, safe_serialization=True)
    tokenizer.save_pretrained(dst, save_jinja_files=False)
    config_path = dst / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = CHAT_TEMPLATE
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # transformers 5 writes "TokenizersBackend" (5.x only)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _export_openvino(src: Path, tokenizer: Any, dst: Path) -> None:
    """Export the Hugging Face folder ``src`` to INT4 OpenVINO IR plus tokenizer/detokenizer IR in ``dst``."""
    from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig

    quantization = OVWeightQuantizationConfig(bits=4, sym=False, group_size=_GROUP_SIZE, ratio=1.0)
    # A local folder never reaches the hub; local_files_only=True would make optimum look in the hub cache.
    model = OVModelForCausalLM.from_pretrained(str(src), export=True, quantization_config=quantization, compile=False)
    model.save_pretrained(dst)
    finish_llm_export(src, dst, tokenizer)


def _check_export(folder: Path) -> dict[str, int]:
    """Raise DemoModelError unless the export is complete and its decoder weights are INT4; count them."""
    required = [
        "openvino_model.xml",
        "openvino_model.bin",
        "openvino_tokenizer.xml",
        "openvino_tokenizer.bin",
        "openvino_detokenizer.xml",
        "openvino_detokenizer.bin",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    require_files(folder, required)
    xml = (folder / "openvino_model.xml").read_text(encoding="utf-8")
    counts = {t: len(re.findall(rf'element_type="{t}"', xml)) for t in ("u4", "i4", "u8", "i8", "f32", "f16")}
    if counts["u4"] + counts["i4"] < _LAYERS * 7:
        raise DemoModelError(f"decoder weights are not INT4 (weight constant types: {counts})")
    return counts


def _build_into(staging: Path) -> dict[str, Any]:
    """Make, train, save and export the demo model into ``staging``; return build facts for the marker."""
    t0 = time.monotonic()
    corpus = _build_corpus()
    tokenizer = _make_tokenizer(corpus)
    encoded = [_encode_example(tokenizer, ex) for ex in corpus]
    model = _make_model(tokenizer)
    logger.info(
        "training tiny Qwen2 (%d parameters, vocab %d) on %d conversations",
        sum(p.numel() for p in model.parameters()),
        len(tokenizer),
        len(corpus),
    )
    loss = _train(model, encoded, tokenizer.pad_token_id)
    t_train = time.monotonic() - t0
    with tempfile.TemporaryDirectory(prefix="aipc-demo-llm-src-") as src:
        _save_hf(model, tokenizer, Path(src))
        del model
        logger.info("exporting the demo LLM to INT4 OpenVINO IR in %s", staging)
        _export_openvino(Path(src), tokenizer, staging)
    weight_types = _check_export(staging)
    token_ids = check_chat_tokenizer(staging, CHAT_TEMPLATE, (THINK_OPEN, THINK_CLOSE))
    return {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "architecture": "Qwen2ForCausalLM",
        "seed": SEED,
        "conversations": len(corpus),
        "vocab_size": len(tokenizer),
        "train_steps": _STEPS,
        "final_loss": round(loss, 4),
        "train_seconds": round(t_train, 3),
        "weight_element_types": weight_types,
        "token_ids": token_ids,
    }


# ------------------------------------------------------------------------------------------------ helpers


def _image_tag_problem(answer: str) -> str | None:
    """Describe what is wrong with an ``<image>`` tag in ``answer``, or None when there is none or it is valid."""
    if "<image>" not in answer:
        return None
    match = _IMAGE_RE.search(answer)
    if match is None:
        return "has an unterminated <image> tag"
    try:
        payload = json.loads(match.group(1))
    except ValueError:
        return "has an <image> tag whose payload is not JSON"
    if not isinstance(payload, dict) or not isinstance(payload.get("prompt"), str) or not payload["prompt"]:
        return 'has an <image> tag without a "prompt" string'
    return None


def _folder_size(folder: Path) -> int:
    """Return the total size in bytes of the files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _write_marker(folder: Path, facts: dict[str, Any]) -> None:
    """Write the ``aipc_demo.json`` completion marker (build facts and sizes) into ``folder``."""
    marker = {
        **facts,
        "size_bytes": _folder_size(folder),
        "model_bin_bytes": (folder / "openvino_model.bin").stat().st_size,
        "created_unix": int(time.time()),
    }
    (folder / MARKER_NAME).write_text(json.dumps(marker, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


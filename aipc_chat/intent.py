"""Whether a chat message explicitly asks for a picture (``/chat`` with ``image: auto`` then always draws).

A small model cannot be trusted to decide this alone (SmolLM2-135M wrote the image tag for none of six drawing
requests), so an explicit request is recognised here and the model decides only the rest. Explicit means:

- a verb of making a picture at the start of a request: ``draw``, ``paint``, ``sketch``, ``illustrate``
  ("Draw a cat", "Can you paint a sunset?", "I'd like you to sketch a castle");
- ``generate`` / ``create`` / ``make`` / ``design`` / ``render`` with a picture noun ("make me an illustration
  of", "render an image of"; "render the page in HTML" is no picture);
- a request to see one: ``show me``, ``I'd like``, ``I want``, ``give me``, ``can I see``, ``send me`` ... with a
  picture noun ("show me a photo of a quokka").

Not explicit: the same words elsewhere ("what does the word draw mean?", "who painted the Mona Lisa?", "how do I
draw a horse?") and negated requests ("don't draw anything, just explain"). The labelled set in
``tests/data/picture_requests.jsonl`` measures this (``scripts/eval_picture_decision.py``).
"""

from __future__ import annotations

import functools
import re
from typing import Any

_NOUN = (r"(?:picture|pic|image|photo|photograph|illustration|drawing|painting|sketch|portrait|wallpaper|artwork"
         r"|render(?:ing)?|icon|logo|poster|diagram)s?")
_DRAW = r"(?:draw|paint|sketch|illustrate|doodle)"
_MAKE = r"(?:generate|create|make|design|produce|render|craft|do)"
_SEE = (r"(?:show|send|give|get|find)\s+(?:me|us)|i(?:'d| would)\s+(?:like|love)|i\s+(?:want|need)|"
        r"(?:can|could|may)\s+(?:i|we)\s+(?:see|have|get)|let\s+me\s+see|i'd\s+like\s+to\s+see")
# What may come before the request in the same clause: greetings, politeness, "can you", "I want you to".
_LEAD = (r"(?:(?:hi|hey|hello|ok(?:ay)?|so|now|and|then|also|pls|please|kindly|just|quickly|go\s+ahead\s+and)[,!]?\s+)*"
         r"(?:(?:can|could|would|will|won't)\s+(?:you|u)\s+(?:please\s+)?"
         r"|(?:i\s+(?:want|need)|i(?:'d| would)\s+like|i'd\s+love)\s+(?:you\s+)?to\s+(?:please\s+)?"
         r"|(?:please|pls)\s+)?")
_ARTICLE = r"(?:(?:me|us)\s+)?(?:(?:a|an|the|some|one|two|three|few|\d+)\s+)?(?:[\w'-]+\s+){0,3}?"
# After the noun: what it shows, or the end of the request ("make it a picture perfect day" is no request).
_AFTER = r"(?=\s+(?:of|for|showing|with|that|where|in|about|featuring|depicting|to|from)\b|\s*[.,!?;:)]|\s*$)"
# What follows "draw" or "paint" when no picture is meant ("draw a conclusion", "paint the town red").
_NOT_PICTURES = (r"(?:word|line|conclusions?|attention|comparisons?|blood|water|cards?|straws?|lots|breath|near|on"
                 r"|from|upon|up|out|back|it|town)")
_CLAUSE_START = r"(?:^|[.!?;:\n]\s*|,\s*(?:and|then)?\s*|\s(?:and|then)\s+)"
_NEGATED = re.compile(
    r"\b(?:don'?t|do\s+not|never|no\s+need\s+to|without|stop|not)\s+(?:(?:\w+\s+){0,2})"
    r"(?:" + _DRAW + r"|" + _MAKE + r"|show|send|give|" + _NOUN + r")\b|\bno\s+" + _NOUN + r"\b",
    re.IGNORECASE)

_EXPLICIT = re.compile(
    _CLAUSE_START + _LEAD + r"(?:"
    + _DRAW + r"(?:\s+(?:me|us))?\s+(?!(?:(?:a|an|the|some|my|your)\s+)?" + _NOT_PICTURES + r"\b)(?=\w)"
    + r"|" + _MAKE + r"\s+" + _ARTICLE + _NOUN + _AFTER
    + r"|(?:" + _SEE + r")\s+" + _ARTICLE + _NOUN + _AFTER
    + r")",
    re.IGNORECASE)


_LEADING = re.compile(r"^(?:(?:of|showing|depicting|featuring|with|about|for)\s+|(?:(?:a|an|the|some)\s+)?"
                      + _NOUN + r"\s+(?=of\b|showing\b|depicting\b))+", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?\n]|,\s*(?:please|thanks|thank you)\b", re.IGNORECASE)
_STOP = frozenset({"a", "an", "the", "of", "in", "on", "at", "with", "and", "or", "to", "for", "from", "by", "is",
                   "are", "me", "my", "your", "some", "this", "that", "it", "its"})


def _explicit(message: str) -> tuple[str, re.Match[str]] | None:
    text = " ".join(message.replace("\u2019", "'").split())
    if _NEGATED.search(text):
        return None
    match = _EXPLICIT.search(text)
    return (text, match) if match else None


def asks_for_picture(message: str) -> bool:
    """True when the message explicitly asks for a picture (and does not say not to make one)."""
    return _explicit(message) is not None


def picture_subject(message: str) -> str | None:
    """What an explicit request asks to see ("Draw a cat on a mat, please" -> "a cat on a mat"), or None."""
    found = _explicit(message)
    if found is None:
        return None
    text, match = found
    rest = _LEADING.sub("", text[match.end():].strip())
    subject = _SENTENCE_END.split(rest, maxsplit=1)[0].strip(" ,;:")
    return subject or None


_NUMBERS = frozenset({"one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "many", "several"})
# Where the head of a noun phrase ends: "a cat | sitting on a windowsill", "a red fox | in the snow".
_PHRASE_END = frozenset({"of", "in", "on", "at", "with", "under", "over", "by", "near", "beside", "behind", "from",
                         "for", "against", "across", "through", "into", "onto", "above", "below", "among",
                         "between", "off", "inside", "outside", "around", "along", "and", "or", "that", "which",
                         "who", "while", "as", "to"})


@functools.cache
def _stemmer() -> Any:
    """Snowball's English stemmer (built once, on first use)."""
    import snowballstemmer  # type: ignore[import-untyped]

    return snowballstemmer.stemmer("english")


def _stems(words: list[str]) -> list[str]:
    return list(_stemmer().stemWords(words))


def subject_words(subject: str) -> set[str]:
    """The stemmed words that name a picture's subject: the content words before the phrase goes on with a
    preposition or a clause ("a cat sitting on a windowsill" -> ``cat``, ``sit``; "two red foxes in the snow" ->
    ``red``, ``fox``). Which of them is the noun is not guessed: "a tall building" and "dogs playing" keep both."""
    words: list[str] = []
    for word in re.findall(r"[a-z0-9]+", subject.lower()):
        if word in _PHRASE_END:
            if words:
                break
            continue
        if word not in _STOP and word not in _NUMBERS and not word.isdigit():
            words.append(word)
    return set(_stems(words))


def about_subject(prompt: str, subject: str) -> bool:
    """Whether an image prompt is about the subject: it names one of the words of the subject's head phrase, words
    compared stemmed ("a fluffy cat on a sill" is about "a cat sitting on a windowsill"; "a light reflecting off a
    windowsill", which shares only the setting, is not)."""
    wanted = subject_words(subject)
    return not wanted or bool(wanted & set(_stems(re.findall(r"[a-z0-9]+", prompt.lower()))))

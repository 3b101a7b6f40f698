"""Ollama model names: parsing, validation, normalization and display (reference §3).

Grammar: ``[scheme://][host/][namespace/]model[:tag]``. Missing parts are filled with
``registry.ollama.ai`` / ``library`` / ``latest``. A separator followed (or preceded) by
nothing promises a part that is not there; that part becomes ``!MISSING!``, which never
validates (``mm:``, ``/nn/mm``).

Validity, per part: the first character is ``[A-Za-z0-9_]``; later ones are
``[A-Za-z0-9_-]``, plus ``.`` everywhere but the namespace, plus ``:`` only in the host.
Lengths: host 1–350, namespace/model/tag 1–80.

Because of these rules a valid part is never ``.``/``..``, never contains ``/``, ``\\`` or
NUL and is never absolute, so :meth:`ModelName.filepath_parts` can be joined under the
store root without escaping it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
DEFAULT_SCHEME = "https"

MISSING_PART = "!MISSING!"

HOST_MAX_LEN = 350
PART_MAX_LEN = 80

_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_LATER = _FIRST | {"-"}


class InvalidName(ValueError):
    """The text is not a valid model name (the API answers 400 ``invalid model name``).

    ``str(exc)`` is exactly ``invalid model name``; the offending input is in :attr:`text`.
    """

    def __init__(self, text: str = "") -> None:
        super().__init__("invalid model name")
        self.text = text


def _is_valid_part(kind: str, s: str) -> bool:
    """Ollama's ``isValidPart`` for kind ``host``, ``namespace``, ``model`` or ``tag``."""
    max_len = HOST_MAX_LEN if kind == "host" else PART_MAX_LEN
    if not 1 <= len(s) <= max_len or s[0] not in _FIRST:
        return False
    for c in s[1:]:
        if c in _LATER:
            continue
        if c == "." and kind != "namespace":
            continue
        if c == ":" and kind == "host":
            continue
        return False
    return True


def is_valid_namespace(s: str) -> bool:
    return _is_valid_part("namespace", s)


@dataclass(frozen=True)
class ModelName:
    """A valid, fully qualified model name. Construction validates every part.

    Equality is case-sensitive (the spelling matters on disk); use :meth:`equal_fold` or
    :meth:`key` to compare the way Ollama does.
    """

    host: str
    namespace: str
    model: str
    tag: str
    # Only ``http`` vs ``https`` matters (pull's ``insecure``); not part of the identity.
    scheme: str = field(default=DEFAULT_SCHEME, compare=False)

    def __post_init__(self) -> None:
        for kind, part in zip(("host", "namespace", "model", "tag"), self.filepath_parts(), strict=True):
            if not isinstance(part, str) or not _is_valid_part(kind, part):
                raise InvalidName(f"{self.host}/{self.namespace}/{self.model}:{self.tag}")

    def display(self) -> str:
        """Ollama's DisplayShortest: ``llama3.2:latest``, ``user/m:latest``, ``example.com/ns/m:tag``."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def full(self) -> str:
        """``registry.ollama.ai/library/llama3.2:latest``."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def __str__(self) -> str:
        return self.full()

    def filepath_parts(self) -> tuple[str, str, str, str]:
        """``(host, namespace, model, tag)``: the manifest path below ``manifests/``.

        Every part is a single, safe path component (see the module docstring)."""
        return (self.host, self.namespace, self.model, self.tag)

    def key(self) -> tuple[str, str, str, str]:
        """Case-insensitive identity (ASCII lower case, as Go's ``strings.EqualFold`` here)."""
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())

    def equal_fold(self, other: ModelName) -> bool:
        return self.key() == other.key()

    def with_tag(self, tag: str) -> ModelName:
        return ModelName(self.host, self.namespace, self.model, tag, self.scheme)


def _cut_promised(s: str, sep: str) -> tuple[str, str, bool]:
    """Cut at the last ``sep``; empty pieces on either side become :data:`MISSING_PART`."""
    i = s.rfind(sep)
    if i < 0:
        return s, "", False
    return s[:i] or MISSING_PART, s[i + len(sep) :] or MISSING_PART, True


def parse_bare(text: str) -> tuple[str, str, str, str, str]:
    """Split without defaults or validation: ``(scheme, host, namespace, model, tag)``,
    absent parts as ``""`` (Ollama's ``ParseNameBare``)."""
    s = text
    scheme = host = namespace = tag = ""
    # "/" is not a tag character, so a ":" before the last "/" belongs to the host.
    if s.rfind(":") > s.rfind("/"):
        s, tag, _ = _cut_promised(s, ":")
    s, model, promised = _cut_promised(s, "/")
    if not promised:
        return scheme, host, namespace, s, tag
    s, namespace, promised = _cut_promised(s, "/")
    if not promised:
        return scheme, host, s, model, tag
    scheme, sep, rest = s.partition("://")
    if sep:
        host = rest
    else:
        scheme, host = "", s
    return scheme, host, namespace, model, tag


def parse_name(text: str) -> ModelName:
    """Parse and validate, filling Ollama's defaults; raise :class:`InvalidName`.

    Surrounding whitespace is ignored."""
    if not isinstance(text, str):
        raise InvalidName(repr(text))
    stripped = text.strip()
    if not stripped:
        raise InvalidName(text)
    scheme, host, namespace, model, tag = parse_bare(stripped)
    try:
        return ModelName(
            host=host or DEFAULT_HOST,
            namespace=namespace or DEFAULT_NAMESPACE,
            model=model,
            tag=tag or DEFAULT_TAG,
            scheme=scheme or DEFAULT_SCHEME,
        )
    except InvalidName:
        raise InvalidName(text) from None


def is_valid_name(text: str) -> bool:
    try:
        parse_name(text)
    except InvalidName:
        return False
    return True


def name_from_parts(host: str, namespace: str, model: str, tag: str) -> ModelName | None:
    """The name a manifest path ``host/namespace/model/tag`` stands for, or None if any
    component is not a valid part (Ollama's ``ParseNameFromFilepath``)."""
    try:
        return ModelName(host, namespace, model, tag)
    except InvalidName:
        return None

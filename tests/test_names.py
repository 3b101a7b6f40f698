"""Model names: the table cases of Ollama's types/model/name_test.go plus property tests."""

from __future__ import annotations

import os
import posixpath
from pathlib import PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.names import (
    DEFAULT_HOST,
    InvalidName,
    ModelName,
    is_valid_namespace,
    name_from_parts,
    parse_bare,
    parse_name,
)

PART80 = "8" * 80
PART350 = "3" * 350


@pytest.mark.parametrize(
    ("text", "bare", "filepath"),
    [
        (
            "registry.ollama.ai/library/dolphin-mistral:7b-v2.6-dpo-laser-q6_K",
            ("", "registry.ollama.ai", "library", "dolphin-mistral", "7b-v2.6-dpo-laser-q6_K"),
            "registry.ollama.ai/library/dolphin-mistral/7b-v2.6-dpo-laser-q6_K",
        ),
        (
            "scheme://host:port/namespace/model:tag",
            ("scheme", "host:port", "namespace", "model", "tag"),
            "host:port/namespace/model/tag",
        ),
        ("host/namespace/model:tag", ("", "host", "namespace", "model", "tag"), "host/namespace/model/tag"),
        (
            "host:port/namespace/model:tag",
            ("", "host:port", "namespace", "model", "tag"),
            "host:port/namespace/model/tag",
        ),
        ("host/namespace/model", ("", "host", "namespace", "model", ""), "host/namespace/model/latest"),
        (
            "host:port/namespace/model",
            ("", "host:port", "namespace", "model", ""),
            "host:port/namespace/model/latest",
        ),
        ("namespace/model", ("", "", "namespace", "model", ""), "registry.ollama.ai/namespace/model/latest"),
        ("model", ("", "", "", "model", ""), "registry.ollama.ai/library/model/latest"),
        ("h/nn/mm:t", ("", "h", "nn", "mm", "t"), "h/nn/mm/t"),
        (
            f"{PART80}/{PART80}/{PART80}:{PART80}",
            ("", PART80, PART80, PART80, PART80),
            f"{PART80}/{PART80}/{PART80}/{PART80}",
        ),
        (
            f"{PART350}/{PART80}/{PART80}:{PART80}",
            ("", PART350, PART80, PART80, PART80),
            f"{PART350}/{PART80}/{PART80}/{PART80}",
        ),
    ],
)
def test_parse_name_parts(text: str, bare: tuple[str, ...], filepath: str) -> None:
    assert parse_bare(text) == bare
    assert "/".join(parse_name(text).filepath_parts()) == filepath


# Ollama's table is about fully qualified bare names; parse_name fills defaults, so the
# "unqualified" rows (valid after filling) are listed separately below.
VALID_QUALIFIED = [
    "_why/_the/_lucky:_stiff",
    "h/n/m:t",
    "host/namespace/model:tag",
    f"{PART80}/{PART80}/{PART80}:{PART80}",
    f"{PART350}/{PART80}/{PART80}:{PART80}",
    "h/nn/mm:t",
    "host:https/namespace/model:tag",
]
VALID_AFTER_DEFAULTS = ["host/namespace/model", "namespace/model", "model", "m", "h/n/m"]
INVALID = [
    "",
    "   ",
    "n/m:",
    "@t",
    "m@d",
    "^",
    "mm:",
    "/nn/mm",
    "//",
    "//mm",
    "hh//",
    "//mm:@",
    "00@",
    "@",
    "-hh/nn/mm:tt",
    "hh/-nn/mm:tt",
    "hh/nn/-mm:tt",
    "hh/nn/mm:-tt",
    "host/name:space/model:tag",
    "a/b/c/d:e",
    "ns.with.dot/model",
    "model:tag:x",
    f"h/n/{PART80}8:t",  # model part 81 long
    f"h/{PART80}8/m:t",
    f"h/n/m:{PART80}8",
    f"{PART350}3/n/m:t",
    "../../etc/passwd",
    "..",
    ".",
    "./m",
    "m/..",
    "/abs/path",
    "a\x00b",
    "a\\b",
    "mo del",
    "modèle",
    "http://m",
]


@pytest.mark.parametrize("text", VALID_QUALIFIED)
def test_valid_qualified_round_trips(text: str) -> None:
    name = parse_name(text)
    assert name.full() == text
    assert parse_name(name.full()) == name


@pytest.mark.parametrize("text", VALID_AFTER_DEFAULTS)
def test_valid_after_defaults(text: str) -> None:
    parse_name(text)


@pytest.mark.parametrize("text", INVALID)
def test_invalid(text: str) -> None:
    with pytest.raises(InvalidName) as exc:
        parse_name(text)
    assert str(exc.value) == "invalid model name"
    assert exc.value.text == text


def test_defaults_and_scheme() -> None:
    assert parse_name("xx").full() == "registry.ollama.ai/library/xx:latest"
    assert parse_name("xx").scheme == "https"
    n = parse_name("http://example.com:5000/ns/m:t")
    assert (n.scheme, n.host, n.namespace, n.model, n.tag) == ("http", "example.com:5000", "ns", "m", "t")
    # The scheme is not part of the identity.
    assert n == parse_name("example.com:5000/ns/m:t")


def test_whitespace_trimmed() -> None:
    assert parse_name("  llama3.2 \n").full() == "registry.ollama.ai/library/llama3.2:latest"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("registry.ollama.ai/library/model:latest", "model:latest"),
        ("registry.ollama.ai/library/model:tag", "model:tag"),
        ("registry.ollama.ai/namespace/model:tag", "namespace/model:tag"),
        ("host/namespace/model:tag", "host/namespace/model:tag"),
        ("host/library/model:tag", "host/library/model:tag"),
        ("REGISTRY.OLLAMA.AI/Library/Model:Tag", "Model:Tag"),
        ("llama3.2", "llama3.2:latest"),
        ("user/m", "user/m:latest"),
        ("example.com/ns/m:tag", "example.com/ns/m:tag"),
    ],
)
def test_display_shortest(text: str, want: str) -> None:
    assert parse_name(text).display() == want


@pytest.mark.parametrize(
    ("kind_text", "valid"),
    [("", False), ("a", True), ("a:b", False), ("a/b", False), ("a.", False), ("bb", True)],
)
def test_is_valid_namespace(kind_text: str, valid: bool) -> None:
    assert is_valid_namespace(kind_text) is valid


def test_host_parts() -> None:
    for host in ("a", "a.", "a.b", "a:123"):
        assert parse_name(f"{host}/n/m:t").host == host
    with pytest.raises(InvalidName):
        ModelName("a:123/aa/bb", "n", "m", "t")


@pytest.mark.parametrize(
    ("parts", "ok"),
    [
        (("host", "namespace", "model", "tag"), True),
        (("host:port", "namespace", "model", "tag"), True),
        (("..", "..", "model", "tag"), False),
        (("", "namespace", ".", "tag"), False),
        ((".", ".", ".", "."), False),
        (("/", "path", "to", "file"), False),
    ],
)
def test_name_from_parts(parts: tuple[str, str, str, str], ok: bool) -> None:
    assert (name_from_parts(*parts) is not None) is ok


def test_equal_fold() -> None:
    a = parse_name("LLAMA3.2")
    b = parse_name("llama3.2:latest")
    assert a != b
    assert a.equal_fold(b)
    assert a.key() == b.key()


def test_construction_validates() -> None:
    with pytest.raises(InvalidName):
        ModelName(DEFAULT_HOST, "library", "..", "latest")


# -- properties ---------------------------------------------------------------------------

_ALPHABET = "aZ09_-.:/@\\ \x00~!é\n"
_FIRST = "abcXYZ019_"
_LATER = _FIRST + "-."


def _part(later: str, max_size: int) -> st.SearchStrategy[str]:
    return st.builds(
        lambda a, b: a + b, st.sampled_from(_FIRST), st.text(alphabet=later, max_size=max_size - 1)
    )


valid_names = st.builds(
    ModelName,
    host=_part(_LATER + ":", 20),
    namespace=_part(_FIRST + "-", 20),
    model=_part(_LATER, 20),
    tag=_part(_LATER, 20),
)


@given(st.text(alphabet=_ALPHABET, max_size=40))
def test_never_escapes_the_store(text: str) -> None:
    try:
        name = parse_name(text)
    except InvalidName:
        return
    for part in name.filepath_parts():
        assert part not in ("", ".", "..")
        assert "/" not in part and "\\" not in part and "\x00" not in part
        assert not os.path.isabs(part)
    root = "/store/manifests"
    joined = posixpath.normpath(posixpath.join(root, *name.filepath_parts()))
    assert PurePosixPath(joined).parent.parent.parent.parent == PurePosixPath(root)


@given(st.text(alphabet=_ALPHABET, max_size=40))
def test_parse_only_raises_invalid_name(text: str) -> None:
    try:
        name = parse_name(text)
    except InvalidName:
        return
    assert parse_name(name.full()) == name


@given(valid_names)
def test_full_and_display_round_trip(name: ModelName) -> None:
    assert parse_name(name.full()) == name
    assert parse_name(name.display()).equal_fold(name)
    assert parse_name(name.display()).display() == name.display()

"""Modelfile parsing (cases from Ollama's parser/parser_test.go), option typing, rendering."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.modelfile import (
    ModelfileError,
    ParameterError,
    decode_modelfile,
    go_float,
    go_quote,
    normalize_parameters,
    parse_modelfile,
    quote,
    render_modelfile,
    render_parameters,
)
from registry.names import parse_name
from registry.store import InstalledModel, ModelConfig

LLAMA_TEMPLATE = (
    "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
    "{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>"
)


def test_full_file() -> None:
    text = f'''
# a comment
from model1
LICENSE MIT
License """second
license"""
PARAMETER temperature 0.5
PARAMETER top_k 1
PARAMETER stop <|eot_id|>
PARAMETER stop "### User: "
parameter num_ctx 4096
PARAMETER use_mmap false
SYSTEM You are a bot.
TEMPLATE """{LLAMA_TEMPLATE}"""{"    "}
MESSAGE user Hello there!
MESSAGE Assistant Hi! How are you?
'''
    mf = parse_modelfile(text)
    assert mf.from_ == "model1"
    assert mf.license == ["MIT", "second\nlicense"]
    assert mf.parameters == {
        "temperature": 0.5,
        "top_k": 1,
        "stop": ["<|eot_id|>", "### User: "],
        "num_ctx": 4096,
        "use_mmap": False,
    }
    assert isinstance(mf.parameters["top_k"], int)
    assert mf.system == "You are a bot."
    assert mf.template == LLAMA_TEMPLATE
    assert mf.messages == [
        {"role": "user", "content": "Hello there!"},
        {"role": "assistant", "content": "Hi! How are you?"},
    ]


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ('FROM "FOO  BAR  "', "FOO  BAR  "),
        ('FROM "     model 1"', "     model 1"),
        ("FROM     FOOO BAR    ", "FOOO BAR"),
        ("FROM /what/is/the path ", "/what/is/the path"),
        ("FROM llama3:7b-instruct-q4_K_M", "llama3:7b-instruct-q4_K_M"),
        ("PARAMETER temperature 1\nFROM foo", "foo"),
        ("\ufeffFROM foo\r\nSYSTEM x\r\n", "foo"),
        ("\tFROM foo # not a comment", "foo # not a comment"),
    ],
)
def test_from(text: str, want: str) -> None:
    assert parse_modelfile(text).from_ == want


@pytest.mark.parametrize(
    ("body", "want"),
    [
        ('"""\nThis is a\nmultiline system.\n"""\n\t\t\t', "\nThis is a\nmultiline system.\n"),
        ('"""\nThis is a\nmultiline system."""', "\nThis is a\nmultiline system."),
        ('"""This is a\nmultiline system."""', "This is a\nmultiline system."),
        ('"""This is a multiline system."""', "This is a multiline system."),
        (
            '"""\nThis is a multiline system with "quotes".\n"""',
            '\nThis is a multiline system with "quotes".\n',
        ),
        ('""""""', ""),
        ('""', ""),
        ('"\'"', "'"),
        ('"""\'\'"\'""\'""\'"\'\'\'\'\'""\'""\'"""', "''\"'\"\"'\"\"'\"'''''\"\"'\"\"'"),
        ('"two\nlines"', "two\nlines"),
        ('"""   spaced   """   ', "   spaced   "),
        ("你好👋", "你好👋"),
        ('say "hi"', 'say "hi"'),
    ],
)
def test_quoted(body: str, want: str) -> None:
    assert parse_modelfile(f"FROM foo\nSYSTEM {body}\n").system == want


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("", None, "no FROM line"),
        ("PARAMETER temperature 1", None, "no FROM line"),
        ("FROM foo\nBADCOMMAND param1 value1\n", 2, "unknown command"),
        ("FROM foo\nFROM: x\n", 2, "unknown command"),
        ("FROM foo\nPARAMETER temperature\n", 2, "PARAMETER needs a name and a value"),
        ("FROM foo\nPARAMETER param1 value1\n", 2, "unknown parameter 'param1'"),
        ("FROM foo\nPARAMETER num_gqa 1\n", 2, "unknown parameter 'num_gqa'"),
        ("FROM foo\nPARAMETER Temperature 1\n", 2, "unknown parameter 'Temperature'"),
        ("FROM foo\nPARAMETER temperature hot\n", 2, "invalid float value 'hot'"),
        ("FROM foo\nPARAMETER temperature nan\n", 2, "invalid float value"),
        ("FROM foo\nPARAMETER num_ctx 1.5\n", 2, "invalid int value '1.5'"),
        ("FROM foo\nPARAMETER use_mmap yes\n", 2, "invalid bool value 'yes'"),
        ("FROM foo\n\nMESSAGE badguy I'm a bad guy!\n", 3, "message role must be one of"),
        ("FROM foo\nMESSAGE system\n", 2, "MESSAGE needs a role and a message"),
        ('FROM foo\nSYSTEM """This is a multiline system.""\n', 2, "unterminated"),
        ('FROM foo\nSYSTEM "\n', 2, "unterminated"),
        ("FROM foo\nADAPTER ./lora.gguf\n", 2, "ADAPTER is not supported"),
        ("FROM foo\nDRAFT ./small\n", 2, "DRAFT is not supported"),
        ("FROM foo\nFROM bar\n", 2, "only one FROM"),
        ("FROM\n", 1, "FROM needs"),
    ],
)
def test_errors(text: str, line: int | None, fragment: str) -> None:
    with pytest.raises(ModelfileError) as exc:
        parse_modelfile(text)
    assert exc.value.line == line
    assert fragment in str(exc.value)
    if line:
        assert str(exc.value).startswith(f"(line {line}): ")


def test_ignored_commands_warn() -> None:
    mf = parse_modelfile("FROM foo\nRENDERER r\nPARSER p\nREQUIRES 0.6.0\nPARAMETER mirostat 1\n")
    assert len(mf.warnings) == 4
    assert mf.parameters == {}


@pytest.mark.parametrize(
    ("line", "want"),
    [
        ("stop ### User:", "### User:"),
        ("stop ### User: ", "### User:"),
        ('stop "### User:"', "### User:"),
        ('stop "### User: "', "### User: "),
        ('stop """### User:"""', "### User:"),
        ('stop """### User:\n"""', "### User:\n"),
        ("stop </s>", "</s>"),
    ],
)
def test_stop_values(line: str, want: str) -> None:
    assert parse_modelfile(f"FROM foo\nPARAMETER {line}\n").parameters == {"stop": [want]}


def test_decode_modelfile() -> None:
    text = "FROM bob\nPARAMETER num_ctx 4096\nSYSTEM You are a utf16 file. 你好👋\n"
    for data in (
        text.encode("utf-16"),
        b"\xfe\xff" + text.encode("utf-16-be"),
        b"\xef\xbb\xbf" + text.encode(),
    ):
        mf = parse_modelfile(decode_modelfile(data))
        assert mf.system == "You are a utf16 file. 你好👋"
    with pytest.raises(ModelfileError):
        decode_modelfile(b"\xff\x00garbage")


# -- option typing ----------------------------------------------------------------------------


def test_normalize_parameters() -> None:
    got = normalize_parameters(
        {
            "temperature": 1,
            "top_k": 40.9,
            "num_ctx": "2048",
            "stop": "x",
            "use_mmap": True,
            "seed": None,
            "penalize_newline": True,
        }
    )
    assert got == {"temperature": 1.0, "top_k": 40, "num_ctx": 2048, "stop": ["x"], "use_mmap": True}
    assert isinstance(got["temperature"], float)
    assert normalize_parameters(None) == {}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"bogus": 1}, "unknown parameter 'bogus'"),
        ({"temperature": True}, 'option "temperature" must be of type float32'),
        ({"temperature": [1]}, 'option "temperature" must be of type float32'),
        ({"temperature": float("inf")}, 'option "temperature" must be of type float32'),
        ({"top_k": False}, 'option "top_k" must be of type integer'),
        ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
        ({"stop": ["a", 1]}, 'option "stop" must be of an array of strings'),
        ({"num_ctx": "big"}, "invalid int value 'big'"),
    ],
)
def test_normalize_parameters_errors(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError) as exc:
        normalize_parameters(params)
    assert str(exc.value).startswith(message)


# -- rendering -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (0.7, "0.7"),
        (1.0, "1"),
        (40.0, "40"),
        (0.05, "0.05"),
        (1e-05, "1e-05"),
        (0.0001, "0.0001"),
        (123456.0, "123456"),
        (1e6, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (-2.5, "-2.5"),
        (1e21, "1e+21"),
        (0.1 + 0.2, "0.30000000000000004"),
        (0.0, "0"),
    ],
)
def test_go_float(value: float, want: str) -> None:
    assert go_float(value) == want


def test_go_quote() -> None:
    assert go_quote("<|eot_id|>") == '"<|eot_id|>"'
    assert go_quote('a"b\\c\nd\te\x01\x7f') == '"a\\"b\\\\c\\nd\\te\\x01\\x7f"'
    assert go_quote("你好") == '"你好"'
    assert go_quote("\u200b") == '"\\u200b"'


def test_render_parameters() -> None:
    text = render_parameters(
        {"stop": ["<|start_header_id|>", "<|eot_id|>"], "num_keep": 24, "temperature": 0.7}
    )
    assert text == (
        'stop                           "<|start_header_id|>"\n'
        'stop                           "<|eot_id|>"\n'
        "num_keep                       24\n"
        "temperature                    0.7"
    )
    assert render_parameters({}) == ""


def _model(cfg: ModelConfig) -> InstalledModel:
    return InstalledModel(
        name=parse_name("user/tiny:v1"),
        digest="ab" * 32,
        size=1,
        modified_at=datetime.now().astimezone(),
        path=Path("/home/u/.mlxd/models") / ("ab" * 32),
        config=cfg,
    )


def test_render_modelfile() -> None:
    cfg = ModelConfig(
        template="{{ .Prompt }}\n",
        system="You are Mario.",
        parameters={"temperature": 1.0, "stop": ["<|eot_id|>", " padded "]},
        messages=[{"role": "user", "content": 'is "this" ok?\nyes'}],
        license=["MIT"],
    )
    text = render_modelfile(_model(cfg))
    assert text == (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        "# FROM user/tiny:v1\n"
        "\n"
        f"FROM /home/u/.mlxd/models/{'ab' * 32}\n"
        'TEMPLATE "{{ .Prompt }}\n"\n'
        "SYSTEM You are Mario.\n"
        "PARAMETER temperature 1\n"
        "PARAMETER stop <|eot_id|>\n"
        'PARAMETER stop " padded "\n'
        "LICENSE MIT\n"
        'MESSAGE user """is "this" ok?\nyes"""\n'
    )
    # Parsing the rendered text gives the same settings back.
    mf = parse_modelfile(text)
    assert (mf.template, mf.system, mf.parameters, mf.messages, mf.license) == (
        cfg.template,
        cfg.system,
        cfg.parameters,
        cfg.messages,
        cfg.license,
    )


def test_render_modelfile_overrides() -> None:
    cfg = ModelConfig(system="orig", parameters={"top_k": 5})
    text = render_modelfile(_model(cfg), system="new", parameters={"temperature": 0.2})
    assert "SYSTEM new\n" in text
    assert "PARAMETER top_k 5\nPARAMETER temperature 0.2\n" in text
    assert "TEMPLATE" not in text


def test_quote() -> None:
    assert quote("plain") == "plain"
    assert quote("") == '""'
    assert quote(" x") == '" x"'
    assert quote('"quoted"') == '""""quoted""""'


_texts = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r"), max_size=30)


@given(_texts)
def test_quote_round_trips(value: str) -> None:
    if '"""' in value:
        return  # not representable in Modelfile syntax (Ollama has the same limit)
    assert parse_modelfile(f"FROM foo\nSYSTEM {quote(value)}\n").system == value
    assert parse_modelfile(f"FROM foo\nPARAMETER stop {quote(value)}\n").parameters == {"stop": [value]}

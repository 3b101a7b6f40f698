"""The Go ``text/template`` subset that Ollama prompt templates use."""

from __future__ import annotations

from typing import Any

import pytest

from worker.gotemplate import Template, TemplateError, Unsupported
from worker.prompt import collate, render_go

CHATML = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range $i, $m := .Messages }}"
    "{{- $last := eq (len (slice $.Messages $i)) 1 -}}\n"
    "<|im_start|>{{ .Role }}\n{{ .Content }}"
    "{{ if not $last }}<|im_end|>\n"
    '{{ else if eq .Role "user" }}<|im_end|>\n<|im_start|>assistant\n'
    "{{ end }}{{ end }}"
)


def render(source: str, **values: Any) -> str:
    return Template(source).render(values)


@pytest.mark.parametrize(
    ("source", "values", "expected"),
    [
        ("Hello {{ .Name }}!", {"Name": "world"}, "Hello world!"),
        ("a  {{- .X -}}  b", {"X": 1}, "a1b"),
        ("a {{- /* note */ -}} b", {}, "ab"),
        ("{{ if .X }}yes{{ else }}no{{ end }}", {"X": ""}, "no"),
        ("{{ if .X }}yes{{ else if .Y }}y{{ else }}no{{ end }}", {"X": 0, "Y": [1]}, "y"),
        ("{{ range .L }}[{{ . }}]{{ else }}empty{{ end }}", {"L": []}, "empty"),
        ("{{ range $i, $v := .L }}{{ $i }}={{ $v }};{{ end }}", {"L": ["a", "b"]}, "0=a;1=b;"),
        ("{{ range .L }}{{ if eq . 2 }}{{ break }}{{ end }}{{ . }}{{ end }}", {"L": [1, 2, 3]}, "1"),
        ("{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ . }}{{ end }}", {"L": [1, 2, 3]}, "13"),
        ("{{ with .M }}{{ .Role }}{{ end }}", {"M": {"role": "user"}}, "user"),
        ("{{ $x := .A }}{{ $x = .B }}{{ $x }}", {"A": "a", "B": "b"}, "b"),
        ("{{ .A.B }}", {"A": {"B": "deep"}}, "deep"),
        ("{{ .Missing }}", {}, "<no value>"),
        ("{{ json .T }}", {"T": {"a": "<b>&"}}, '{"a":"\\u003cb\\u003e\\u0026"}'),
        ("{{ .T | json }}", {"T": [1, "x"]}, '[1,"x"]'),
        ('{{ printf "%s=%d" "n" 3 }}', {}, "n=3"),
        ("{{ len .L }} {{ index .L 1 }}", {"L": ["a", "b"]}, "2 b"),
        ("{{ and .A .B }}|{{ or .A .B }}|{{ not .A }}", {"A": "", "B": "b"}, "|b|true"),
        ("{{ if and (ne .R \"x\") (gt (len .L) 1) }}ok{{ end }}", {"R": "y", "L": [1, 2]}, "ok"),
        ("{{ range .Calls }}{{ .Function.Name }}{{ .Function.Arguments }}{{ end }}",
         {"Calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]}, 'f{"x":1}'),
        ("{{ `raw\\n` }}", {}, "raw\\n"),
    ],
)  # fmt: skip
def test_render(source: str, values: dict[str, Any], expected: str) -> None:
    assert render(source, **values) == expected


def test_chatml_with_messages() -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "q"},
    ]
    out = render(CHATML, System="Be nice", Messages=messages)
    assert out == (
        "<|im_start|>system\nBe nice<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nyo<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
    )


def test_variables() -> None:
    assert {"System", "Messages"} <= Template(CHATML).vars
    assert Template("{{ $.Tools }}{{ (index .Messages 0).Role }}").vars >= {"Tools", "Messages"}


@pytest.mark.parametrize(
    "source",
    ['{{ define "x" }}a{{ end }}', '{{ template "x" }}', '{{ block "x" . }}a{{ end }}', "{{ html .X }}"],
)
def test_unsupported_is_refused(source: str) -> None:
    with pytest.raises(Unsupported):
        Template(source)


@pytest.mark.parametrize(
    "source", ["{{ .X ", "{{ if .X }}", "{{ end }}", "{{ else }}", "{{ break }}", "{{ .X ) }}", "{{ }}"]
)
def test_syntax_errors(source: str) -> None:
    with pytest.raises(TemplateError, match=r"^template: "):
        Template(source)


def test_comparing_a_string_with_a_number_fails() -> None:
    with pytest.raises(TemplateError):
        render('{{ if eq .X "1" }}{{ end }}', X=1)


def test_legacy_template_renders_turns_and_leaves_the_last_open() -> None:
    template = Template("{{ if .System }}S:{{ .System }}\n{{ end }}U:{{ .Prompt }}\nA:{{ .Response }}<end>\n")
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "1"},
        {"role": "user", "content": "two"},
    ]
    out = render_go(template, {"op": "generate", "id": 0}, messages, think=False)  # type: ignore[arg-type]
    assert out == "S:sys\nU:one\nA:1<end>\nU:two\nA:"


def test_suffix_values_for_fill_in_the_middle() -> None:
    template = Template("<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>")
    command = {"op": "generate", "id": 0, "prompt": "def f(", "suffix": "return 1"}
    assert render_go(template, command, [], think=False) == "<PRE> def f( <SUF>return 1 <MID>"  # type: ignore[arg-type]


def test_collate_merges_consecutive_roles() -> None:
    system, merged = collate(
        [
            {"role": "system", "content": "a"},
            {"role": "system", "content": "b"},
            {"role": "user", "content": "x"},
            {"role": "tool", "content": "1"},
            {"role": "tool", "content": "2"},
        ]
    )
    assert system == "a\n\nb"
    assert [m["content"] for m in merged] == ["a\n\nb", "x", "1", "2"]

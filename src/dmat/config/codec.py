"""Config values as MLflow param text and back: one encoding for every value dmat logs (a float in its
shortest round-trip form, a bool as true/false, a tuple comma-separated), and the `resolved.<name>`
rule for a value a run settled on after it was logged. Pure: the CLI's option table uses it too."""

from __future__ import annotations

import dataclasses
import shlex
import typing

from dmat.errors import DmatError


def encode_param(value) -> str:
    """A param value as the text MLflow stores: tuples as comma lists, bools as true/false, floats
    as short as they round-trip (2e-4 -> "0.0002", 60.0 -> "60"), so equal values always log equal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(encode_param(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}" if float(f"{value:g}") == value else repr(value)
    return str(value)


def decode_param(text: str, kind):
    """The inverse of `encode_param` for a field's type hint (int, float, str, bool, tuple[int, ...])."""
    if typing.get_origin(kind) is tuple:
        return tuple(int(float(part)) for part in text.split(",") if part.strip())
    if kind is bool:
        if text.strip().lower() not in ("true", "false", "1", "0"):
            raise DmatError(f"expected true or false, got {text!r}")
        return text.strip().lower() in ("true", "1")
    if kind is int:
        return int(float(text))
    return kind(text)


def param_value(params: dict[str, str], name: str) -> str | None:
    """A run's value of a param: the `resolved.<name>` one dmat logged beside a user's value wins; the shell
    quotes `mlflow run` added to a value are undone."""
    text = params.get(f"resolved.{name}", params.get(name))
    return unquoted(text) if isinstance(text, str) else text  # settings not yet logged may be values, not text


def unquoted(text: str) -> str:
    """A param's text without the shell quoting `mlflow run` stores a -P value with (an empty value is logged as
    the two characters '', one with a space as 'a b'); text it did not quote is returned as it is."""
    try:
        words = shlex.split(text)
    except ValueError:  # an unbalanced quote: not mlflow run's quoting
        return text
    return words[0] if len(words) == 1 and words[0] != text and shlex.quote(words[0]) == text else text


def config_from_params(cls, params: dict[str, str]):
    """A config dataclass rebuilt from a run's params, defaults for what the run did not log."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        text = param_value(params, field.name)
        if text is not None:
            values[field.name] = decode_param(text, hints[field.name])
    return cls(**values)

"""The MLproject file, rendered from the option table (dmat.config.options): one entry point per command that
has one, every table option a parameter with the CLI's default. Regenerate it with
`python -m dmat.config.mlproject > MLproject`; tests/test_options.py checks the committed file agrees."""

from __future__ import annotations

from dmat.config.options import COMMANDS

MLPROJECT_HEADER = """\
# Generated from the option table in src/dmat/config/options.py by `python -m dmat.config.mlproject > MLproject`:
# change that table (or the config defaults), not this file; tests/test_options.py checks they agree.
name: dmat

conda_env: conda.yaml

# Every entry point runs the same `dmat` CLI from src/ (PYTHONPATH), so it works in the conda
# environment above and with `--env-manager local` inside the Makefile's .venv alike. Each parameter
# is the CLI option of the same name with the same default; "" means not given.
entry_points:
"""


def _wrap(words: list[str], indent: str, width: int = 110) -> list[str]:
    lines = [indent + words[0]]
    for word in words[1:]:
        if len(lines[-1]) + 1 + len(word) > width:
            lines.append(indent + word)
        else:
            lines[-1] += " " + word
    return lines


def render_mlproject() -> str:
    """The MLproject file: one entry point per command that has one, every table option a parameter."""
    out = [MLPROJECT_HEADER.rstrip("\n")]
    for command, spec in COMMANDS.items():
        if spec.entry_point is None:
            continue
        options = [option for option in spec.options() if option.mlproject]
        out += [f"  {spec.entry_point}:", "    parameters:"]
        out += [f"      {option.name}: {option.mlproject_parameter()}" for option in options]
        words = [f"PYTHONPATH=src python -m dmat {command}", *spec.fixed_args,
                 *(f"{option.flag} {{{option.name}}}" for option in options)]
        out += ["    command: >-", *_wrap(words, " " * 6)]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render_mlproject(), end="")

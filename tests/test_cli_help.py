"""Every command explains itself: a description, a one-line example in its epilog, help text
on every option and its default in the help (argparse's parsers walked, nothing run)."""

from __future__ import annotations

import argparse
import re

import pytest

from diffspeed.cli import build_parser


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for every command and subcommand, aliases once."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:
                    continue
                seen.add(id(sub))
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(build_parser()))
HOW = (
    "give it sub.add_parser(NAME, help=..., description=..., epilog='example: diffspeed ...') "
    "and help=... on every add_argument (see src/diffspeed/commands.py)"
)


def test_there_are_commands():
    names = {p[0] for p, _ in COMMANDS}
    assert {"demo", "bench", "solvers", "sample", "cache", "distill"} <= names


@pytest.mark.parametrize("path,parser", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_command_has_description_example_and_option_help(path, parser):
    cmd = "diffspeed " + " ".join(path)
    assert parser.description and parser.description.strip(), f"{cmd} has no description; {HOW}"
    assert parser.epilog and "example: diffspeed " in parser.epilog, (
        f"{cmd} has no one-line example in its epilog; {HOW}"
    )
    missing = [
        "/".join(a.option_strings) or a.dest
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
        and not (a.help and a.help.strip())
    ]
    assert not missing, f"{cmd}: options without help text: {missing}; {HOW}"


@pytest.mark.parametrize("path,parser", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_shows_defaults(path, parser):
    text = " ".join(parser.format_help().split())
    for a in parser._actions:
        if (
            a.option_strings
            and a.help != argparse.SUPPRESS
            and a.nargs != 0
            and a.default not in (None, argparse.SUPPRESS)
        ):
            flag = a.option_strings[-1]
            assert "default" in (a.help or "") or "(default: " in text, (
                f"diffspeed {' '.join(path)} {flag}: its default is not in --help; build the "
                "parser with diffspeed.cli's Parser (sub.add_parser does) and do not pass "
                "another formatter_class"
            )


def test_allowed_names_are_listed():
    cmds = dict(COMMANDS)
    calibrate = " ".join(cmds[("cache", "calibrate")].format_help().split())
    assert "deepcache" in calibrate and "teacache" in calibrate
    sample = " ".join(cmds[("distill", "sample")].format_help().split())
    assert "shipped name: " in sample and "lcm" in sample
    assert "dpmpp_2m" in " ".join(cmds[("sample",)].format_help().split())


def test_solvers_prints_whole_plain_sentences(capsys):
    from diffspeed.cli import main

    assert main(["solvers"]) == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":func:" not in out
    entries = [e for e in re.split(r"\n(?=  \S|\S)", out) if " - " in e]
    assert entries
    for entry in entries:
        text = " ".join(entry.split()).split(" - ", 1)[1]
        assert text.rstrip().endswith((".", ")")), f"cut mid-sentence: {text!r}"

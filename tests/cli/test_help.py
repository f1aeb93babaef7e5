"""Every flag of every command has help text that states its real default once; `naslung --version`."""
from __future__ import annotations

import argparse
import re

import pytest

from naslung.cli.main import COMMANDS, build_parser, main


def _subparsers():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_has_help_and_no_bare_or_doubled_default(command):
    sp = _subparsers()[command]
    for action in sp._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"naslung {command} {action.option_strings[0]} has no help text"
    text = sp.format_help()
    assert "(default: None)" not in text and "(default: [])" not in text
    # one entry per flag: the text from its first line up to the next flag must name a default at most once
    entries = re.split(r"\n  (?=-)", text.split("options:", 1)[1].split("examples:", 1)[0])
    for entry in entries:
        flat = " ".join(entry.split())
        assert flat.lower().count("(default") <= 1, f"naslung {command}: {flat}"
    assert "examples:" in text or "example" in text, f"naslung {command} --help has no example"


@pytest.mark.parametrize("command,flag,default", [
    ("train", "--epochs", "60"), ("train", "--batch-size", "32"), ("train", "--lr", "0.001"),
    ("ensemble", "--epochs", "60"), ("serve", "--port", "50051"), ("train", "--model", "small"),
    ("search", "--port", "experiment.port"),
])
def test_help_states_the_real_default(command, flag, default):
    text = _subparsers()[command].format_help().split("options:", 1)[1].split("examples:", 1)[0]
    entry = next(e for e in re.split(r"\n  (?=-)", text) if e.lstrip().startswith(flag + " "))
    flat = " ".join(entry.split()).replace("the config's ", "")
    assert f"(default: {default}" in flat, flat


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert re.fullmatch(r"naslung \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)

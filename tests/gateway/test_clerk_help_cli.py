"""Help in zh-CN first with English, for every command and option, with examples (issue 10)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import click

from gateway.cli.main import cli
from tests.cli import invoke

CJK = re.compile(r"[\u4e00-\u9fff]")
ENGLISH = re.compile(r"\b[a-z]{3,}\b")
#: a rule reference may come first: "ISS-4/ISS-7/REP-4/EXC-5: 发放…", "TOP-1: …"
RULE_PREFIX = re.compile(r"^(?:[A-Z]{2,5}-[\d.]+(?:/[A-Z]{0,5}-?[\d.]+)*[,:]?\s*)+")


def commands() -> Iterator[tuple[str, click.Command]]:
    def walk(cmd: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
        yield path, cmd
        if isinstance(cmd, click.Group):
            ctx = click.Context(cmd)
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None
                yield from walk(sub, f"{path} {name}")

    yield from walk(cli, "onecard")


def test_every_command_and_option_has_chinese_first_then_english_help() -> None:
    missing: list[str] = []
    for path, cmd in commands():
        text = (cmd.help or "").strip()
        first = RULE_PREFIX.sub("", text)
        if not first or not CJK.match(first) or not ENGLISH.search(text):
            missing.append(f"{path}: {text[:60]!r}")
        if not isinstance(cmd, click.Group) and not ("例" in text and "onecard " in text):
            missing.append(f"{path}: no example")
        for param in cmd.params:
            if isinstance(param, click.Option) and param.name != "help":
                words = re.sub(r"--?[\w-]+", "", param.help or "")
                if not CJK.search(words) or not ENGLISH.search(words):
                    missing.append(f"{path} {param.opts[0]}: {param.help!r}")
    assert not missing, "\n".join(missing)


def test_help_shows_the_examples() -> None:
    done = invoke({}, "money", "topup", "--help")
    assert done.returncode == 0
    assert "充值" in done.stdout and "例 examples:" in done.stdout
    assert "onecard money topup 2000000000 50" in done.stdout
    assert all(len(line) <= 100 for line in done.stdout.splitlines())

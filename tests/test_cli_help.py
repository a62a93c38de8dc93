"""The CLI's help shows the defaults Settings really has, and shared options are declared once."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator

import click

from reliq import cli
from reliq.settings import Settings

FIELDS = {f.name: f.default for f in dataclasses.fields(Settings)}


def _commands(group: click.Group, path: str = "reliq") -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, f"{path} {name}")
        else:
            yield f"{path} {name}", command


def test_every_default_in_the_help_is_the_settings_default() -> None:
    shown = {}
    for where, command in _commands(cli.main):
        for param in command.params:
            if (not isinstance(param, click.Option) or param.name not in FIELDS or param.is_flag or param.multiple
                    or param.show_default):  # an option with a default of its own (bench), not a setting
                continue
            match = re.search(r"\[([^\[\]]*)\]$", param.help or "")
            assert match, f"{where} {param.opts[0]}: its help says no default"
            bracket = match.group(1).removeprefix("env REDIS_URL; default ").removeprefix("env RELIQ_QUEUE; default ")
            default = FIELDS[param.name]
            expected = {cli._default(param.name), repr(default)} | ({f"0 = {bracket[4:]}"} if default == 0 else set())
            assert bracket in expected, (where, param.opts[0], bracket, default)
            shown[param.name] = bracket
    # the ones most often retyped, read back by value
    assert shown["concurrency"] == str(Settings().concurrency) and shown["lease"] == f"{Settings().lease:g}"
    assert shown["redis_url"] == Settings().redis_url and shown["queue"] == repr(Settings().queue)


def test_redis_url_and_queue_read_the_same_everywhere() -> None:
    helps: dict[str, set[str]] = {"redis_url": set(), "queue": set()}
    for _, command in _commands(cli.main):
        for param in command.params:
            if isinstance(param, click.Option) and param.name in helps:
                helps[param.name].add(param.help or "")
    assert len(helps["redis_url"]) == 1 and len(helps["queue"]) == 1, helps

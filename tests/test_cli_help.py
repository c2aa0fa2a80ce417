"""The command line explains itself: every option and argument of every command has help, `dnnpiracy detectors`
fits a terminal, and cli/ stays in small files of small functions."""

from __future__ import annotations

import ast
from pathlib import Path

import click
from click.testing import CliRunner

from dnnpiracy.cli import main

CLI_DIR = Path(__file__).resolve().parents[1] / "src" / "dnnpiracy" / "cli"
COMMANDS = {"bench", "bench-http", "benchmark", "data", "detectors", "fit-detector", "models", "owner-report",
            "reproduce", "run", "schemes", "serve", "study", "traffic-calibration", "traffic-fit", "verify",
            "watermark"}


def _commands(group: click.Group, path: tuple[str, ...] = ("dnnpiracy",)):
    """(path, command) for the group itself and every command under it, depth first."""
    yield path, group
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_every_option_and_argument_has_help():
    missing = []
    for path, cmd in _commands(main):
        for p in cmd.params:
            if isinstance(p, click.Option) and not (p.help or "").strip():
                missing.append(f"{' '.join(path)} {p.opts[0]}")
            # click arguments take no help=: the command's own help must name them (as its usage line does)
            if isinstance(p, click.Argument) and p.human_readable_name not in (cmd.help or ""):
                missing.append(f"{' '.join(path)} {p.human_readable_name} (not named in the command's help)")
    assert not missing, "options without help: " + ", ".join(missing)


def test_every_command_has_help_and_the_group_lists_the_same_commands():
    assert set(main.commands) == COMMANDS
    for path, cmd in _commands(main):
        assert (cmd.help or "").strip(), " ".join(path)
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0
    listed = {line.split()[0] for line in res.output.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == COMMANDS


def test_every_command_help_renders():
    r = CliRunner()
    for path, _cmd in _commands(main):
        res = r.invoke(main, [*path[1:], "--help"])
        assert res.exit_code == 0 and "Usage:" in res.output, " ".join(path)


def test_detectors_lists_few_names_in_short_lines():
    for args in (["detectors"], ["detectors", "--all"]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        lines = res.output.splitlines()
        assert all(len(line) <= 100 for line in lines), [line for line in lines if len(line) > 100]
    names = [line.split()[0] for line in CliRunner().invoke(main, ["detectors"]).output.split("\n\n")[0].splitlines()
             if line and not line.startswith(" ")]
    assert "default" in names and "paper" in names
    assert len(names) <= 10, names


def _function_lengths(tree: ast.AST):
    """(name, lines) of every function, decorators included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            yield node.name, node.end_lineno - first + 1


def test_cli_files_and_functions_stay_small():
    files = sorted(CLI_DIR.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "options.py"}
    for f in files:
        text = f.read_text()
        assert len(text.splitlines()) <= 400, f"{f.name}: {len(text.splitlines())} lines"
        for name, n in _function_lengths(ast.parse(text)):
            assert n <= 80, f"{f.name}:{name} is {n} lines"

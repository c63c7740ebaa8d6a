"""Every command's flags as JSON: option strings, nargs, metavar and the "(default: ...)" of the help
(tests/settings/cli_flags.json holds them as they were before the settings moved into twotower.settings)."""
import argparse
import json
import re
import sys

from twotower.cli import build_parser


def flags(parser):
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        match = re.search(r"\(default: (.*)\)$", action.help or "")
        out.append({"options": list(action.option_strings), "dest": action.dest, "nargs": action.nargs,
                    "metavar": action.metavar, "default": match.group(1) if match else None})
    return out

parser = build_parser()
sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
result = {"": flags(parser), **{name: flags(p) for name, p in sub.choices.items()}}
json.dump(result, sys.stdout, indent=1, sort_keys=True)

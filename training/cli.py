"""`saferoute <command>`: one entry point for every stage of the chain."""

import importlib
import sys

COMMANDS = {
    "package": ("training.package", "Assemble a SafeRoute model folder from a student, a router and a large-guard reference."),
    "quickstart": ("training.quickstart", "Run the whole chain with the bundled offline models."),
}


def usage():
    lines = ["usage: saferoute <command> [--config recipe.yaml] [flags]", "", "commands:"]
    lines += [f"  {name:<14}{help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`saferoute <command> --help` lists a command's flags."]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"saferoute: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())

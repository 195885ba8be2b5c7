"""The ``advcl`` command line."""

from __future__ import annotations

import argparse

from advcl_plugin import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="advcl", description="AdvCL robust pretraining: pretrain, finetune, evaluate."
    )
    parser.add_argument("--version", action="version", version=f"advcl-plugin {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    from advcl_plugin import selfcheck

    check = commands.add_parser("selfcheck", help="a few AdvCL steps on real CIFAR-10 images, printing the loss terms")
    selfcheck.add_arguments(check)
    check.set_defaults(handler=selfcheck.run)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()

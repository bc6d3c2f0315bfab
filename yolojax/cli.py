"""Shared command-line helpers."""

import argparse


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, ``PROG: error: MESSAGE``, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")

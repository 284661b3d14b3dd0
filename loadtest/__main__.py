"""Run the load-test command line: ``python -m loadtest generate --out DIR``."""

from loadtest.cli import main

main()

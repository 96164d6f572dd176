import sys

from relay.cli.main import main

if __name__ == "__main__":  # not when a spawned child process (the guide build) imports it
    sys.exit(main())

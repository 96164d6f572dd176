"""The command line: `relay serve`, `relay demo`, and the operator's commands."""

"""The `agentflow` command line (click). Each subcommand lives in a module of its own."""

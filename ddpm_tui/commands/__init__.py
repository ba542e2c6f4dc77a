"""One module per `ddpm-tui` subcommand; see ddpm_tui/cli.py for the registration contract."""

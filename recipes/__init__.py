"""The shipped recipes (YAML), installed as the package data ``adntn_cli.recipes``."""

"""The reusable library behind the CLI. No typer, no rich: progress goes through
callbacks and messages through the ``logging`` module. Heavy libraries (torch,
transformers, peft, lancedb) are imported inside the functions that need them."""

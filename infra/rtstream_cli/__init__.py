"""The `rtstream` command and the local system it runs."""

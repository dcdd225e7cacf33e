"""One module per verb, as pipx does."""

"""One module per ``torchferry`` sub-command."""

"""Sub-commands of the tncn command line, one module each (see tncn.cli)."""

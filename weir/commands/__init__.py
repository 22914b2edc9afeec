"""``weir`` sub-commands, one module per concern; ``weir.cli`` registers them."""

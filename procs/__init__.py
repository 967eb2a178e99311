"""One module per separate process of the instance."""

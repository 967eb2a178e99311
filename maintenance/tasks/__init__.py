"""One module per maintenance task; see maintenance.registry for the contract."""

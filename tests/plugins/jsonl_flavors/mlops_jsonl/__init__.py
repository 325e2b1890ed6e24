"""JSON Lines flavors for mlops (a test plugin)."""

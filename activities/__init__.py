"""Side effects grouped by domain. SQL lives here, next to its domain."""
